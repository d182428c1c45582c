/**
 * Three replicas sharing downloads (`cluster` + one real redis-server), each over its own cache directory, in
 * front of one real registry behind the fault relay (throttled, so a download is still running when every
 * client has asked). What must hold:
 *  - a cold blob pulled by 16 clients spread over the three replicas leaves the upstream once: one replica
 *    downloads it holding the lease, the two others stream its download from it; every client gets verified
 *    bytes, and the lease is gone afterwards;
 *  - a lease whose holder cannot be reached (a replica that died) is taken over: the pull succeeds from the
 *    upstream;
 *  - a replica following another's download for another repository asks its upstream first whether that
 *    repository holds the blob: a peer's bytes never answer for a repository the upstream did not confirm;
 *  - the internal endpoint serves only signed requests from replicas with the same secret.
 */
import { createHash } from "node:crypto";
import { get as httpGet } from "node:http";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { peerSignature } from "../../src/upstream/peer-client.ts";
import { pushBlob, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { freePort, waitFor } from "../harness/processes.ts";
import { Teardown } from "../harness/teardown.ts";
import { allKeys, startRedis, type RedisServer } from "../harness/redis.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { errorCode, fetchRaw } from "./client.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());
const SECRET = "fleet-secret-0123456789abcdef";
let upstream: Registry;
let relay: Relay;
let redis: RedisServer;
let redisClient: Redis;
let replicas: TestMirror[];

async function startReplica(secret = SECRET): Promise<TestMirror> {
  const port = await freePort();
  const mirror = await startTestMirror({
    upstreams: { "docker.io": { url: relay.url, default: true } },
    extra: {
      listen: `127.0.0.1:${port}`,
      redis: { url: redis.url, keyPrefix: "fleet:" },
      cluster: { advertiseUrl: `http://127.0.0.1:${port}`, secret, leaseTtl: "5s" },
    },
  });
  return teardown.track(mirror);
}

beforeAll(async () => {
  upstream = teardown.track(await startRegistry());
  relay = teardown.track(await startRelay(upstream.url));
  redis = teardown.track(await startRedis());
  redisClient = new Redis(redis.url);
  teardown.add("redis client", async () => redisClient.disconnect());
  replicas = [await startReplica(), await startReplica(), await startReplica()];
}, 60_000);

/** GETs `url`, hashing the body as it streams: the status, the body's sha256 and size, or how it broke. */
function pull(url: string): Promise<{ status: number; digest: string; bytes: number; broken?: string }> {
  return new Promise((resolve) => {
    const req = httpGet(url, (res) => {
      const hash = createHash("sha256");
      let bytes = 0;
      res.on("data", (chunk: Buffer) => {
        hash.update(chunk);
        bytes += chunk.length;
      });
      res.on("end", () => resolve({ status: res.statusCode!, digest: `sha256:${hash.digest("hex")}`, bytes }));
      res.on("error", (err) => resolve({ status: res.statusCode!, digest: "", bytes, broken: err.message }));
      res.on("aborted", () => resolve({ status: res.statusCode!, digest: "", bytes, broken: "aborted" }));
    });
    req.on("error", (err) => resolve({ status: 0, digest: "", bytes: 0, broken: err.message }));
  });
}

/** A counter's value summed over label sets matching `labels`, from a replica's /metrics. */
async function counter(mirror: TestMirror, name: string, labels: Record<string, string>): Promise<number> {
  const text = (await fetchRaw(`${mirror.url}/metrics`)).body.toString("utf8");
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`)) continue;
    const matches = Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`));
    if (matches) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

async function leaseKeys(): Promise<string[]> {
  return (await allKeys(redisClient)).filter((k) => k.startsWith("fleet:fill:"));
}

describe("a fleet of three replicas", () => {
  it("downloads a cold blob wanted by 16 clients on three replicas from the upstream once", async () => {
    const layer = randomLayer(16 * 1024 * 1024);
    await pushBlob(upstream.url, "team/fleet", layer);
    upstream.clearRequests();
    // About four seconds of download: every client has asked long before it ends.
    relay.setFault({ kind: "throttle", bytesPerSecond: 4 * 1024 * 1024 });
    try {
      const results = await Promise.all(
        Array.from({ length: 16 }, (_, i) => pull(`${replicas[i % 3]!.url}/v2/team/fleet/blobs/${layer.digest}`)),
      );
      for (const r of results) expect(r).toEqual({ status: 200, digest: layer.digest, bytes: layer.bytes.length });
    } finally {
      relay.setFault(null);
    }
    await upstream.sync();
    expect(upstream.count({ method: "GET", kind: "blobs", pathIncludes: layer.digest })).toBe(1);
    const fromUpstream = await Promise.all(
      replicas.map((r) => counter(r, "mirror_fleet_fill_sources_total", { source: "upstream" })),
    );
    const fromPeer = await Promise.all(
      replicas.map((r) => counter(r, "mirror_fleet_fill_sources_total", { source: "peer" })),
    );
    expect(fromUpstream.reduce((a, b) => a + b)).toBe(1);
    expect(fromPeer.reduce((a, b) => a + b)).toBe(2);
    // Each replica committed its own verified copy; the lease went with the download.
    await waitFor(async () => (await leaseKeys()).length === 0, { timeoutMs: 5_000, what: "the lease to be released" });
    for (const r of replicas) expect(await r.mirror.blobStore.size(layer.digest)).toBe(layer.bytes.length);
  });

  it("takes over the lease of a holder that cannot be reached, and downloads itself", async () => {
    const layer = randomLayer(256 * 1024);
    await pushBlob(upstream.url, "team/fleet", layer);
    const dead = `http://127.0.0.1:${await freePort()}`;
    await redisClient.set(
      `fleet:fill:${layer.digest}`,
      JSON.stringify({ url: dead, upstream: "docker.io", repo: "team/fleet", id: "dead" }),
      "PX",
      60_000,
    );
    const before = await counter(replicas[0]!, "mirror_fleet_fill_sources_total", { source: "upstream-takeover" });
    const res = await pull(`${replicas[0]!.url}/v2/team/fleet/blobs/${layer.digest}`);
    expect(res).toEqual({ status: 200, digest: layer.digest, bytes: layer.bytes.length });
    expect(await counter(replicas[0]!, "mirror_fleet_fill_sources_total", { source: "upstream-takeover" })).toBe(
      before + 1,
    );
    await waitFor(async () => (await leaseKeys()).length === 0, { timeoutMs: 5_000, what: "the lease to be released" });
  });

  it("never answers for a repository its upstream did not confirm with another repository's download", async () => {
    const layer = randomLayer(8 * 1024 * 1024);
    await pushBlob(upstream.url, "team/has-it", layer);
    relay.setFault({ kind: "throttle", bytesPerSecond: 2 * 1024 * 1024 });
    try {
      const holder = pull(`${replicas[0]!.url}/v2/team/has-it/blobs/${layer.digest}`);
      await waitFor(async () => (await leaseKeys()).length === 1, { timeoutMs: 5_000, what: "the download's lease" });
      const other = await fetchRaw(`${replicas[1]!.url}/v2/team/lacks-it/blobs/${layer.digest}`);
      expect(other.status).toBe(404);
      expect(errorCode(other)).toBe("BLOB_UNKNOWN");
      expect((await holder).digest).toBe(layer.digest);
    } finally {
      relay.setFault(null);
    }
  });

  it("serves its internal endpoint only to signed requests made with the cluster's secret", async () => {
    const layer = randomLayer(64 * 1024);
    await pushBlob(upstream.url, "team/fleet", layer);
    expect((await pull(`${replicas[2]!.url}/v2/team/fleet/blobs/${layer.digest}`)).digest).toBe(layer.digest);
    const endpoint = `${replicas[2]!.url}/internal/v1/fills/${layer.digest}`;
    const key = (secret: string) => createHash("sha256").update(secret).digest();
    const now = Math.floor(Date.now() / 1000);

    const unsigned = await fetchRaw(endpoint);
    expect(unsigned.status).toBe(401);
    expect(errorCode(unsigned)).toBe("UNAUTHORIZED");
    const wrongSecret = await fetchRaw(endpoint, {
      headers: { "x-mirror-peer": peerSignature(key("another-secret-0123456789"), layer.digest, now) },
    });
    expect(wrongSecret.status).toBe(401);
    const otherDigest = await fetchRaw(endpoint, {
      headers: { "x-mirror-peer": peerSignature(key(SECRET), `sha256:${"0".repeat(64)}`, now) },
    });
    expect(otherDigest.status).toBe(401);
    const stale = await fetchRaw(endpoint, {
      headers: { "x-mirror-peer": peerSignature(key(SECRET), layer.digest, now - 3600) },
    });
    expect(stale.status).toBe(401);
    const signed = await fetchRaw(endpoint, {
      headers: { "x-mirror-peer": peerSignature(key(SECRET), layer.digest, now) },
    });
    expect(signed.status).toBe(200);
    expect(createHash("sha256").update(signed.body).digest("hex")).toBe(layer.digest.slice(7));
    // Not a digest: no such endpoint. A mirror without `cluster` has no internal endpoint at all.
    expect((await fetchRaw(`${replicas[2]!.url}/internal/v1/fills/latest`)).status).toBe(404);
    const alone = teardown.track(
      await startTestMirror({ upstreams: { "docker.io": { url: relay.url, default: true } } }),
    );
    const none = await fetchRaw(`${alone.url}/internal/v1/fills/${layer.digest}`, {
      headers: { "x-mirror-peer": peerSignature(key(SECRET), layer.digest, now) },
    });
    expect(none.status).toBe(404);
  });
});
