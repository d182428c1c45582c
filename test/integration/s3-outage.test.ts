/**
 * The object store failing under a running mirror (issue 19: "S3 stopped mid-run: cached pulls fail over to
 * pass-through with /readyz degraded; S3 back: normal again"). All real: a Ceph RADOS Gateway (harness/s3.ts)
 * whose gateway process alone is stopped by PID and started again (the mon and the OSD keep the data), a real
 * upstream registry, the mirror in this process. What is asserted: the bytes each pull received (sha256), what
 * the upstream's log counted, /readyz, /metrics, and what the bucket holds (asked with the SDK).
 */
import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { join } from "node:path";
import { ListObjectsV2Command, S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer, type BuiltImage } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { Teardown, waitFor } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import type { S3Server } from "../harness/s3.ts";
import { blobKey, bucketHolds, mirrorS3Settings, startS3WithBucket } from "../harness/s3-bucket.ts";
import { ALL_MANIFEST_TYPES, fetchRaw } from "./client.ts";
import { parsePrometheusText, valueOf } from "./prometheus-text.ts";

const MiB = 1024 * 1024;
const BUCKET = "outage";
const PREFIX = "cache/";
const REPO = "team/outage";
const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const keyOf = (digest: string) => blobKey(PREFIX, digest);
/** The probe runs every 5 s (cache-layer.ts): the store is seen back well within this. */
const BACK_WITHIN_MS = 60_000;

const teardown = new Teardown();
afterAll(() => teardown.run(), 180_000);

let s3: S3Server;
let client: S3Client;
let registry: Registry;
let mirror: TestMirror;
// One layer above a part (a multipart upload), one below (a single PutObject), for each image.
const cachedImage = buildImage({ format: "oci", layers: [randomLayer(9 * MiB), randomLayer(MiB)] });
const newImage = buildImage({ format: "oci", layers: [randomLayer(9 * MiB), randomLayer(MiB)] });
const laterImage = buildImage({ format: "oci", layers: [randomLayer(2 * MiB)] });

/** A pull as a client makes it: the manifest by tag, then every blob; each checked against its digest. */
async function pull(tag: string, image: BuiltImage, from: TestMirror = mirror): Promise<void> {
  const manifest = await fetchRaw(`${from.url}/v2/${REPO}/manifests/${tag}`, {
    headers: { accept: ALL_MANIFEST_TYPES },
  });
  expect(manifest.status, `manifest ${tag}: ${manifest.body.toString().slice(0, 300)}`).toBe(200);
  expect(sha256(manifest.body)).toBe(image.digest);
  for (const blob of image.blobs()) {
    const res = await fetchRaw(`${from.url}/v2/${REPO}/blobs/${blob.digest}`);
    expect(res.status, `blob ${blob.digest}: ${res.body.toString().slice(0, 300)}`).toBe(200);
    expect(res.broken).toBeUndefined();
    expect(sha256(res.body)).toBe(blob.digest);
  }
}

/** The upstream's GETs of each of the image's blobs, in order. */
async function blobGets(image: BuiltImage): Promise<number[]> {
  await registry.sync();
  return image.blobs().map((b) => registry.count({ method: "GET", kind: "blobs", pathIncludes: b.digest }));
}

async function objectKeys(): Promise<Set<string>> {
  return new Set((await bucketHolds(client, BUCKET, PREFIX)).objects.keys());
}

async function readiness(): Promise<{ status: number; reasons: string[] }> {
  const res = await fetchRaw(`${mirror.url}/readyz`);
  const body = JSON.parse(res.body.toString()) as { reasons?: string[] };
  return { status: res.status, reasons: body.reasons ?? [] };
}

const outageReason = (reasons: string[]) => reasons.find((r) => r.startsWith("object store unavailable: "));

async function metric(name: string): Promise<number> {
  return valueOf(parsePrometheusText((await fetchRaw(`${mirror.url}/metrics`)).body.toString()), name);
}

/** Every blob of the image is an object in the bucket (waits, bounded, for the commits after the responses). */
async function storedInBucket(image: BuiltImage): Promise<void> {
  const keys = image.blobs().map((b) => keyOf(b.digest));
  await waitFor(
    async () => {
      const held = await objectKeys();
      return keys.every((k) => held.has(k));
    },
    { timeoutMs: 20_000, intervalMs: 100, what: "the image's blobs in the bucket" },
  );
}

beforeAll(async () => {
  ({ s3, client } = await startS3WithBucket(teardown, BUCKET));
  const dataDir = await mkdtemp(join(tmpdir(), "mirror-s3-outage-"));
  teardown.add("data dir", () => rm(dataDir, { recursive: true, force: true }));
  registry = teardown.track(await startRegistry());
  await pushImage(registry.url, REPO, "cached", cachedImage);
  await pushImage(registry.url, REPO, "new", newImage);
  await pushImage(registry.url, REPO, "later", laterImage);
  mirror = await startTestMirror({
    dataDir,
    upstreams: { "docker.io": { url: registry.url, default: true } },
    extra: {
      metrics: { enabled: true },
      storage: {
        s3: mirrorS3Settings(s3, BUCKET, PREFIX),
      },
    },
  });
  teardown.add("mirror", () => mirror.stop());
}, 180_000);

/** A mirror storing under `prefix` through a fault relay in front of the object store. */
async function mirrorBehindRelay(
  prefix: string,
  s3Settings: Record<string, unknown> = {},
): Promise<{ mirror: TestMirror; relay: Relay }> {
  const relay = teardown.track(await startRelay(s3.endpoint));
  const dataDir = await mkdtemp(join(tmpdir(), "mirror-s3-relayed-"));
  teardown.add("relayed data dir", () => rm(dataDir, { recursive: true, force: true }));
  const relayed = await startTestMirror({
    dataDir,
    upstreams: { "docker.io": { url: registry.url, default: true } },
    extra: {
      metrics: { enabled: true },
      storage: {
        s3: mirrorS3Settings(s3, BUCKET, prefix, { endpoint: relay.url, ...s3Settings }),
      },
    },
  });
  teardown.add("relayed mirror", () => relayed.stop());
  return { mirror: relayed, relay };
}

describe("the object store stopped mid-run", () => {
  it("caches an image in the bucket while the store is up", async () => {
    await pull("cached", cachedImage);
    await storedInBucket(cachedImage);
    expect(await blobGets(cachedImage)).toEqual([1, 1, 1]);
    expect(await metric("mirror_object_store_up")).toBe(1);
    expect(outageReason((await readiness()).reasons)).toBeUndefined();
  });

  it("with the gateway stopped: the cached image and a new one are pulled byte-exact from the upstream, /readyz degraded", async () => {
    await s3.stopGateway();
    await pull("cached", cachedImage);
    // The cached blobs could not be read from the bucket: each came from the upstream again, verified.
    expect(await blobGets(cachedImage)).toEqual([2, 2, 2]);
    await pull("new", newImage);
    expect(await blobGets(newImage)).toEqual([1, 1, 1]);

    const ready = await readiness();
    expect(ready.status).toBe(200);
    expect(outageReason(ready.reasons)).toMatch(/\(misses and hits streamed from upstreams\)$/);
    expect(await metric("mirror_object_store_up")).toBe(0);
    expect(await metric("mirror_object_store_failures_total")).toBeGreaterThan(0);
  });

  it("with the gateway started again: healthy within a bounded wait, and a new miss is stored in the bucket again", async () => {
    await s3.startGateway();
    await waitFor(async () => outageReason((await readiness()).reasons) === undefined, {
      timeoutMs: BACK_WITHIN_MS,
      intervalMs: 250,
      what: "the object store reported healthy again",
    });
    expect(await metric("mirror_object_store_up")).toBe(1);
    const held = await objectKeys();
    // Nothing of the outage's pulls reached the bucket.
    for (const b of newImage.blobs()) expect(held.has(keyOf(b.digest))).toBe(false);

    await pull("later", laterImage);
    await storedInBucket(laterImage);
    expect(await blobGets(laterImage)).toEqual([1, 1]);
    // The cached image is read from the bucket again: no further upstream GETs.
    await pull("cached", cachedImage);
    expect(await blobGets(cachedImage)).toEqual([2, 2, 2]);
  });
});

describe("a cached blob whose GET from the object store fails before any byte was sent", () => {
  it("is answered from the upstream, verified, instead of an error (the whole blob, and a range of it)", async () => {
    // The object store behind the fault relay, which forwards the mirror's signed requests unchanged (Host too).
    const { mirror: relayed, relay } = await mirrorBehindRelay("relayed/");
    const image = buildImage({ format: "oci", layers: [randomLayer(3 * MiB)] });
    await pushImage(registry.url, REPO, "relayed", image);
    await pull("relayed", image, relayed);
    const objects = async () =>
      new Set(
        (
          (await client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: "relayed/blobs/" }))).Contents ?? []
        ).map((o) => o.Key!),
      );
    await waitFor(
      async () => {
        const held = await objects();
        return image.blobs().every((b) => held.has(`relayed/blobs/sha256/${b.digest.slice(7)}`));
      },
      { timeoutMs: 20_000, intervalMs: 100, what: "the image's blobs in the bucket" },
    );
    expect(await blobGets(image)).toEqual([1, 1]);

    // The object store answers every GET of content with 503 (a HEAD or a listing would still say it is there).
    relay.setFault({ kind: "status", status: 503, match: /^GET \/outage\/relayed\/blobs\// });
    relay.requests.length = 0;
    await pull("relayed", image, relayed);
    expect(await blobGets(image)).toEqual([2, 2]);
    const faulted = relay.requests.filter((r) => r.fault === "status" && r.method === "GET");
    expect(faulted.length).toBeGreaterThan(0); // the GET from the bucket was tried, and failed
    // No request but the failed GETs reached the object store for the blobs: the GET is the read's first.
    expect(relay.requests.filter((r) => r.path.includes("/relayed/blobs/") && r.fault === undefined)).toEqual([]);
    // A range of it too: the upstream's whole blob, verified (a pass-through always sends all of it).
    const layer = image.layers[0]!;
    const ranged = await fetchRaw(`${relayed.url}/v2/${REPO}/blobs/${layer.digest}`, {
      headers: { range: "bytes=100-199" },
    });
    expect(ranged.status).toBe(200);
    expect(sha256(ranged.body)).toBe(layer.digest);
    expect(await blobGets(image)).toEqual([2, 3]);
    const ready = JSON.parse((await fetchRaw(`${relayed.url}/readyz`)).body.toString()) as { reasons: string[] };
    expect(outageReason(ready.reasons)).toMatch(/503/);
  });
});

describe("a cached blob whose GET the object store holds unanswered (a stuck placement group)", () => {
  it("is answered from the upstream once storage.s3.readTimeout has passed; the store is not marked down", async () => {
    const { mirror: held, relay } = await mirrorBehindRelay("held/", { readTimeout: "1s" });
    const image = buildImage({ format: "oci", layers: [randomLayer(2 * MiB)] });
    await pushImage(registry.url, REPO, "held", image);
    await pull("held", image, held);
    await waitFor(
      async () => {
        const keys = (await bucketHolds(client, BUCKET, "held/")).objects;
        return image.blobs().every((b) => keys.has(blobKey("held/", b.digest)));
      },
      { timeoutMs: 20_000, intervalMs: 100, what: "the image's blobs in the bucket" },
    );
    expect(await blobGets(image)).toEqual([1, 1]);

    // The gateway accepts every GET of content and never answers it (HEADs, listings and the probe still work).
    relay.setFault({ kind: "stallHeaders", match: /^GET \/outage\/held\/blobs\// });
    const started = performance.now();
    await pull("held", image, held);
    expect(performance.now() - started).toBeLessThan(20_000);
    expect(await blobGets(image)).toEqual([2, 2]);
    expect(relay.requests.filter((r) => r.fault === "stallHeaders").length).toBeGreaterThanOrEqual(2);
    // One object that does not answer says nothing of the whole store: it stays up, and ready.
    const ready = await fetchRaw(`${held.url}/readyz`);
    expect(ready.status).toBe(200);
    relay.setFault(null);
  });
});

describe("a download that verified but that the object store refused to keep", () => {
  // 9 MiB: its parts are uploaded while it downloads (8 MiB parts); 1 MiB: one PutObject at the commit. Each on a
  // mirror of its own: after the first refusal the store counts as down, and later misses are not written to it.
  for (const [size, prefix, write] of [
    [9 * MiB, "full-multipart/", "UploadPart"],
    [MiB, "full-single/", "PutObject"],
  ] as const) {
    it(`reaches its client whole and unbroken, and nothing is kept (${write} refused)`, async () => {
      const { mirror: full, relay } = await mirrorBehindRelay(prefix);
      // Every write of bytes under the prefix (UploadPart, PutObject) is answered 507, as a full RGW answers.
      relay.setFault({ kind: "status", status: 507, match: new RegExp(`^PUT /${BUCKET}/${prefix}blobs/`) });
      const layer = randomLayer(size);
      const image = buildImage({ format: "oci", layers: [layer] });
      await pushImage(registry.url, REPO, `full-${write.toLowerCase()}`, image);

      const res = await fetchRaw(`${full.url}/v2/${REPO}/blobs/${layer.digest}`);
      expect(res.status, res.body.toString().slice(0, 300)).toBe(200);
      expect(res.broken).toBeUndefined();
      expect(res.body.length).toBe(layer.bytes.length);
      expect(sha256(res.body)).toBe(layer.digest);
      // The store was asked, and refused: the write reached the relay and was answered 507.
      const refused = relay.requests.filter((r) => r.fault === "status" && r.path.includes(layer.digest.slice(7)));
      expect(refused.map((r) => r.path.includes("partNumber="))).toContain(write === "UploadPart");
      // One upstream download served the client; nothing of it is in the bucket.
      await registry.sync();
      expect(registry.count({ method: "GET", kind: "blobs", pathIncludes: layer.digest })).toBe(1);
      const held = new Set((await bucketHolds(client, BUCKET, prefix)).objects.keys());
      expect(held.has(blobKey(prefix, layer.digest))).toBe(false);
      const metrics = parsePrometheusText((await fetchRaw(`${full.url}/metrics`)).body.toString());
      expect(valueOf(metrics, "mirror_fills_total", { upstream: "docker.io", result: "uncached" })).toBe(1);
    });
  }

  it("a commit that hangs does not hold the client: it gets the verified blob whole while the upload is completed", async () => {
    const prefix = "slow-commit/";
    const { mirror: slow, relay } = await mirrorBehindRelay(prefix);
    // Bytes are written as usual; the request completing the multipart upload is never answered.
    relay.setFault({ kind: "stallHeaders", match: new RegExp(`^POST /${BUCKET}/${prefix}blobs/.*uploadId=`) });
    const layer = randomLayer(9 * MiB);
    const image = buildImage({ format: "oci", layers: [layer] });
    await pushImage(registry.url, REPO, "slow-commit", image);

    const res = await Promise.race([
      fetchRaw(`${slow.url}/v2/${REPO}/blobs/${layer.digest}`),
      sleep(20_000).then(() => "no response within 20 s" as const),
    ]);
    expect(res).not.toBe("no response within 20 s");
    const got = res as Awaited<ReturnType<typeof fetchRaw>>;
    expect(got.status).toBe(200);
    expect(got.broken).toBeUndefined();
    expect(sha256(got.body)).toBe(layer.digest);
    // The client finished while the upload was still being completed: nothing is in the bucket yet.
    expect(relay.requests.some((r) => r.fault === "stallHeaders" && r.path.includes(layer.digest.slice(7)))).toBe(true);
    const held = new Set((await bucketHolds(client, BUCKET, prefix)).objects.keys());
    expect(held.has(blobKey(prefix, layer.digest))).toBe(false);
  });
});
