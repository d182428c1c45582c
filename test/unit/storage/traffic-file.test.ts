import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { StoredTraffic } from "../../../src/observability/traffic-totals.ts";
import { TRAFFIC_FILE, TrafficFile } from "../../../src/storage/traffic-file.ts";

const traffic: StoredTraffic = {
  since: "2026-11-01T09:00:00.000Z",
  requests: { hit: 7, coalesced: 1, revalidated: 2, stale: 0, miss: 3 },
  bytes: { sentFromCache: 70_000, sentFromUpstream: 30_000, fetchedFromUpstream: 31_000 },
};

describe("TrafficFile", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "traffic-"));
    await mkdir(join(dir, "tmp"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("is absent in a new data directory, and holds what was written across instances (a restart)", async () => {
    expect(await new TrafficFile(dir).read()).toEqual({ absent: true });
    await new TrafficFile(dir).write(traffic);
    expect(await new TrafficFile(dir).read()).toEqual({ traffic });
    const text = JSON.parse(await readFile(join(dir, TRAFFIC_FILE), "utf8")) as { version: number };
    expect(text.version).toBe(1);
    // Written through a temp file in tmp/, renamed into place: nothing left behind.
    expect(await readdir(join(dir, "tmp"))).toEqual([]);
    expect((await readdir(dir)).sort()).toEqual(["tmp", TRAFFIC_FILE]);
  });

  it("says a file it cannot read as totals is damaged, and a write replaces it", async () => {
    await writeFile(join(dir, TRAFFIC_FILE), '{"version": 1, "since": "2026-11-01T09:00:00.000Z", "requ');
    const found = await new TrafficFile(dir).read();
    expect("damaged" in found && found.damaged).toMatch(/not a traffic totals file/);
    await new TrafficFile(dir).write(traffic);
    expect(await new TrafficFile(dir).read()).toEqual({ traffic });
  });
});
