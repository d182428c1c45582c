/**
 * The fleet on one object store: three replicas (`cluster` + one real redis-server) keeping their content in one
 * bucket of a real S3 server (Ceph RADOS Gateway, harness/s3.ts), in front of one real registry behind the fault
 * relay (throttled, so a download is still running when every client has asked). The replicas reach the S3
 * server through a second relay, whose log counts the object store requests they made. What must hold:
 *  - 16 clients spread over the replicas pull the same cold blob: every client gets verified bytes, the upstream
 *    serves it exactly once, the bucket holds it once (with no multipart upload left), ONE upload was made of it
 *    (the followers waited for the holder's object instead of uploading the same bytes again), and each replica
 *    then serves it from the bucket without asking the upstream;
 *  - the holder (a mirror process) killed by SIGKILL in the middle of a download a follower streams: the
 *    follower's client gets a broken transfer, never wrong bytes; its retry takes the lease over and ends with
 *    the object committed once, verified;
 *  - a corrupt upstream body is committed by no replica: no object, no upload left; the retry after the fault is
 *    gone succeeds.
 */
import { createHash } from "node:crypto";
import { get as httpGet } from "node:http";
import { type S3Client } from "@aws-sdk/client-s3";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pushBlob, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, startProcess, waitFor } from "../harness/processes.ts";
import { startRedis, type RedisServer } from "../harness/redis.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import type { S3Server } from "../harness/s3.ts";
import { blobKey, bucketHolds as bucketHoldsUnder, mirrorS3Settings, startS3WithBucket } from "../harness/s3-bucket.ts";
import { Teardown } from "../harness/teardown.ts";
import { fetchRaw } from "./client.ts";

const MiB = 1024 * 1024;
const BUCKET = "fleet";
const PREFIX = "shared/";
const SECRET = "fleet-s3-secret-0123456789";
const keyOf = (digest: string) => blobKey(PREFIX, digest);

const teardown = new Teardown();
afterAll(() => teardown.run(), 180_000);
let s3: S3Server;
let client: S3Client;
let upstream: Registry;
let relay: Relay;
/** In front of the S3 server: every replica's object store requests, in its log. */
let s3Relay: Relay;
let redis: RedisServer;
let replicas: TestMirror[];

/** The replicas' S3 settings: the bucket, under `prefix`, through the relay in front of the S3 server. */
function s3Settings(prefix: string): Record<string, unknown> {
  return mirrorS3Settings(s3, BUCKET, prefix, { endpoint: s3Relay.url });
}

async function startReplica(prefix = PREFIX, keyPrefix = "fleet-s3:"): Promise<TestMirror> {
  const port = await freePort();
  return teardown.track(
    await startTestMirror({
      upstreams: { "docker.io": { url: relay.url, default: true } },
      extra: {
        listen: `127.0.0.1:${port}`,
        storage: { s3: s3Settings(prefix) },
        redis: { url: redis.url, keyPrefix },
        cluster: { advertiseUrl: `http://127.0.0.1:${port}`, secret: SECRET, leaseTtl: "5s" },
      },
    }),
  );
}

beforeAll(async () => {
  ({ s3, client } = await startS3WithBucket(teardown, BUCKET));
  upstream = teardown.track(await startRegistry());
  relay = teardown.track(await startRelay(upstream.url));
  redis = teardown.track(await startRedis());
  s3Relay = teardown.track(await startRelay(s3.endpoint));
  replicas = [await startReplica(), await startReplica(), await startReplica()];
}, 180_000);

/** GETs `url`, hashing the body as it streams: the status, sha256 and size, or that the transfer broke. */
function pull(
  url: string,
  onBytes?: (bytes: number) => void,
): Promise<{ status: number; digest: string; bytes: number; broken?: boolean; cache?: string }> {
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
            ? {
                status: res.statusCode!,
                digest: `sha256:${hash.digest("hex")}`,
                bytes,
                cache: String(res.headers["x-mirror-cache"]),
              }
            : { status: res.statusCode!, digest: "", bytes, broken: true },
        ),
      );
    });
    req.on("error", () => resolve({ status: 0, digest: "", bytes: 0, broken: true }));
  });
}

/** What the bucket holds under the prefix: objects (key → size) and unfinished multipart uploads. */
const bucketHolds = (prefix = PREFIX) => bucketHoldsUnder(client, BUCKET, prefix);

/** Waits (bounded) until no replica holds a write in progress. */
async function writesSettled(): Promise<void> {
  await waitFor(
    async () => (await Promise.all(replicas.map((r) => r.mirror.blobStore.tempFiles()))).every((t) => t.length === 0),
    { timeoutMs: 20_000, what: "every replica's writes to end" },
  );
}

/**
 * What the replicas asked the object store to do with `key`, from the relay's log: uploads begun
 * (CreateMultipartUpload, or a PutObject of the whole object) and commits (CompleteMultipartUpload, or PutObject).
 */
function uploadsOf(key: string): { begun: number; committed: number } {
  const path = `/${BUCKET}/${key}`;
  const of = s3Relay.requests.filter((r) => r.path === path || r.path.startsWith(`${path}?`));
  const query = (r: { path: string }) => new URLSearchParams(r.path.slice(path.length + 1));
  const put = of.filter((r) => r.method === "PUT" && !query(r).has("partNumber")).length;
  return {
    begun: of.filter((r) => r.method === "POST" && query(r).has("uploads")).length + put,
    committed: of.filter((r) => r.method === "POST" && query(r).has("uploadId")).length + put,
  };
}

async function blobGets(digest: string): Promise<number> {
  await upstream.sync();
  return upstream.count({ method: "GET", kind: "blobs", pathIncludes: digest });
}

describe("a fleet of three replicas on one bucket", () => {
  it("downloads a cold blob wanted by 16 clients once, stores it once, and serves it from the bucket after", async () => {
    const layer = randomLayer(24 * MiB);
    await pushBlob(upstream.url, "team/fleet", layer);
    relay.setFault({ kind: "throttle", bytesPerSecond: 6 * MiB });
    try {
      const results = await Promise.all(
        Array.from({ length: 16 }, (_, i) => pull(`${replicas[i % 3]!.url}/v2/team/fleet/blobs/${layer.digest}`)),
      );
      for (const r of results)
        expect(r).toMatchObject({ status: 200, digest: layer.digest, bytes: layer.bytes.length });
    } finally {
      relay.setFault(null);
    }
    expect(await blobGets(layer.digest)).toBe(1);
    await writesSettled();
    const held = await bucketHolds();
    expect(held.objects.get(keyOf(layer.digest))).toBe(layer.bytes.length);
    expect(held.uploads).toEqual([]);
    // The holder uploaded it; the followers' verified copies found its object and sent nothing.
    expect(uploadsOf(keyOf(layer.digest))).toEqual({ begun: 1, committed: 1 });
    // Each replica serves it from the bucket now, whichever replica downloaded it.
    for (const r of replicas) {
      const again = await pull(`${r.url}/v2/team/fleet/blobs/${layer.digest}`);
      expect(again).toMatchObject({ status: 200, digest: layer.digest, cache: "hit" });
    }
    expect(await blobGets(layer.digest)).toBe(1);
  });

  it("commits a corrupt upstream body on no replica, and the retry after the fault is gone succeeds", async () => {
    const layer = randomLayer(12 * MiB);
    await pushBlob(upstream.url, "team/fleet", layer);
    relay.setFault({ kind: "corrupt" });
    let results: Array<{ status: number; digest: string; broken?: boolean }>;
    try {
      results = await Promise.all(
        Array.from({ length: 6 }, (_, i) => pull(`${replicas[i % 3]!.url}/v2/team/fleet/blobs/${layer.digest}`)),
      );
    } finally {
      relay.setFault(null);
    }
    // Nobody got a complete transfer of other bytes: each was cut (or refused before the body).
    for (const r of results) expect(r.broken === true || r.status >= 400, JSON.stringify(r)).toBe(true);
    await writesSettled();
    const held = await bucketHolds();
    expect(held.objects.has(keyOf(layer.digest))).toBe(false);
    expect(held.uploads).toEqual([]);
    const retry = await fetchRaw(`${replicas[1]!.url}/v2/team/fleet/blobs/${layer.digest}`);
    expect(retry.status).toBe(200);
    expect(`sha256:${createHash("sha256").update(retry.body).digest("hex")}`).toBe(layer.digest);
  });
});

describe("the holder of a download killed while a follower streams it", () => {
  /** A mirror process (`node src/main.ts`) on the bucket under `prefix`, in the fleet under `keyPrefix`. */
  async function replicaProcess(
    prefix: string,
    keyPrefix: string,
  ): Promise<{ url: string; pid: number; exited: Promise<unknown> }> {
    const dataDir = await mkdtemp(join(tmpdir(), "fleet-s3-kill-"));
    teardown.add("data dir", () => rm(dataDir, { recursive: true, force: true }));
    const port = await freePort();
    const configFile = `${dataDir}.yaml`;
    // JSON is YAML.
    const config = {
      listen: `127.0.0.1:${port}`,
      storage: { path: dataDir, s3: s3Settings(prefix) },
      redis: { url: redis.url, keyPrefix },
      cluster: { advertiseUrl: `http://127.0.0.1:${port}`, secret: SECRET, leaseTtl: "3s" },
      log: { level: "info" },
      upstreams: { "docker.io": { url: relay.url, default: true } },
    };
    await writeFile(configFile, JSON.stringify(config));
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
    return { url: `http://127.0.0.1:${port}`, pid: proc.pid, exited: proc.exited };
  }

  it("gives the follower's client a broken transfer; its retry commits the object once, verified", async () => {
    const prefix = "killed/";
    const layer = randomLayer(24 * MiB);
    await pushBlob(upstream.url, "team/kill", layer);
    const holder = await replicaProcess(prefix, "s3-kill:");
    const follower = await startReplica(prefix, "s3-kill:");
    const key = `${prefix}blobs/sha256/${layer.digest.slice("sha256:".length)}`;
    const leaseKey = `s3-kill:fill:${layer.digest}`;
    const redisClient = new Redis(redis.url);
    teardown.add("redis client", async () => redisClient.disconnect());
    relay.setFault({ kind: "throttle", bytesPerSecond: 3 * MiB });
    let followed = 0;
    let atFollower: { status: number; digest: string; bytes: number; broken?: boolean } | undefined;
    try {
      const atHolder = pull(`${holder.url}/v2/team/kill/blobs/${layer.digest}`);
      await waitFor(async () => (await redisClient.exists(leaseKey)) === 1, {
        timeoutMs: 10_000,
        what: "the holder's lease",
      });
      const following = pull(`${follower.url}/v2/team/kill/blobs/${layer.digest}`, (n) => (followed = n));
      await waitFor(async () => followed >= layer.bytes.length / 2, {
        timeoutMs: 30_000,
        what: "half the blob at the follower's client",
      });
      process.kill(holder.pid, "SIGKILL");
      await holder.exited;
      [, atFollower] = await Promise.all([atHolder, following]);
    } finally {
      relay.setFault(null);
    }
    expect(atFollower?.broken).toBe(true);
    await waitFor(
      async () => (await follower.mirror.blobStore.tempFiles()).every((t) => !t.startsWith(layer.digest.slice(7))),
      {
        timeoutMs: 20_000,
        what: "the follower's write to end",
      },
    );
    // The dead holder's upload was begun, never completed; the follower, following it, uploaded nothing.
    expect(uploadsOf(key)).toEqual({ begun: 1, committed: 0 });
    expect((await bucketHolds(prefix)).objects.has(key)).toBe(false);

    // The retry takes the dead holder's lease over, downloads, and commits: once.
    const retry = await pull(`${follower.url}/v2/team/kill/blobs/${layer.digest}`);
    expect(retry).toMatchObject({ status: 200, digest: layer.digest, bytes: layer.bytes.length });
    await waitFor(async () => (await bucketHolds(prefix)).objects.get(key) === layer.bytes.length, {
      timeoutMs: 20_000,
      what: "the object in the bucket",
    });
    expect(uploadsOf(key)).toEqual({ begun: 2, committed: 1 });
    const again = await pull(`${follower.url}/v2/team/kill/blobs/${layer.digest}`);
    expect(again).toMatchObject({ status: 200, digest: layer.digest, cache: "hit" });
  });
});
