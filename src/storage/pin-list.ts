/**
 * Pins kept on disk beside the content they protect, so they survive restarts and travel with the directory.
 * The janitor never evicts anything reachable from a pinned digest. Two files hold them:
 *
 * - `<storage.path>/pins.json`: pins recorded by `mirror import --pin`. A pin is keyed by the reference it was
 *   imported as and holds the manifest digest it had then: pinning content, not a name. Re-importing the same
 *   reference moves its pin to the new digest, so a weekly transfer of `app:latest` keeps one version pinned
 *   rather than every version ever carried in. Another reference (or a config pin) keeps older content if it
 *   still names it. An operator may unpin by editing the file.
 * - `<storage.path>/config-pins.json`: the digests the configured `storage.pinned` references last resolved
 *   to (see Janitor), so that losing a tag pointer (embedded store bound, Redis restart or key expiry) does not
 *   unpin its content.
 *
 * Each file is small JSON, replaced crash-safely (durable-replace.ts: after a power cut it holds the old list or
 * the new one, whole) and re-read at every eviction sweep. A file that is absent holds no pins; one that cannot
 * be read or does not parse throws: nobody can tell what it pinned, and reading it as "no pins" would let the
 * janitor evict exactly what it protects.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { replaceFileDurably } from "./durable-replace.ts";
import { errorMessage } from "../caught-errors.ts";

export const PIN_FILE = "pins.json";
export const CONFIG_PIN_FILE = "config-pins.json";

export interface PinEntry {
  /** `<upstream>/<repository>:<tag>` or `<upstream>/<repository>@<digest>`. */
  reference: string;
  digest: string;
  pinnedAt: string;
}

interface PinFile {
  version: 1;
  pins: PinEntry[];
}

/** A pin file exists but cannot be read or parsed: what it pins is unknown. */
export class PinFileDamagedError extends Error {
  constructor(path: string, reason: string) {
    super(
      `pin file ${path} is damaged (${reason}): what it pins is unknown, so nothing is evicted until it is repaired`,
    );
  }
}

export class PinList {
  readonly path: string;
  /** Writes from this process, one at a time (read-modify-write); other processes are kept out by the data-dir lock. */
  private writing: Promise<unknown> = Promise.resolve();

  constructor(dir: string, file = PIN_FILE) {
    this.path = join(dir, file);
  }

  /** The pins now in force: none when the file is absent. Throws PinFileDamagedError for any other failure. */
  async list(): Promise<PinEntry[]> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw new PinFileDamagedError(this.path, errorMessage(err));
    }
    try {
      return parsePinFile(text);
    } catch (err) {
      throw new PinFileDamagedError(this.path, errorMessage(err));
    }
  }

  /** Pins (or re-pins) references; returns what each pointed at before (undefined: was not pinned). */
  async set(entries: ReadonlyArray<{ reference: string; digest: string }>): Promise<Map<string, PinEntry | undefined>> {
    return this.update((pins) => {
      const before = new Map<string, PinEntry | undefined>();
      const now = new Date().toISOString();
      for (const { reference, digest } of entries) {
        before.set(reference, pins.get(reference));
        pins.set(reference, { reference, digest, pinnedAt: now });
      }
      return before;
    });
  }

  /** Restores references to what `set` returned (deletes those that were not pinned). */
  async restore(previous: ReadonlyMap<string, PinEntry | undefined>): Promise<void> {
    await this.update((pins) => {
      for (const [reference, entry] of previous) {
        if (entry === undefined) pins.delete(reference);
        else pins.set(reference, entry);
      }
    });
  }

  /**
   * Records `resolved` (reference → digest; a reference whose digest changed is re-pinned), drops the entries
   * `keep` rejects, and leaves every other entry as it is. Writes only when something changed; returns the
   * pins now in force.
   */
  async reconcile(resolved: ReadonlyMap<string, string>, keep: (reference: string) => boolean): Promise<PinEntry[]> {
    return this.update((pins) => {
      const now = new Date().toISOString();
      for (const reference of [...pins.keys()]) if (!keep(reference)) pins.delete(reference);
      for (const [reference, digest] of resolved) {
        if (pins.get(reference)?.digest !== digest) pins.set(reference, { reference, digest, pinnedAt: now });
      }
      return [...pins.values()];
    });
  }

  private update<T>(change: (pins: Map<string, PinEntry>) => T): Promise<T> {
    const run = this.writing.then(async () => {
      // A damaged file throws here, so it is never overwritten: the operator's edit (or the last good list,
      // for whoever repairs it) would be lost.
      const current = await this.list();
      const pins = new Map(current.map((p) => [p.reference, p]));
      const result = change(pins);
      const after = [...pins.values()].sort((a, b) => a.reference.localeCompare(b.reference));
      const read = new Set(current);
      const unchanged = after.length === current.length && after.every((p) => read.has(p)); // the same entries, untouched
      if (!unchanged)
        await replaceFileDurably(
          this.path,
          `${JSON.stringify({ version: 1, pins: after } satisfies PinFile, null, 2)}\n`,
        );
      return result;
    });
    this.writing = run.catch(() => undefined);
    return run;
  }
}

function parsePinFile(text: string): PinEntry[] {
  const doc = JSON.parse(text) as Partial<PinFile> | null;
  if (doc?.version !== 1 || !Array.isArray(doc.pins)) throw new Error('expected {"version": 1, "pins": [...]}');
  for (const p of doc.pins as unknown[]) {
    const e = p as Partial<PinEntry> | null;
    if (typeof e?.reference !== "string" || typeof e.digest !== "string" || !/^sha256:[a-f0-9]{64}$/.test(e.digest)) {
      throw new Error(`invalid pin ${JSON.stringify(p)}: needs a reference and a sha256 digest`);
    }
  }
  return doc.pins;
}
