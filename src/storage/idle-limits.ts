/**
 * The idle limits set by rules (`rules[].maxIdle`), per digest, kept in `<storage.path>/idle-limits.json` so
 * that they survive a restart: otherwise content a rule keeps longer than `storage.maxIdle` would fall back to
 * the shorter limit after every restart and be expired early. Only content served under a rule with `maxIdle`
 * is listed; everything else has `storage.maxIdle`. Content served under several such rules keeps the most
 * generous limit (0, never, beats any duration): it is still in use through the repository that asks most.
 *
 * The file is rewritten (crash-safely) at most once per janitor check, and only when something changed. A file
 * that cannot be read or is damaged counts as empty, with a warning: the limits are learnt again as content is
 * pulled, and meanwhile `storage.maxIdle` applies, which is what the mirror did before the rule existed.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { replaceFileDurably } from "./durable-replace.ts";
import { errorMessage } from "../caught-errors.ts";

export const IDLE_LIMIT_FILE = "idle-limits.json";

export class IdleLimits {
  readonly path: string;
  private readonly tempDir: string;
  private readonly limits = new Map<string, number>();
  private dirty = false;
  private loaded = false;

  constructor(root: string, tempDir: string) {
    this.path = join(root, IDLE_LIMIT_FILE);
    this.tempDir = tempDir;
  }

  /** Reads the file once (later calls do nothing); what was noted before is kept, merged generously. */
  async load(): Promise<{ damaged: string } | undefined> {
    if (this.loaded) return undefined;
    this.loaded = true;
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      return { damaged: errorMessage(err) };
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      return { damaged: errorMessage(err) };
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) return { damaged: "not a JSON object" };
    for (const [digest, ms] of Object.entries(value as Record<string, unknown>)) {
      if (typeof ms !== "number" || !Number.isSafeInteger(ms) || ms < 0 || !/^sha256:[0-9a-f]{64}$/.test(digest))
        continue;
      const known = this.limits.get(digest);
      if (known === undefined) this.limits.set(digest, ms);
      else if (!generous(known, ms)) this.limits.set(digest, ms);
    }
    return undefined;
  }

  /** Content was served under a rule with this limit (ms; 0: never). */
  note(digest: string, ms: number): void {
    const known = this.limits.get(digest);
    if (known !== undefined && generous(known, ms)) return;
    this.limits.set(digest, ms);
    this.dirty = true;
  }

  /** The limit a rule set for `digest`, or undefined (then `storage.maxIdle` applies). */
  get(digest: string): number | undefined {
    return this.limits.get(digest);
  }

  /** The shortest limit a rule set for any digest (0, never, is no limit); undefined when there is none. */
  shortest(): number | undefined {
    let shortest: number | undefined;
    for (const ms of this.limits.values()) if (ms > 0 && (shortest === undefined || ms < shortest)) shortest = ms;
    return shortest;
  }

  /** The content left the store. */
  forget(digest: string): void {
    if (this.limits.delete(digest)) this.dirty = true;
  }

  /** Writes the file if anything changed since it was last written. */
  async save(): Promise<void> {
    if (!this.dirty) return;
    this.dirty = false;
    try {
      await replaceFileDurably(this.path, JSON.stringify(Object.fromEntries(this.limits)), { tempDir: this.tempDir });
    } catch (err) {
      this.dirty = true;
      throw err;
    }
  }
}

/** Whether limit `a` keeps content at least as long as `b` does (0 is never expired). */
function generous(a: number, b: number): boolean {
  return a === 0 || (b !== 0 && a >= b);
}
