/**
 * The traffic totals of `/admin/v1/totals` from a real mirror process (`node src/main.ts`) over a real upstream:
 * exact counts and bytes after known pulls, equal to what /metrics says, no bytes for pings and probes, and the
 * all-time totals carried across a restart (SIGTERM, then a new process on the same data directory).
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { TrafficReport } from "../../src/observability/traffic-totals.ts";
import { buildImage, pushImage, randomLayer } from "../harness/image-builder.ts";
import { freePort, startProcess, Teardown, waitFor, type ManagedProcess } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, fetchRaw } from "./client.ts";
import { parsePrometheusText, valueOf } from "./prometheus-text.ts";

const TOKEN = "admin-token-for-traffic-0123";
const teardown = new Teardown();
afterAll(() => teardown.run());

let upstream: Registry;
let dataDir: string;
let configFile: string;
let url: string;

beforeAll(async () => {
  upstream = teardown.track(await startRegistry());
  dataDir = await mkdtemp(join(tmpdir(), "traffic-"));
  teardown.add("traffic data dir", () => rm(dataDir, { recursive: true, force: true }));
  const port = await freePort();
  url = `http://127.0.0.1:${port}`;
  configFile = join(dataDir, "..", `traffic-${port}.yaml`);
  teardown.add("traffic config", () => rm(configFile, { force: true }));
  await writeFile(
    configFile,
    [
      `listen: "127.0.0.1:${port}"`,
      `storage: { path: ${JSON.stringify(dataDir)} }`,
      `admin: { token: ${TOKEN} }`,
      "log: { level: warn }",
      "upstreams:",
      `  docker.io: { url: ${JSON.stringify(upstream.url)}, default: true }`,
      "",
    ].join("\n"),
  );
});

async function startMirror(): Promise<ManagedProcess> {
  const proc = startProcess(process.execPath, ["src/main.ts", "--config", configFile], { name: "mirror" });
  teardown.add("mirror process", () => proc.stop());
  await waitFor(async () => (await fetchRaw(`${url}/healthz`).catch(() => undefined))?.status === 200, {
    timeoutMs: 20_000,
    what: "mirror process ready",
    whileRunning: proc,
  });
  return proc;
}

async function traffic(): Promise<TrafficReport> {
  const res = await fetchRaw(`${url}/admin/v1/totals`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(res.status).toBe(200);
  return (JSON.parse(res.body.toString()) as { traffic: TrafficReport }).traffic;
}

/** The totals once `requests` content answers are counted (an access line lands when its response closes). */
async function trafficAfter(requests: number): Promise<TrafficReport> {
  let last: TrafficReport | undefined;
  await waitFor(
    async () => {
      last = await traffic();
      return last.sinceStart.requests.total >= requests;
    },
    { timeoutMs: 5_000, intervalMs: 20, what: `${requests} content answers counted` },
  );
  return last!;
}

describe("traffic totals", () => {
  it("count hits, misses and bytes saved exactly, and carry the all-time totals across a restart", async () => {
    const layer = randomLayer(250_000);
    const image = buildImage({ format: "oci", layers: [layer] });
    await pushImage(upstream.url, "team/traffic", "v1", image);
    const m = image.manifest.length;
    const L = layer.bytes.length;
    const manifest = () => fetchRaw(`${url}/v2/team/traffic/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
    const blob = () => fetchRaw(`${url}/v2/team/traffic/blobs/${layer.digest}`);

    let proc = await startMirror();
    const fresh = await traffic();
    expect(fresh.sinceStart.requests.total).toBe(0);
    expect([fresh.sinceStart.hitRatio, fresh.sinceStart.byteHitRatio]).toEqual([null, null]);

    expect((await manifest()).headers["x-mirror-cache"]).toBe("miss");
    expect((await blob()).headers["x-mirror-cache"]).toBe("miss");
    expect((await blob()).headers["x-mirror-cache"]).toBe("hit");
    expect((await manifest()).headers["x-mirror-cache"]).toBe("hit");
    // No content: counted nowhere in the totals.
    for (const path of ["/v2/", "/v2/_catalog", "/healthz", "/metrics"]) await fetchRaw(`${url}${path}`);

    const first = await trafficAfter(4);
    expect(first.sinceStart.requests).toEqual({ hit: 2, coalesced: 0, revalidated: 0, stale: 0, miss: 2, total: 4 });
    expect(first.sinceStart.bytes).toEqual({
      sentFromCache: L + m,
      sentFromUpstream: L + m,
      fetchedFromUpstream: L + m,
      saved: L + m,
    });
    expect(first.sinceStart.hitRatio).toBe(0.5);
    expect(first.sinceStart.byteHitRatio).toBe(0.5);
    // A data directory served for the first time: all time is this run.
    expect(first.total).toEqual(first.sinceStart);
    // The same numbers as /metrics.
    const s = parsePrometheusText((await fetchRaw(`${url}/metrics`)).body.toString());
    expect(valueOf(s, "mirror_sent_bytes_total", { source: "cache" })).toBe(first.sinceStart.bytes.sentFromCache);
    expect(valueOf(s, "mirror_sent_bytes_total")).toBe(2 * (L + m));
    expect(valueOf(s, "mirror_upstream_fetched_bytes_total")).toBe(L + m);

    // SIGTERM: the totals are saved at shutdown.
    await proc.stop();
    expect(await proc.exited).toBe(0);
    const saved = JSON.parse(await readFile(join(dataDir, "traffic.json"), "utf8")) as {
      version: number;
      since: string;
      requests: Record<string, number>;
    };
    expect(saved).toMatchObject({ version: 1, since: first.total.since, requests: { hit: 2, miss: 2 } });

    proc = await startMirror();
    const restarted = await traffic();
    expect(restarted.sinceStart.requests.total).toBe(0);
    expect(restarted.sinceStart.since > first.sinceStart.since).toBe(true);
    expect(restarted.total).toEqual(first.total);

    expect((await blob()).headers["x-mirror-cache"]).toBe("hit");
    const after = await trafficAfter(1);
    expect(after.sinceStart.requests).toMatchObject({ hit: 1, miss: 0, total: 1 });
    expect(after.total.since).toBe(first.total.since);
    expect(after.total.requests).toEqual({ hit: 3, coalesced: 0, revalidated: 0, stale: 0, miss: 2, total: 5 });
    expect(after.total.bytes).toEqual({
      sentFromCache: 2 * L + m,
      sentFromUpstream: L + m,
      fetchedFromUpstream: L + m,
      saved: 2 * L + m,
    });
    expect(after.total.hitRatio).toBe(3 / 5);
    await proc.stop();
  });

  it("starts counting anew, and says so, when traffic.json is damaged", async () => {
    await writeFile(join(dataDir, "traffic.json"), '{"version": 1, "since": "20');
    const lines: string[] = [];
    const proc = startProcess(process.execPath, ["src/main.ts", "--config", configFile], {
      name: "mirror",
      onLine: (line) => lines.push(line),
    });
    teardown.add("mirror process (damaged totals)", () => proc.stop());
    await waitFor(async () => (await fetchRaw(`${url}/healthz`).catch(() => undefined))?.status === 200, {
      timeoutMs: 20_000,
      what: "mirror process ready",
      whileRunning: proc,
    });
    const report = await traffic();
    expect(report.total.requests.total).toBe(0);
    expect(report.total.since).toBe(report.sinceStart.since);
    expect(lines.some((l) => l.includes("traffic totals unreadable") && l.includes("traffic.json"))).toBe(true);
    await proc.stop();
    // Replaced by a good file at shutdown.
    expect(JSON.parse(await readFile(join(dataDir, "traffic.json"), "utf8"))).toMatchObject({ version: 1 });
  });
});
