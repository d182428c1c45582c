/**
 * One process at a time per cache directory. The mirror, and the CLI commands that work on a stopped mirror's
 * data directory (import, inventory, export), take `<storage.path>/mirror.lock` before touching anything: two
 * processes sharing one directory would delete each other's temp files at start (BlobStore.init), and append
 * to the same metadata journal from two in-memory states.
 *
 * The lock file is created with O_EXCL, so exactly one creator wins, and holds who owns it (PID, host, the
 * process's start time, what it is doing). A lock whose owner is gone is stale (a SIGKILLed mirror cannot
 * clean up): it is broken when its PID is not alive on this host, or is alive but started at another time
 * than recorded (the PID was reused after a reboot or wrap-around). A lock written on another host (a data
 * directory on network storage) cannot be checked and is always respected.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { link, mkdir, open, readFile, rename, rm, stat } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";

export const LOCK_FILE = "mirror.lock";

interface LockOwner {
  pid: number;
  hostname: string;
  /** Field 22 of /proc/<pid>/stat (clock ticks since boot): tells a reused PID from the owner. */
  startTime: string | undefined;
  purpose: string;
  since: string;
  /** Unique per acquisition, so release() never deletes a lock someone else took after ours was broken. */
  token: string;
}

export class DataDirLockedError extends Error {
  readonly path: string;
  readonly owner: Partial<LockOwner>;
  constructor(path: string, owner: Partial<LockOwner>) {
    const who =
      owner.pid !== undefined
        ? `process ${owner.pid}${owner.hostname && owner.hostname !== hostname() ? ` on ${owner.hostname}` : ""} (${owner.purpose ?? "unknown"}, since ${owner.since ?? "?"})`
        : "another process";
    super(
      `the data directory is in use by ${who}: ${path} exists. Stop that process first; if it is not running, delete the lock file.`,
    );
    this.name = "DataDirLockedError";
    this.path = path;
    this.owner = owner;
  }
}

/** A lock file without an owner this old was left by a process that died between creating and writing it. */
const UNWRITTEN_LOCK_STALE_MS = 10_000;

export class DataDirLock {
  readonly path: string;
  private readonly token: string;
  private released = false;

  private constructor(path: string, token: string) {
    this.path = path;
    this.token = token;
  }

  /** Takes the lock of `dir` (created if missing) or throws DataDirLockedError naming the owner. */
  static async acquire(dir: string, purpose: string): Promise<DataDirLock> {
    await mkdir(dir, { recursive: true });
    const path = join(dir, LOCK_FILE);
    const owner: LockOwner = {
      pid: process.pid,
      hostname: hostname(),
      startTime: processStartTime(process.pid),
      purpose,
      since: new Date().toISOString(),
      token: randomBytes(12).toString("hex"),
    };
    // Two rounds: a stale lock is broken once, then the O_EXCL create decides between any racing processes.
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const handle = await open(path, "wx", 0o644);
        try {
          await handle.writeFile(`${JSON.stringify(owner)}\n`);
          await handle.sync();
        } finally {
          await handle.close();
        }
        return new DataDirLock(path, owner.token);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
      const held = await readOwner(path);
      if (held === "gone") continue;
      if (!(await isStale(path, held))) throw new DataDirLockedError(path, held ?? {});
      await breakStale(path, held);
    }
    const last = await readOwner(path);
    throw new DataDirLockedError(path, last === "gone" ? {} : (last ?? {}));
  }

  /** Deletes the lock file if it is still ours. Idempotent. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    const held = await readOwner(this.path);
    if (held !== "gone" && held?.token === this.token) await rm(this.path, { force: true });
  }
}

/** The owner recorded in the lock; undefined when unreadable (being written, or garbage); "gone" if absent. */
async function readOwner(path: string): Promise<LockOwner | undefined | "gone"> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return "gone";
    throw err;
  }
  try {
    const parsed = JSON.parse(text) as Partial<LockOwner>;
    return typeof parsed.pid === "number" && typeof parsed.token === "string" ? (parsed as LockOwner) : undefined;
  } catch {
    return undefined;
  }
}

async function isStale(path: string, owner: LockOwner | undefined): Promise<boolean> {
  if (owner === undefined) {
    // Being written by its creator right now, or left half-written by a crash: only age tells them apart.
    const s = await stat(path).catch(() => undefined);
    return s !== undefined && Date.now() - s.mtimeMs > UNWRITTEN_LOCK_STALE_MS;
  }
  if (owner.hostname !== hostname()) return false;
  if (!pidAlive(owner.pid)) return true;
  const now = processStartTime(owner.pid);
  return owner.startTime !== undefined && now !== undefined && now !== owner.startTime;
}

/**
 * Moves the stale lock aside under a unique name (atomic), then checks that what was moved is the stale lock
 * read before. If another process replaced it in between (it broke the same stale lock and took the directory),
 * its lock is put back with link(), which fails rather than overwrite, and ours is refused.
 */
async function breakStale(path: string, stale: LockOwner | undefined): Promise<void> {
  const aside = `${path}.stale-${process.pid}-${randomBytes(4).toString("hex")}`;
  try {
    await rename(path, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return; // someone else broke it: race for the create
    throw err;
  }
  const moved = await readOwner(aside);
  const same = moved !== "gone" && (moved === undefined ? stale === undefined : moved.token === stale?.token);
  if (!same) {
    await link(aside, path).catch(() => undefined);
    await rm(aside, { force: true });
    throw new DataDirLockedError(path, moved === "gone" ? {} : (moved ?? {}));
  }
  await rm(aside, { force: true });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists, owned by another user.
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Linux only (undefined elsewhere, and the PID check alone decides). Read after the last ")" of comm. */
function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields after comm start at field 3 (state); starttime is field 22.
    return fields[22 - 3];
  } catch {
    return undefined;
  }
}
