/**
 * The on-disk half of the embedded metadata store: an append-only JSONL journal of tag pointers, links and
 * provenance, so a single node that restarts (even after `kill -9`) still knows which tags it can serve, which
 * repository references which digest and which upstream served it, while the upstream is unreachable. Missing-records and locks are deliberately not
 * journalled: they are short-lived and wrong to resurrect.
 *
 * Each record is one line, handed to the kernel whole in one write (batched with its neighbours), so a crash can
 * only tear the last line; a torn or unreadable line is skipped on load, and the next write starts on a fresh line.
 * A mutation resolves once its line is in the kernel (it survives the process dying); fsync runs in the background
 * every `syncIntervalMs` and on close, which bounds what a power cut can lose.
 *
 * The journal grows with every change, so once it holds `compactRatio` times more entries than the store keeps
 * alive it is rewritten from a snapshot of the live state: temp file in the same directory, fsync, rename, fsync
 * the directory. Writes go on meanwhile; lines written after the snapshot are copied into the new file before
 * the swap. Replaying them on top of the snapshot is harmless because every record sets state ("this tag points
 * there", "this repository is gone") rather than changing it relative to what was there.
 *
 * Tag records carry their pointer's checkedAt, and the store applies them under the pointer ordering rule
 * (`supersedes` in metadata-store.ts), at replay as live: a line older than the pointer already loaded (written
 * after the store had forgotten the newer one, say) cannot roll the tag back at the next start.
 *
 * One process per directory: two writers would lose each other's lines at compaction.
 */
import { randomBytes } from "node:crypto";
import { mkdir, open, readdir, rename, rm, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { syncDirectory } from "../storage/durable-replace.ts";
import type { TagPointer } from "./metadata-store.ts";
import { errorMessage } from "../caught-errors.ts";

export type JournalRecord =
  | { op: "tag"; upstream: string; repo: string; tag: string; pointer: TagPointer }
  | { op: "untag"; upstream: string; repo: string; tag: string }
  | { op: "link"; upstream: string; repo: string; digests: readonly string[] }
  | { op: "purge"; upstream: string; repo: string }
  /** The upstream served these digests (MetadataStore.addProvenance); per digest, no repository. */
  | { op: "provenance"; upstream: string; digests: readonly string[] };

export interface TagJournalOptions {
  dir: string;
  /** Called for every readable record, oldest first, while the journal is opened. */
  apply: (record: JournalRecord) => void;
  /** The live state as records, for compaction. Must be synchronous: it is the instant the new file starts from. */
  snapshot: () => Iterable<JournalRecord>;
  /** How many entries (tags + links) the store holds now. */
  liveEntries: () => number;
  /** Background fsync interval; default 1 s. */
  syncIntervalMs?: number;
  /** Compact when the journal holds this many times the live entries; default 4. */
  compactRatio?: number;
  /** ...but never below this many entries, so a small store is not rewritten all the time; default 10 000. */
  compactMinEntries?: number;
  /** Failures with no caller to report to: background fsync and compaction. */
  onError: (err: Error) => void;
}

/** What open() found on disk. */
export interface JournalLoadReport {
  records: number;
  /** Unreadable lines (a torn last line after a crash, or damage), skipped. */
  skipped: number;
  /** Temp files of a compaction that a crash interrupted, deleted. */
  removedTempFiles: number;
}

export const JOURNAL_FILE = "metadata.jsonl";
const TEMP_RE = /^metadata\.jsonl\..+\.tmp$/;
/** Compaction writes the snapshot in pieces of about this size, so a big store never builds one giant string. */
const WRITE_CHUNK_CHARS = 1 << 20;

export class TagJournal {
  readonly path: string;
  readonly loaded: JournalLoadReport;
  private readonly dir: string;
  private readonly snapshot: () => Iterable<JournalRecord>;
  private readonly liveEntries: () => number;
  private readonly compactRatio: number;
  private readonly compactMinEntries: number;
  private readonly onError: (err: Error) => void;
  private readonly timer: NodeJS.Timeout;
  private handle: FileHandle;
  /** Entries in the file, and lines (plus their entries) waiting for the next batched write. */
  private entries: number;
  private pending: string[] = [];
  private pendingEntries = 0;
  private waiters: Array<{ resolve: () => void; reject: (err: unknown) => void }> = [];
  private flushQueued = false;
  /** Every write and the compaction swap run one at a time on this chain, in call order. */
  private chain: Promise<void> = Promise.resolve();
  /** The last write may have stopped mid-line (crash or failed write): the next one starts with a newline. */
  private torn: boolean;
  private dirty = false;
  private syncing: Promise<void> | undefined;
  /** While a compaction runs: what was written to the old file since its snapshot. */
  private capture: { lines: string[]; entries: number } | undefined;
  private compaction: Promise<void> | undefined;
  /** After a failed compaction, do not retry before the journal has grown this far. */
  private compactDeferredUntil = 0;
  private closing: Promise<void> | undefined;

  private constructor(
    opts: TagJournalOptions,
    path: string,
    handle: FileHandle,
    loaded: JournalLoadReport & { entries: number; torn: boolean },
  ) {
    this.dir = opts.dir;
    this.path = path;
    this.handle = handle;
    this.snapshot = opts.snapshot;
    this.liveEntries = opts.liveEntries;
    this.compactRatio = opts.compactRatio ?? 4;
    this.compactMinEntries = opts.compactMinEntries ?? 10_000;
    this.onError = opts.onError;
    this.entries = loaded.entries;
    this.torn = loaded.torn;
    this.loaded = { records: loaded.records, skipped: loaded.skipped, removedTempFiles: loaded.removedTempFiles };
    this.timer = setInterval(() => void this.sync(), opts.syncIntervalMs ?? 1_000);
    this.timer.unref();
  }

  /** Creates the directory if needed, removes interrupted compactions' temp files and replays the journal. */
  static async open(opts: TagJournalOptions): Promise<TagJournal> {
    await mkdir(opts.dir, { recursive: true });
    let removedTempFiles = 0;
    for (const name of await readdir(opts.dir)) {
      if (!TEMP_RE.test(name)) continue;
      await rm(join(opts.dir, name), { force: true });
      removedTempFiles++;
    }
    const path = join(opts.dir, JOURNAL_FILE);
    const replayed = await replay(path, opts.apply);
    const handle = await open(path, "a");
    const journal = new TagJournal(opts, path, handle, { ...replayed, removedTempFiles });
    // Garbage is rewritten away now rather than skipped again at every start.
    if (replayed.skipped > 0) journal.startCompaction();
    else journal.maybeCompact();
    return journal;
  }

  /** Resolves once the record's line is written to the file (not yet fsynced); rejects if the write failed. */
  append(record: JournalRecord): Promise<void> {
    if (this.closing) return Promise.reject(new Error(`metadata journal ${this.path} is closed`));
    const done = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    this.pending.push(encodeRecord(record));
    this.pendingEntries += weight(record);
    if (!this.flushQueued) {
      this.flushQueued = true;
      void this.serialized(() => this.flush());
    }
    this.maybeCompact();
    return done;
  }

  /** Waits for pending writes and any running compaction, fsyncs and closes the file. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.timer);
      await this.compaction;
      await this.serialized(async () => {});
      await this.syncing;
      try {
        await this.handle.datasync();
      } finally {
        await this.handle.close();
      }
    })();
    return this.closing;
  }

  /** Runs `op` after every operation queued before it; the chain itself never rejects. */
  private serialized(op: () => Promise<void>): Promise<void> {
    const run = this.chain.then(op);
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async flush(): Promise<void> {
    this.flushQueued = false;
    const { pending: lines, waiters, pendingEntries: entries } = this;
    this.pending = [];
    this.waiters = [];
    this.pendingEntries = 0;
    if (lines.length === 0) return;
    const text = lines.join("");
    try {
      await writeAll(this.handle, this.torn ? `\n${text}` : text);
      this.torn = false;
      this.dirty = true;
      this.entries += entries;
      if (this.capture) {
        this.capture.lines.push(text);
        this.capture.entries += entries;
      }
      for (const w of waiters) w.resolve();
    } catch (err) {
      // A failed write may have left part of a line behind.
      this.torn = true;
      for (const w of waiters) w.reject(err);
    }
  }

  private sync(): Promise<void> {
    if (this.syncing) return this.syncing;
    if (!this.dirty) return Promise.resolve();
    this.dirty = false;
    this.syncing = this.handle
      .datasync()
      .catch((err: unknown) => {
        this.dirty = true;
        this.onError(asError(err, `fsync of ${this.path} failed`));
      })
      .finally(() => {
        this.syncing = undefined;
      });
    return this.syncing;
  }

  private maybeCompact(): void {
    if (this.compaction || this.closing) return;
    const total = this.entries + this.pendingEntries;
    const threshold = Math.max(
      this.compactRatio * Math.max(this.liveEntries(), this.compactMinEntries),
      this.compactDeferredUntil,
    );
    if (total > threshold) this.startCompaction();
  }

  private startCompaction(): void {
    this.compaction = this.compact()
      .catch((err: unknown) => {
        this.compactDeferredUntil = 2 * (this.entries + this.pendingEntries);
        this.onError(asError(err, `compaction of ${this.path} failed`));
      })
      .finally(() => {
        this.compaction = undefined;
      });
  }

  private async compact(): Promise<void> {
    // The snapshot reflects every record appended so far, written or still pending.
    const lines: string[] = [];
    let snapshotEntries = 0;
    for (const record of this.snapshot()) {
      lines.push(encodeRecord(record));
      snapshotEntries += weight(record);
    }
    this.capture = { lines: [], entries: 0 };
    const temp = join(this.dir, `${JOURNAL_FILE}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
    // Opened for appending: after the rename this same descriptor is the journal's, with nothing to reopen.
    let out: FileHandle | undefined = await open(temp, "ax");
    try {
      for (let i = 0; i < lines.length;) {
        let chunk = "";
        while (i < lines.length && chunk.length < WRITE_CHUNK_CHARS) chunk += lines[i++];
        await writeAll(out, chunk);
      }
      await this.serialized(async () => {
        const captured = this.capture ?? { lines: [], entries: 0 };
        this.capture = undefined;
        const next = out!;
        await writeAll(next, captured.lines.join(""));
        await next.datasync();
        await rename(temp, this.path);
        // From here the new file is the journal whatever else fails: writes must go to it.
        const old = this.handle;
        this.handle = next;
        out = undefined;
        this.entries = snapshotEntries + captured.entries;
        this.torn = false;
        this.dirty = false;
        // A background fsync may still be using the old descriptor.
        await this.syncing;
        await old.close().catch(() => undefined);
        await syncDirectory(this.dir).catch((err: unknown) =>
          this.onError(asError(err, `fsync of ${this.dir} failed`)),
        );
      });
    } finally {
      this.capture = undefined;
      if (out) {
        await out.close().catch(() => undefined);
        await rm(temp, { force: true });
      }
    }
  }
}

/** One line of the journal. Arrays rather than objects: the journal is mostly repeated records, so size counts. */
export function encodeRecord(record: JournalRecord): string {
  switch (record.op) {
    case "tag": {
      const { digest, mediaType, checkedAt } = record.pointer;
      return `${JSON.stringify(["tag", record.upstream, record.repo, record.tag, digest, mediaType, checkedAt])}\n`;
    }
    case "untag":
      return `${JSON.stringify(["untag", record.upstream, record.repo, record.tag])}\n`;
    case "link":
      return `${JSON.stringify(["link", record.upstream, record.repo, ...record.digests])}\n`;
    case "purge":
      return `${JSON.stringify(["purge", record.upstream, record.repo])}\n`;
    case "provenance":
      return `${JSON.stringify(["provenance", record.upstream, ...record.digests])}\n`;
  }
}

/** The record a line holds, or undefined for anything unreadable (torn, damaged, or from a newer format). */
export function decodeRecord(line: string): JournalRecord | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (!Array.isArray(value)) return undefined;
  if (value[0] === "provenance") {
    const [, upstream, ...digests] = value as unknown[];
    if (typeof upstream !== "string" || digests.length === 0 || !digests.every((d) => typeof d === "string"))
      return undefined;
    return { op: "provenance", upstream, digests };
  }
  const [op, upstream, repo, ...rest] = value as unknown[];
  if (typeof upstream !== "string" || typeof repo !== "string") return undefined;
  switch (op) {
    case "tag": {
      const [tag, digest, mediaType, checkedAt] = rest;
      if (rest.length !== 4 || typeof tag !== "string" || typeof digest !== "string" || typeof mediaType !== "string")
        return undefined;
      if (typeof checkedAt !== "number" || !Number.isFinite(checkedAt)) return undefined;
      return { op, upstream, repo, tag, pointer: { digest, mediaType, checkedAt } };
    }
    case "untag": {
      const [tag] = rest;
      return rest.length === 1 && typeof tag === "string" ? { op, upstream, repo, tag } : undefined;
    }
    case "link":
      return rest.length > 0 && rest.every((d) => typeof d === "string")
        ? { op, upstream, repo, digests: rest }
        : undefined;
    case "purge":
      return rest.length === 0 ? { op, upstream, repo } : undefined;
    default:
      return undefined;
  }
}

/** Entries a record stands for, the unit compaction compares with the store's live entries. */
function weight(record: JournalRecord): number {
  return record.op === "link" || record.op === "provenance" ? record.digests.length : 1;
}

async function replay(
  path: string,
  apply: (record: JournalRecord) => void,
): Promise<{ records: number; skipped: number; entries: number; torn: boolean }> {
  const result = { records: 0, skipped: 0, entries: 0, torn: false };
  let handle: FileHandle;
  try {
    handle = await open(path, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return result;
    throw err;
  }
  try {
    const { size } = await handle.stat();
    if (size === 0) return result;
    const last = Buffer.alloc(1);
    await handle.read(last, 0, 1, size - 1);
    result.torn = last[0] !== 0x0a;
    const lines = createInterface({
      input: handle.createReadStream({ autoClose: false, encoding: "utf8" }),
      crlfDelay: Infinity,
    });
    for await (const line of lines) {
      // Empty lines are the fresh starts written after a torn line: not damage.
      if (line === "") continue;
      const record = decodeRecord(line);
      if (record === undefined) {
        result.skipped++;
        continue;
      }
      apply(record);
      result.records++;
      result.entries += weight(record);
    }
    return result;
  } finally {
    await handle.close();
  }
}

/** FileHandle.write may write less than asked (it does not loop); this does, in as few writes as the kernel allows. */
async function writeAll(handle: FileHandle, text: string): Promise<void> {
  if (text === "") return;
  const bytes = Buffer.from(text, "utf8");
  for (let offset = 0; offset < bytes.length;) {
    const { bytesWritten } = await handle.write(bytes, offset, bytes.length - offset);
    offset += bytesWritten;
  }
}

function asError(err: unknown, context: string): Error {
  return new Error(`${context}: ${errorMessage(err)}`, { cause: err });
}
