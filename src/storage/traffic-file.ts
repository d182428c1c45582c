/**
 * `<storage.path>/traffic.json`: the traffic totals (observability/traffic-totals.ts) kept across restarts. A
 * few hundred bytes, replaced crash-safely (durable-replace.ts: after a power cut it holds the previous totals
 * or the new ones, whole), its temp files in the store's `tmp/`, which is emptied at start.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { parseStoredTraffic, serializeStoredTraffic, type StoredTraffic } from "../observability/traffic-totals.ts";
import { replaceFileDurably } from "./durable-replace.ts";
import { errorMessage } from "../caught-errors.ts";

export const TRAFFIC_FILE = "traffic.json";

export class TrafficFile {
  readonly path: string;
  private readonly tempDir: string;

  constructor(dir: string) {
    this.path = join(dir, TRAFFIC_FILE);
    this.tempDir = join(dir, "tmp");
  }

  /**
   * The stored totals: `absent` when there is no file (a new data directory), `damaged` when it cannot be read
   * as one (counting starts anew, and the next save replaces it).
   */
  async read(): Promise<{ traffic: StoredTraffic } | { absent: true } | { damaged: string }> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { absent: true };
      return { damaged: errorMessage(err) };
    }
    const traffic = parseStoredTraffic(text);
    return traffic ? { traffic } : { damaged: "not a traffic totals file (version 1)" };
  }

  async write(traffic: StoredTraffic): Promise<void> {
    await replaceFileDurably(this.path, serializeStoredTraffic(traffic), { tempDir: this.tempDir });
  }
}
