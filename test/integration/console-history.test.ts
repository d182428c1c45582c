/**
 * The console's chart history across a restart: a mirror (console on, sampling every second) serves a pull,
 * stops, and a new mirror over the same data directory still answers the samples taken before, whose totals
 * are the first mirror's (the same numbers /admin/v1/totals gave), and goes on from there.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { Teardown, waitFor } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { fetchRaw } from "./client.ts";

const TOKEN = "console-admin-token-0123456789";
const teardown = new Teardown();
afterAll(() => teardown.run());
let upstream: Registry;
let dataDir: string;
const image = buildImage({ format: "oci", layers: [randomLayer(50_000)] });

interface Sample {
  t: number;
  sentFromUpstream: number;
  sentFromCache: number;
}

beforeAll(async () => {
  upstream = teardown.track(await startRegistry());
  await pushImage(upstream.url, "team/app", "1", image);
  dataDir = await mkdtemp(join(tmpdir(), "console-history-"));
  teardown.add("data dir", () => rm(dataDir, { recursive: true, force: true }));
});

const start = async () =>
  startTestMirror({
    upstreams: { "reg.test": { url: upstream.url, default: true } },
    dataDir,
    extra: { admin: { token: TOKEN }, console: { enabled: true, historyInterval: "1s" } },
  });

async function signIn(m: TestMirror): Promise<string> {
  const res = await fetchRaw(`${m.url}/console/login`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: Buffer.from(new URLSearchParams({ token: TOKEN }).toString()),
  });
  expect(res.status).toBe(303);
  return String(res.headers["set-cookie"]).split(";")[0]!;
}

async function history(m: TestMirror, cookie: string): Promise<Sample[]> {
  const res = await fetchRaw(`${m.url}/console/history.json?span=hour`, { headers: { cookie } });
  expect(res.status).toBe(200);
  return (JSON.parse(res.body.toString("utf8")) as { samples: Sample[] }).samples;
}

describe("console history", () => {
  it("survives a restart over the same data directory", async () => {
    const first = await start();
    let stopped = false;
    teardown.add("first mirror", () => (stopped ? undefined : first.stop()));
    for (const blob of image.blobs()) {
      const res = await fetchRaw(`${first.url}/v2/reg.test/team/app/blobs/${blob.digest}`);
      expect(res.status).toBe(200);
    }
    const sent = image.blobs().reduce((sum, b) => sum + b.bytes.length, 0);
    const cookie = await signIn(first);
    await waitFor(async () => (await history(first, cookie)).some((s) => s.sentFromUpstream === sent), {
      timeoutMs: 10_000,
      what: "a sample after the pull",
    });
    const before = await history(first, cookie);
    await first.stop();
    stopped = true;

    const second = teardown.track(await start());
    const again = await signIn(second);
    const after = await history(second, again);
    // Everything sampled before the restart, and the sample taken at shutdown, is there.
    expect(after.slice(0, before.length)).toEqual(before);
    expect(after.length).toBeGreaterThan(before.length);
    expect(after.at(-1)!.sentFromUpstream).toBe(sent);
    // The old session did not survive: sessions are kept in memory only.
    expect((await fetchRaw(`${second.url}/console/history.json`, { headers: { cookie } })).status).toBe(401);
  });
});
