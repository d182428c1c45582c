/**
 * Pins recorded at run time (by `mirror import --pin`), kept in `<storage.path>/pins.json` beside the content
 * they protect, so they survive restarts and travel with the directory. The janitor never evicts anything
 * reachable from a pinned digest, exactly like the configured `storage.pinned` references.
 *
 * A pin is keyed by the reference it was imported as and holds the manifest digest it had then: pinning
 * content, not a name. Re-importing the same reference moves its pin to the new digest, so a weekly transfer
 * of `app:latest` keeps one version pinned rather than every version ever carried in. Another reference (or a
 * config pin) keeps older content if it still names it.
 *
 * The file is small JSON, replaced atomically (temp + rename) and re-read at every eviction sweep: an operator
 * may unpin by editing it. A file that does not parse keeps the last good list in force (and says so).
 */
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";

export const PIN_FILE = "pins.json";

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

export class PinList {
  readonly path: string;
  private lastGood: PinEntry[] = [];
  /** Writes from this process, one at a time (read-modify-write); other processes are kept out by the data-dir lock. */
  private writing: Promise<unknown> = Promise.resolve();

  constructor(dir: string) {
    this.path = join(dir, PIN_FILE);
  }

  /** The pins now in force. Throws only if the file is unreadable for a reason other than absence. */
  async list(onInvalid?: (err: Error) => void): Promise<PinEntry[]> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return (this.lastGood = []);
      throw err;
    }
    try {
      this.lastGood = parsePinFile(text);
    } catch (err) {
      onInvalid?.(new Error(`${this.path}: ${(err as Error).message}; keeping the previous pins in force`));
    }
    return this.lastGood;
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

  private update<T>(change: (pins: Map<string, PinEntry>) => T): Promise<T> {
    const run = this.writing.then(async () => {
      const current = await this.list((err) => {
        throw err; // never overwrite a file we could not read: the operator's edit would be lost
      });
      const pins = new Map(current.map((p) => [p.reference, p]));
      const result = change(pins);
      const file: PinFile = { version: 1, pins: [...pins.values()].sort((a, b) => a.reference.localeCompare(b.reference)) };
      await mkdir(join(this.path, ".."), { recursive: true });
      const tmp = `${this.path}.${process.pid}.tmp`;
      await writeFile(tmp, `${JSON.stringify(file, null, 2)}\n`);
      await rename(tmp, this.path);
      this.lastGood = file.pins;
      return result;
    });
    this.writing = run.catch(() => undefined);
    return run;
  }
}

function parsePinFile(text: string): PinEntry[] {
  const doc = JSON.parse(text) as Partial<PinFile>;
  if (doc.version !== 1 || !Array.isArray(doc.pins)) throw new Error('expected {"version": 1, "pins": [...]}');
  for (const p of doc.pins as unknown[]) {
    const e = p as Partial<PinEntry> | null;
    if (typeof e?.reference !== "string" || typeof e.digest !== "string" || !/^sha256:[a-f0-9]{64}$/.test(e.digest)) {
      throw new Error(`invalid pin ${JSON.stringify(p)}: needs a reference and a sha256 digest`);
    }
  }
  return doc.pins;
}
