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
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { get as httpGet } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { peerSignature } from "../../src/upstream/peer-client.ts";
import { pushBlob, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { freePort, startProcess, waitFor } from "../harness/processes.ts";
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

/**
 * GETs `url`, hashing the body as it streams: the status, the body's sha256 and size, or that it broke.
 * `onBytes` hears the running count.
 */
function pull(
  url: string,
  onBytes?: (bytes: number) => void,
): Promise<{ status: number; digest: string; bytes: number; broken?: boolean }> {
  return new Promise((resolve) => {
    const req = httpGet(url, (res) => {
      const hash = createHash("sha256");
      let bytes = 0;
      res.on("data", (chunk: Buffer) => {
        hash.update(chunk);
        bytes += chunk.length;
        onBytes?.(bytes);
      });
      res.on("error", () => undefined); // a cut transfer: told by `complete` below
      res.once("close", () =>
        resolve(
          res.complete
            ? { status: res.statusCode!, digest: `sha256:${hash.digest("hex")}`, bytes }
            : { status: res.statusCode!, digest: "", bytes, broken: true },
        ),
      );
    });
    req.on("error", () => resolve({ status: 0, digest: "", bytes: 0, broken: true }));
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

describe("a replica killed in the middle of a download others follow", () => {
  /** A mirror process (`node src/main.ts`) in the fleet, on a port chosen here; its data directory. */
  async function replicaProcess(
    keyPrefix: string,
  ): Promise<{ url: string; pid: number; dataDir: string; exited: Promise<unknown> }> {
    const dataDir = await mkdtemp(join(tmpdir(), "fleet-kill-"));
    teardown.add("data dir", () => rm(dataDir, { recursive: true, force: true }));
    const port = await freePort();
    const configFile = `${dataDir}.yaml`;
    await writeFile(
      configFile,
      [
        `listen: "127.0.0.1:${port}"`,
        `storage: { path: ${JSON.stringify(dataDir)} }`,
        `redis: { url: ${JSON.stringify(redis.url)}, keyPrefix: ${JSON.stringify(keyPrefix)} }`,
        `cluster: { advertiseUrl: "http://127.0.0.1:${port}", secret: ${JSON.stringify(SECRET)}, leaseTtl: 3s }`,
        `log: { level: info }`,
        `upstreams:`,
        `  docker.io: { url: ${JSON.stringify(relay.url)}, default: true }`,
        "",
      ].join("\n"),
    );
    teardown.add("config", () => rm(configFile, { force: true }));
    let listening = false;
    const proc = teardown.track(
      startProcess(process.execPath, ["src/main.ts", "--config", configFile], {
        name: "mirror replica",
        onLine: (line) => {
          if (line.includes('"mirror listening"')) listening = true;
        },
      }),
    );
    await waitFor(async () => listening, { timeoutMs: 30_000, what: "the replica to listen" });
    return { url: `http://127.0.0.1:${port}`, pid: proc.pid, dataDir, exited: proc.exited };
  }

  it("gives its followers a broken transfer, never wrong bytes; commits nothing partial; a retry succeeds", async () => {
    const layer = randomLayer(24 * 1024 * 1024);
    await pushBlob(upstream.url, "team/kill", layer);
    const holder = await replicaProcess("kill:");
    const follower = teardown.track(
      await (async () => {
        const port = await freePort();
        return startTestMirror({
          upstreams: { "docker.io": { url: relay.url, default: true } },
          extra: {
            listen: `127.0.0.1:${port}`,
            redis: { url: redis.url, keyPrefix: "kill:" },
            cluster: { advertiseUrl: `http://127.0.0.1:${port}`, secret: SECRET, leaseTtl: "3s" },
          },
        });
      })(),
    );
    const leaseKey = `kill:fill:${layer.digest}`;
    relay.setFault({ kind: "throttle", bytesPerSecond: 3 * 1024 * 1024 });
    let followed = 0;
    let results: Array<{ status: number; digest: string; bytes: number; broken?: boolean }>;
    try {
      const atHolder = pull(`${holder.url}/v2/team/kill/blobs/${layer.digest}`);
      await waitFor(async () => (await redisClient.exists(leaseKey)) === 1, {
        timeoutMs: 10_000,
        what: "the holder's lease",
      });
      const atFollower = pull(`${follower.url}/v2/team/kill/blobs/${layer.digest}`, (n) => (followed = n));
      // Half the blob has reached the follower's client through the holder: then the holder dies.
      await waitFor(async () => followed >= layer.bytes.length / 2, {
        timeoutMs: 30_000,
        what: "half the blob at the follower's client",
      });
      process.kill(holder.pid, "SIGKILL");
      await holder.exited;
      results = await Promise.all([atHolder, atFollower]);
    } finally {
      relay.setFault(null);
    }
    // Whatever arrived, no client has a complete transfer of other bytes.
    for (const r of results) {
      if (!r.broken) expect(r).toEqual({ status: 200, digest: layer.digest, bytes: layer.bytes.length });
    }
    expect(results[1]!.broken).toBe(true);
    // Nothing unverified committed: not at the holder (its temp file is not the blob), not at the follower.
    const hex = layer.digest.slice("sha256:".length);
    const holderFiles = await readdir(join(holder.dataDir, "blobs", "sha256", hex.slice(0, 2))).catch(() => []);
    expect(holderFiles).not.toContain(hex);
    expect(await follower.mirror.blobStore.size(layer.digest)).toBeUndefined();
    // The retry finds the dead holder's lease, cannot reach it, takes it over and downloads.
    const retry = await pull(`${follower.url}/v2/team/kill/blobs/${layer.digest}`);
    expect(retry).toEqual({ status: 200, digest: layer.digest, bytes: layer.bytes.length });
    expect(await counter(follower, "mirror_fleet_fill_sources_total", { source: "upstream-takeover" })).toBe(1);
    expect(await follower.mirror.blobStore.size(layer.digest)).toBe(layer.bytes.length);
    await waitFor(async () => (await redisClient.exists(leaseKey)) === 0, {
      timeoutMs: 5_000,
      what: "the lease to be released",
    });
  });
});
