/**
 * The mirror with its content in S3 (`storage.s3`), on the real thing: a Ceph RADOS Gateway (harness/s3.ts), a
 * real upstream registry behind the fault relay, the mirror in this process. What is asserted is what the bucket
 * holds (asked of the S3 server with the SDK), what the client received, and what the upstream's log counted.
 * Then the start-up probe of the object store: a missing bucket, rejected credentials, a bucket these
 * credentials cannot write.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { HeadObjectCommand, PutBucketPolicyCommand, S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.ts";
import { startUpProblems } from "../../src/start-up-checks.ts";
import { buildImage, pushImage, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { Teardown } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import type { S3Server } from "../harness/s3.ts";
import { blobKey, bucketHolds as bucketHoldsUnder, mirrorS3Settings, startS3WithBucket } from "../harness/s3-bucket.ts";
import { ALL_MANIFEST_TYPES, fetchRaw } from "./client.ts";

const MiB = 1024 * 1024;
const ADMIN_TOKEN = "s3-storage-admin-token-0123";
const BUCKET = "mirror";
const PREFIX = "cache/";
const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const keyOf = (digest: string) => blobKey(PREFIX, digest);

const teardown = new Teardown();
afterAll(() => teardown.run(), 180_000);

let s3: S3Server;
let client: S3Client;
let registry: Registry;
let relay: Relay;
let mirror: TestMirror;
// 20 MiB of random bytes: three 8 MiB parts. The others for the faults, each pulled once.
const big = randomLayer(20 * MiB);
const corrupted = randomLayer(12 * MiB);
const truncated = randomLayer(12 * MiB);
const image = buildImage({ format: "oci", layers: [big, corrupted, truncated] });

function s3Settings(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return mirrorS3Settings(s3, BUCKET, PREFIX, overrides);
}

/** The mirror's local directory: temp files and the metadata journal (what links blobs to repositories). */
let dataDir: string;

function startMirror(): Promise<TestMirror> {
  return startTestMirror({
    dataDir,
    upstreams: { "docker.io": { url: relay.url, default: true } },
    extra: { storage: { s3: s3Settings() } },
  });
}

/** What the server holds under the prefix: objects (key → size) and unfinished multipart uploads. */
const bucketHolds = () => bucketHoldsUnder(client, BUCKET, PREFIX);

/** Waits (bounded) until the mirror holds no write in progress: every fill committed or discarded. */
async function fillsSettled(m: TestMirror): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if ((await m.mirror.blobStore.tempFiles()).length === 0) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  expect(await m.mirror.blobStore.tempFiles(), "writes still in progress").toEqual([]);
}

const blobUrl = (m: TestMirror, digest: string) => `${m.url}/v2/team/s3/blobs/${digest}`;
const blobGets = async (digest: string) => {
  await registry.sync();
  return registry.count({ method: "GET", kind: "blobs", pathIncludes: digest });
};

beforeAll(async () => {
  ({ s3, client } = await startS3WithBucket(teardown, BUCKET));
  dataDir = await mkdtemp(join(tmpdir(), "mirror-s3-"));
  teardown.add("data dir", () => rm(dataDir, { recursive: true, force: true }));
  registry = teardown.track(await startRegistry());
  await pushImage(registry.url, "team/s3", "v1", image);
  relay = teardown.track(await startRelay(registry.url));
  mirror = await startMirror();
  teardown.add("mirror", () => mirror.stop());
}, 180_000);

describe("content in S3", () => {
  it("stores a cold 20 MiB blob once, as one verified object on its final key, with no upload left", async () => {
    const res = await fetchRaw(blobUrl(mirror, big.digest));
    expect(res.status).toBe(200);
    expect(sha256(res.body)).toBe(big.digest);
    await fillsSettled(mirror);
    const held = await bucketHolds();
    expect(held.objects.get(keyOf(big.digest))).toBe(big.bytes.length);
    expect(held.uploads).toEqual([]);
    const head = await client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: keyOf(big.digest) }));
    expect(head.ETag).toMatch(/-3"$/); // completed from three parts uploaded during the fill: no copy
    expect(existsSync(`${mirror.dataDir}/blobs`)).toBe(false); // nothing of the content on the local disk
    expect(await blobGets(big.digest)).toBe(1);
  });

  it("serves warm reads, whole, HEAD and by Range, from the bucket without asking the upstream again", async () => {
    const whole = await fetchRaw(blobUrl(mirror, big.digest));
    expect(whole.status).toBe(200);
    expect(sha256(whole.body)).toBe(big.digest);
    const head = await fetchRaw(blobUrl(mirror, big.digest), { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(Number(head.headers["content-length"])).toBe(big.bytes.length);
    const start = 9 * MiB - 10;
    const ranged = await fetchRaw(blobUrl(mirror, big.digest), {
      headers: { range: `bytes=${start}-${start + 99}` },
    });
    expect(ranged.status).toBe(206);
    expect(ranged.headers["content-range"]).toBe(`bytes ${start}-${start + 99}/${big.bytes.length}`);
    expect(ranged.body.equals(big.bytes.subarray(start, start + 100))).toBe(true);
    expect(await blobGets(big.digest)).toBe(1);
  });

  it("keeps a manifest in the bucket with its media type", async () => {
    const res = await fetchRaw(`${mirror.url}/v2/team/s3/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
    expect(res.status).toBe(200);
    expect(res.body.equals(image.manifest)).toBe(true);
    const held = await bucketHolds();
    expect(held.objects.get(keyOf(image.digest))).toBe(image.manifest.length);
    expect(held.objects.has(`${PREFIX}manifests/sha256/${image.digest.slice(7)}.json`)).toBe(true);
  });

  for (const [what, layer, fault] of [
    ["corrupt", corrupted, { kind: "corrupt" }],
    ["truncated", truncated, { kind: "truncate", afterBytes: 10 * MiB }],
  ] as const) {
    it(`commits nothing of a ${what} upstream body: no object, no upload, whatever parts were sent`, async () => {
      relay.setFault(fault);
      try {
        const res = await fetchRaw(blobUrl(mirror, layer.digest));
        // The client never gets the whole blob: a broken transfer (or an error before the body).
        expect(res.broken !== undefined || res.status >= 500).toBe(true);
        expect(res.body.length).toBeLessThan(layer.bytes.length);
      } finally {
        relay.setFault(null);
      }
      await fillsSettled(mirror);
      const held = await bucketHolds();
      expect(held.objects.has(keyOf(layer.digest))).toBe(false);
      expect(held.uploads).toEqual([]);
      expect(await mirror.mirror.blobStore.size(layer.digest)).toBeUndefined();
    });
  }

  it("finds its content in the bucket after a restart: the local directory holds none of it", async () => {
    await mirror.stop();
    expect(existsSync(join(dataDir, "blobs"))).toBe(false);
    mirror = await startMirror();
    // Counted from here: the start-up check's GET /v2/ is not a request for content.
    await registry.sync();
    const upstreamBefore = registry.requests().length;
    expect(mirror.mirror.blobStore.index.has(big.digest)).toBe(true); // listed from the bucket at start
    const res = await fetchRaw(blobUrl(mirror, big.digest));
    expect(res.status).toBe(200);
    expect(sha256(res.body)).toBe(big.digest);
    const manifest = await fetchRaw(`${mirror.url}/v2/team/s3/manifests/${image.digest}`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(manifest.status).toBe(200);
    expect(manifest.headers["content-type"]).toBe(image.mediaType);
    await registry.sync();
    expect(registry.requests().slice(upstreamBefore), "upstream requests after the restart").toEqual([]);
  });
});

describe("storage.s3.redirect", () => {
  it("a hit: 307 to a presigned GET (Range too); streamed where credentials follow, and to export", async () => {
    const ownDir = await mkdtemp(join(tmpdir(), "mirror-s3-redirect-"));
    teardown.add("redirect data dir", () => rm(ownDir, { recursive: true, force: true }));
    const redirecting = await startTestMirror({
      dataDir: ownDir,
      upstreams: { "docker.io": { url: relay.url, default: true } },
      extra: {
        storage: { s3: s3Settings({ prefix: "redirect/", redirect: true }) },
        admin: { token: ADMIN_TOKEN },
      },
    });
    teardown.add("redirecting mirror", () => redirecting.stop());
    const cold = await fetchRaw(blobUrl(redirecting, big.digest)); // a miss is streamed as it downloads
    expect(cold.status).toBe(200);
    expect(sha256(cold.body)).toBe(big.digest);
    await fillsSettled(redirecting);

    const downloaded = await blobGets(big.digest);
    const warm = await fetchRaw(blobUrl(redirecting, big.digest));
    expect(warm.status).toBe(307);
    expect(warm.headers["x-mirror-cache"]).toBe("hit");
    const location = new URL(String(warm.headers.location));
    expect(location.origin).toBe(s3.endpoint); // the object store itself, not the mirror
    expect(location.pathname).toBe(`/${BUCKET}/redirect/blobs/sha256/${big.digest.slice(7)}`);
    expect(Number(location.searchParams.get("X-Amz-Expires"))).toBeLessThanOrEqual(600);
    const direct = await fetchRaw(location.href); // no credentials: the signature is the permission
    expect(direct.status).toBe(200);
    expect(sha256(direct.body)).toBe(big.digest);
    const ranged = await fetchRaw(location.href, { headers: { range: "bytes=100-199" } });
    expect(ranged.status).toBe(206);
    expect(ranged.body.equals(big.bytes.subarray(100, 200))).toBe(true);
    // HEAD is still answered by the mirror.
    const head = await fetchRaw(blobUrl(redirecting, big.digest), { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(Number(head.headers["content-length"])).toBe(big.bytes.length);

    // The object store refuses a presigned GET that comes with an Authorization header...
    const withCredentials = await fetchRaw(location.href, { headers: { authorization: "Basic dXNlcjpwdw==" } });
    expect(withCredentials.status).toBe(400);
    // ...which a client that authenticated to the mirror may send along to the same host name (Go's HTTP client
    // keeps it for the same host or a subdomain; recent releases ignore the port): it gets the bytes from the mirror.
    const authorized = await fetchRaw(blobUrl(redirecting, big.digest), {
      headers: { authorization: "Bearer some-client-token" },
    });
    expect(authorized.status).toBe(200);
    expect(authorized.headers["x-mirror-cache"]).toBe("hit");
    expect(sha256(authorized.body)).toBe(big.digest);
    // Reached under another host name, its credentials stay behind: redirected.
    const elsewhere = await fetchRaw(blobUrl(redirecting, big.digest), {
      headers: { authorization: "Bearer some-client-token", host: `mirror.example:${redirecting.port}` },
    });
    expect(elsewhere.status).toBe(307);
    expect(new URL(String(elsewhere.headers.location)).origin).toBe(s3.endpoint);
    expect(await blobGets(big.digest)).toBe(downloaded); // every answer above came from the bucket

    // The mirror's own readers of a hit get its bytes, never a redirect: an export bundle holds the whole blob.
    const bundle = await fetchRaw(`${redirecting.url}/admin/v1/export?reference=docker.io/team/s3:v1`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(bundle.status).toBe(200);
    const at = bundle.body.indexOf(big.bytes.subarray(0, 4096));
    expect(at).toBeGreaterThan(0);
    expect(bundle.body.subarray(at, at + big.bytes.length).equals(big.bytes)).toBe(true);
    expect(await blobGets(big.digest)).toBe(downloaded);
  });
});

describe("storage.s3.redirectEndpoint", () => {
  it("names the endpoint clients reach in the presigned URLs, signed for it, while the mirror uses its own", async () => {
    // Stands for the name clients reach the store under (a load balancer in front of the gateway).
    const publicName = teardown.track(await startRelay(s3.endpoint), "the store's public name");
    const ownDir = await mkdtemp(join(tmpdir(), "mirror-s3-redirect-endpoint-"));
    teardown.add("redirectEndpoint data dir", () => rm(ownDir, { recursive: true, force: true }));
    const redirecting = await startTestMirror({
      dataDir: ownDir,
      upstreams: { "docker.io": { url: relay.url, default: true } },
      extra: { storage: { s3: s3Settings({ prefix: "redirect/", redirect: true, redirectEndpoint: publicName.url }) } },
    });
    teardown.add("mirror with redirectEndpoint", () => redirecting.stop());
    // Its own metadata has not seen the repository: the first answer proves it at the upstream.
    expect((await fetchRaw(blobUrl(redirecting, big.digest))).status).toBe(200);
    await fillsSettled(redirecting);
    const warm = await fetchRaw(blobUrl(redirecting, big.digest));
    expect(warm.status).toBe(307);
    const location = new URL(String(warm.headers.location));
    expect(location.origin).toBe(publicName.url);
    expect(location.pathname).toBe(`/${BUCKET}/redirect/blobs/sha256/${big.digest.slice(7)}`);
    const direct = await fetchRaw(location.href);
    expect(direct.status).toBe(200);
    expect(sha256(direct.body)).toBe(big.digest);
    // The public name saw only the client's GET: the mirror's own requests went to `endpoint`.
    expect(publicName.requests.map((r) => [r.method, r.authorization, r.status])).toEqual([["GET", false, 200]]);
  });

  it("is refused without redirect: true", () => {
    expect(() =>
      parseConfig({
        listen: "127.0.0.1:0",
        storage: { path: mirror.dataDir, s3: s3Settings({ redirectEndpoint: "https://s3.example.com" }) },
      }),
    ).toThrow(/redirectEndpoint is used only with redirect: true/);
  });
});

describe("start-up probe of the object store", () => {
  const problemsWith = async (overrides: Record<string, unknown>) =>
    startUpProblems(
      parseConfig({
        listen: "127.0.0.1:0",
        storage: { path: mirror.dataDir, s3: s3Settings(overrides) },
      }),
    );

  it("passes for a bucket that exists and can be written, and leaves no probe object behind", async () => {
    expect(await problemsWith({})).toEqual([]);
    expect([...(await bucketHolds()).objects.keys()].filter((k) => k.includes("start-up-probe"))).toEqual([]);
  });

  it("names a bucket that does not exist", async () => {
    expect(await problemsWith({ bucket: "no-such-bucket" })).toEqual([
      `storage.s3.bucket no-such-bucket at ${s3.endpoint}: no such bucket`,
    ]);
  });

  it("says when the object store rejects the credentials", async () => {
    const problems = await problemsWith({ secretAccessKey: "not-the-secret-at-all-0000000000000000" });
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(/^storage\.s3\.bucket mirror at .*: the object store rejects the credentials/);
  });

  it("says when the bucket can be listed but not written with these credentials", async () => {
    const reader = await s3.createUser("reader");
    await client.send(
      new PutBucketPolicyCommand({
        Bucket: BUCKET,
        Policy: JSON.stringify({
          Version: "2012-10-17",
          Statement: [
            {
              Effect: "Allow",
              Principal: { AWS: ["arn:aws:iam:::user/reader"] },
              Action: ["s3:ListBucket"],
              Resource: [`arn:aws:s3:::${BUCKET}`],
            },
          ],
        }),
      }),
    );
    expect(await problemsWith({ accessKeyId: reader.accessKeyId, secretAccessKey: reader.secretAccessKey })).toEqual([
      `storage.s3.bucket mirror at ${s3.endpoint}: not writable: access denied for these credentials`,
    ]);
  });
});
