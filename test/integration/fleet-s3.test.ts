/**
 * The fleet on one object store: three replicas (`cluster` + one real redis-server) keeping their content in one
 * bucket of a real S3 server (Ceph RADOS Gateway, harness/s3.ts), in front of one real registry behind the fault
 * relay (throttled, so a download is still running when every client has asked). What must hold:
 *  - 16 clients spread over the replicas pull the same cold blob: every client gets verified bytes, the upstream
 *    serves it exactly once, the bucket holds it once (with no multipart upload left), and each replica then
 *    serves it from the bucket without asking the upstream;
 *  - a corrupt upstream body is committed by no replica: no object, no upload left; the retry after the fault is
 *    gone succeeds.
 */
import { createHash } from "node:crypto";
import { get as httpGet } from "node:http";
import {
  CreateBucketCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  type S3Client,
} from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createS3Client } from "../../src/storage/s3-content-store.ts";
import { pushBlob, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { freePort, waitFor } from "../harness/processes.ts";
import { startRedis, type RedisServer } from "../harness/redis.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { startS3, type S3Server } from "../harness/s3.ts";
import { Teardown } from "../harness/teardown.ts";
import { fetchRaw } from "./client.ts";

const MiB = 1024 * 1024;
const BUCKET = "fleet";
const PREFIX = "shared/";
const SECRET = "fleet-s3-secret-0123456789";
const keyOf = (digest: string) => `${PREFIX}blobs/sha256/${digest.slice("sha256:".length)}`;

const teardown = new Teardown();
afterAll(() => teardown.run(), 180_000);
let s3: S3Server;
let client: S3Client;
let upstream: Registry;
let relay: Relay;
let redis: RedisServer;
let replicas: TestMirror[];

async function startReplica(): Promise<TestMirror> {
  const port = await freePort();
  return teardown.track(
    await startTestMirror({
      upstreams: { "docker.io": { url: relay.url, default: true } },
      extra: {
        listen: `127.0.0.1:${port}`,
        storage: {
          s3: {
            endpoint: s3.endpoint,
            region: s3.region,
            bucket: BUCKET,
            prefix: PREFIX,
            forcePathStyle: true,
            accessKeyId: s3.accessKeyId,
            secretAccessKey: s3.secretAccessKey,
          },
        },
        redis: { url: redis.url, keyPrefix: "fleet-s3:" },
        cluster: { advertiseUrl: `http://127.0.0.1:${port}`, secret: SECRET, leaseTtl: "5s" },
      },
    }),
  );
}

beforeAll(async () => {
  s3 = await startS3();
  teardown.add("s3", () => s3.dispose());
  client = await createS3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
  });
  teardown.add("s3 client", () => client.destroy());
  await client.send(new CreateBucketCommand({ Bucket: BUCKET }));
  upstream = teardown.track(await startRegistry());
  relay = teardown.track(await startRelay(upstream.url));
  redis = teardown.track(await startRedis());
  replicas = [await startReplica(), await startReplica(), await startReplica()];
}, 180_000);

/** GETs `url`, hashing the body as it streams: the status, sha256 and size, or that the transfer broke. */
function pull(
  url: string,
): Promise<{ status: number; digest: string; bytes: number; broken?: boolean; cache?: string }> {
  return new Promise((resolve) => {
    const req = httpGet(url, (res) => {
      const hash = createHash("sha256");
      let bytes = 0;
      res.on("data", (chunk: Buffer) => {
        hash.update(chunk);
        bytes += chunk.length;
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
async function bucketHolds(): Promise<{ objects: Map<string, number>; uploads: string[] }> {
  const listed = await client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `${PREFIX}blobs/` }));
  const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: PREFIX }));
  return {
    objects: new Map((listed.Contents ?? []).map((o) => [o.Key!, o.Size!])),
    uploads: (uploads.Uploads ?? []).map((u) => u.Key!),
  };
}

/** Waits (bounded) until no replica holds a write in progress. */
async function writesSettled(): Promise<void> {
  await waitFor(
    async () => (await Promise.all(replicas.map((r) => r.mirror.blobStore.tempFiles()))).every((t) => t.length === 0),
    { timeoutMs: 20_000, what: "every replica's writes to end" },
  );
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
