// The S3 content store against the shared suite, on a real S3 server (harness/s3.ts: Ceph RADOS Gateway), one
// server for the file and one key prefix per test. Then what only an object store shows, asked of the server
// itself with the SDK: a large write is a multipart upload on the final key, invisible until verified and
// completed; a refused one leaves no object and no upload; uploads a crashed process left are aborted at start.
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { putContent, StoreUnavailableError } from "../../src/storage/content-store.ts";
import { ManifestStore } from "../../src/storage/manifest-store.ts";
import { createS3Client, S3ContentStore, S3MediaTypes } from "../../src/storage/s3-content-store.ts";
import { startRelay } from "../harness/relay.ts";
import { startS3, type S3Server } from "../harness/s3.ts";
import { s3Access } from "../harness/s3-bucket.ts";
import { describeContentStore } from "./content-store.ts";

const BUCKET = "conformance";
const MiB = 1024 * 1024;
let s3: S3Server;
let client: S3Client;

beforeAll(async () => {
  s3 = await startS3();
  client = await createS3Client(s3Access(s3));
  await client.send(new CreateBucketCommand({ Bucket: BUCKET }));
}, 180_000);
afterAll(async () => {
  client?.destroy();
  await s3?.dispose();
}, 120_000);

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** Every object key and every multipart upload under `prefix`, as the server lists them. */
async function serverHolds(prefix: string): Promise<{ objects: Array<[string, number]>; uploads: string[] }> {
  const objects = await client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix }));
  const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: prefix }));
  return {
    objects: (objects.Contents ?? []).map((o) => [o.Key!.slice(prefix.length), o.Size!]),
    uploads: (uploads.Uploads ?? []).map((u) => u.Key!.slice(prefix.length)),
  };
}

async function emptyPrefix(prefix: string): Promise<void> {
  const held = await client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix }));
  for (const o of held.Contents ?? []) await client.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: o.Key! }));
}

/** A store on its own prefix and temp dir, with 5 MiB parts (S3's smallest) so that 9 MiB is two parts. */
async function newStore(): Promise<{
  store: S3ContentStore;
  prefix: string;
  dir: string;
  again: () => S3ContentStore;
}> {
  const dir = await mkdtemp(join(tmpdir(), "s3-conformance-"));
  const prefix = `${randomUUID()}/`;
  const again = () => new S3ContentStore({ client, bucket: BUCKET, prefix, root: dir, partSize: 5 * MiB });
  const store = again();
  await store.init();
  return { store, prefix, dir, again };
}

describeContentStore("S3 (Ceph RADOS Gateway)", async () => {
  const { store, prefix, dir, again } = await newStore();
  return {
    store,
    async reopen() {
      const restarted = again();
      await restarted.init();
      return restarted;
    },
    async cleanup() {
      await emptyPrefix(prefix);
      await rm(dir, { recursive: true, force: true });
    },
  };
});

/** The S3 server behind the fault relay, and a client of the store that goes through it. */
async function behindRelay() {
  const relay = await startRelay(s3.endpoint);
  const relayed = await createS3Client(s3Access(s3, relay.url));
  return { relay, relayed };
}

describe("S3 content store, as the server sees it", () => {
  let made: Awaited<ReturnType<typeof newStore>> | undefined;
  afterEach(async () => {
    if (made === undefined) return;
    await emptyPrefix(made.prefix);
    await rm(made.dir, { recursive: true, force: true });
    made = undefined;
  });

  it("uploads a large write in parts to its final key, invisible until the commit, then one whole object", async () => {
    made = await newStore();
    const { store, prefix } = made;
    const bytes = randomBytes(12 * MiB + 123);
    const digest = digestOf(bytes);
    const key = `blobs/sha256/${digest.slice("sha256:".length)}`;
    const writer = await store.createWriter(digest, { expectedSize: bytes.length });
    for (let at = 0; at < bytes.length; at += MiB) await writer.write([bytes.subarray(at, at + MiB)]);
    // Parts go up while the write goes on: the upload exists on the final key, the object does not.
    const during = await serverHolds(prefix);
    expect(during.uploads).toEqual([key]);
    expect(during.objects).toEqual([]);
    await writer.commit();
    await writer.close();
    expect(await serverHolds(prefix)).toEqual({ objects: [[key, bytes.length]], uploads: [] });
    const head = await client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: prefix + key }));
    expect(head.ETag).toMatch(/-3"$/); // a multipart object of three parts: 5 + 5 + 2 MiB, no copy
    const back = await (await store.open(digest))!.bytes();
    expect(back.equals(bytes)).toBe(true);
  });

  it("leaves no object and no upload after refusing a large write whose parts were already sent", async () => {
    made = await newStore();
    const { store, prefix } = made;
    const bytes = randomBytes(11 * MiB);
    const wrong = Buffer.from(bytes);
    wrong[7 * MiB] = wrong[7 * MiB]! ^ 1;
    const writer = await store.createWriter(digestOf(bytes));
    await writer.write([wrong]);
    expect((await serverHolds(prefix)).uploads).toHaveLength(1);
    await expect(writer.commit()).rejects.toMatchObject({ actualDigest: digestOf(wrong) });
    expect(await serverHolds(prefix)).toEqual({ objects: [], uploads: [] });
    await writer.close();
  });

  it("signs every upload by its body's sha256, so the object store refuses bytes changed after the signing", async () => {
    // What the server got, as sent: each upload request's signed body sha256 against its body's real one. With
    // `corrupt`, one byte of the body is flipped after the signing, as bytes damaged on the way would be.
    const sent: Array<{ command: string; signed: string | undefined; actual: string }> = [];
    let corrupt = false;
    const recording = await createS3Client(s3Access(s3));
    recording.middlewareStack.add(
      (next, context) => (args) => {
        const request = args.request as { headers: Record<string, string | undefined>; body?: unknown };
        if (request.body instanceof Uint8Array) {
          if (corrupt) request.body[100] = request.body[100]! ^ 1;
          sent.push({
            command: context.commandName ?? "?",
            signed: request.headers["x-amz-content-sha256"],
            actual: createHash("sha256").update(request.body).digest("hex"),
          });
        }
        return next(args);
      },
      { step: "deserialize", name: "recordUploadBodies" },
    );
    const dir = await mkdtemp(join(tmpdir(), "s3-conformance-"));
    const prefix = `${randomUUID()}/`;
    const store = new S3ContentStore({ client: recording, bucket: BUCKET, prefix, root: dir, partSize: 5 * MiB });
    made = { store, prefix, dir, again: () => store };
    try {
      await store.init();
      const large = randomBytes(12 * MiB + 123);
      const small = randomBytes(3 * MiB);
      for (const bytes of [large, small]) {
        const writer = await store.createWriter(digestOf(bytes), { expectedSize: bytes.length });
        await writer.write([bytes]);
        await writer.commit();
        await writer.close();
        expect((await (await store.open(digestOf(bytes)))!.bytes()).equals(bytes)).toBe(true);
      }
      expect(sent.map((s) => s.command)).toEqual([
        "UploadPartCommand",
        "UploadPartCommand",
        "UploadPartCommand",
        "PutObjectCommand",
      ]);
      for (const { signed, actual } of sent) expect(signed).toBe(actual);

      sent.length = 0;
      corrupt = true;
      const damaged = randomBytes(6 * MiB);
      const writer = await store.createWriter(digestOf(damaged), { expectedSize: damaged.length });
      await writer.write([damaged]);
      const refused = await writer.commit().then(
        () => undefined,
        (err: unknown) => err,
      );
      await writer.close();
      expect(refused).toMatchObject({ name: "XAmzContentSHA256Mismatch" });
      expect(sent.map((s) => s.command)).toEqual(["UploadPartCommand", "UploadPartCommand"]); // 5 MiB + 1 MiB
      expect(await store.open(digestOf(damaged))).toBeUndefined();
      expect((await serverHolds(prefix)).uploads).toEqual([]);
    } finally {
      recording.destroy();
    }
  });

  it("commits each of several large writes running at once exactly as written (their parts share buffers)", async () => {
    made = await newStore();
    const { store } = made;
    const contents = [randomBytes(11 * MiB + 1), randomBytes(16 * MiB + 7), randomBytes(10 * MiB)];
    await Promise.all(
      contents.map(async (bytes) => {
        const writer = await store.createWriter(digestOf(bytes), { expectedSize: bytes.length });
        for (let at = 0; at < bytes.length; at += MiB) await writer.write([bytes.subarray(at, at + MiB)]);
        await writer.commit();
        await writer.close();
      }),
    );
    for (const bytes of contents) expect((await (await store.open(digestOf(bytes)))!.bytes()).equals(bytes)).toBe(true);
  });

  it("gives up a write whose request the object store holds unanswered (a full Ceph), leaving nothing", async () => {
    made = await newStore();
    const { prefix, dir } = made;
    // RGW creates its multipart pool at the first upload it sees, which can take seconds: one upload first.
    const warm = randomBytes(6 * MiB);
    await putContent(made.store, digestOf(warm), warm);
    // The same server behind the fault relay, which holds every request completing an upload under the prefix.
    const { relay, relayed } = await behindRelay();
    try {
      relay.setFault({ kind: "stallHeaders", match: new RegExp(`^POST /${BUCKET}/${prefix}blobs/.*uploadId=`) });
      const store = new S3ContentStore({
        client: relayed,
        bucket: BUCKET,
        prefix,
        root: dir,
        partSize: 5 * MiB,
        writeTimeoutMs: 3_000,
      });
      await store.init();
      const bytes = randomBytes(9 * MiB);
      const writer = await store.createWriter(digestOf(bytes), { expectedSize: bytes.length });
      await writer.write([bytes]);
      const started = performance.now();
      await expect(writer.commit()).rejects.toThrow(
        /CompleteMultipartUpload of sha256:\w+ not answered within 3000 ms/,
      );
      expect(performance.now() - started).toBeLessThan(30_000);
      expect(relay.requests.some((r) => r.fault === "stallHeaders")).toBe(true);
      // Nothing of it: no object, no upload (the one object is the warm-up's).
      const warmKey = `blobs/sha256/${digestOf(warm).slice("sha256:".length)}`;
      expect(await serverHolds(prefix)).toEqual({ objects: [[warmKey, warm.length]], uploads: [] });
      await writer.close();
    } finally {
      relayed.destroy();
      await relay.stop();
    }
  });

  it("gives up a read the object store holds unanswered (a stuck placement group), and never cuts a slow body", async () => {
    made = await newStore();
    const bytes = randomBytes(3 * MiB);
    const digest = digestOf(bytes);
    await putContent(made.store, digest, bytes);
    const { relay, relayed } = await behindRelay();
    try {
      const store = new S3ContentStore({
        client: relayed,
        bucket: BUCKET,
        prefix: made.prefix,
        root: made.dir,
        readTimeoutMs: 1_000,
      });
      const objectPath = new RegExp(`^(GET|HEAD) /${BUCKET}/${made.prefix}blobs/`);
      // The object's reads held unanswered: open (one GetObject) and a HEAD fail as "unavailable" after the
      // bound, so the cache answers from the upstream; the reader count is released.
      relay.setFault({ kind: "stallHeaders", match: objectPath });
      let started = performance.now();
      const opening = store.open(digest);
      await expect(opening).rejects.toBeInstanceOf(StoreUnavailableError);
      await expect(opening).rejects.toThrow(`object store did not answer GetObject of ${digest} within 1000 ms`);
      expect(performance.now() - started).toBeGreaterThanOrEqual(950);
      expect(performance.now() - started).toBeLessThan(10_000);
      expect(store.inUse(digest)).toBe(false);
      await expect(store.head(digest)).rejects.toThrow(`object store did not answer HeadObject of ${digest}`);

      // Opened while the store answered, then its range GET held: readWhenAnswered rejects the same way.
      relay.setFault(null);
      const content = (await store.open(digest))!;
      relay.setFault({ kind: "stallHeaders", match: objectPath });
      started = performance.now();
      await expect(content.readWhenAnswered!({ start: 10, end: 20 })).rejects.toThrow(
        `object store did not answer GetObject of ${digest}, bytes 10-20 within 1000 ms`,
      );
      expect(performance.now() - started).toBeLessThan(10_000);

      // The bound is on the answer only: a body that takes three times as long still arrives whole.
      relay.setFault({ kind: "throttle", bytesPerSecond: MiB, match: objectPath });
      started = performance.now();
      const slow = (await store.open(digest))!;
      const chunks: Buffer[] = [];
      for await (const chunk of slow.read()) chunks.push(chunk as Buffer);
      expect(performance.now() - started).toBeGreaterThan(2_000);
      expect(digestOf(Buffer.concat(chunks))).toBe(digest);
      expect(relay.requests.filter((r) => r.fault === "stallHeaders").length).toBeGreaterThanOrEqual(3);
    } finally {
      relayed.destroy();
      await relay.stop();
    }
  });

  it("finds and reads content with one GetObject (no HEAD first); a range with one more, by Range", async () => {
    made = await newStore();
    const bytes = randomBytes(3 * MiB + 7);
    const digest = digestOf(bytes);
    await putContent(made.store, digest, bytes);
    const counted = await countedClient();
    try {
      const reader = new S3ContentStore({
        client: counted.client,
        bucket: BUCKET,
        prefix: made.prefix,
        root: made.dir,
      });
      const whole = (await reader.open(digest))!;
      expect(whole.size).toBe(bytes.length);
      expect((await whole.bytes()).equals(bytes)).toBe(true);
      expect(counted.sent).toEqual(["GetObjectCommand"]);
      const part = (await reader.open(digest))!;
      const range = part.read({ start: 1000, end: 2 * MiB });
      const chunks: Buffer[] = [];
      for await (const chunk of range) chunks.push(chunk as Buffer);
      expect(Buffer.concat(chunks).equals(bytes.subarray(1000, 2 * MiB + 1))).toBe(true);
      expect(counted.sent).toEqual(["GetObjectCommand", "GetObjectCommand", "GetObjectCommand"]);
      expect(await reader.open(digestOf(randomBytes(10)))).toBeUndefined();
      await waitForValue(() => !reader.inUse(digest));
    } finally {
      counted.client.destroy();
    }
  });

  it("tells its pacer every byte it received from the object store, whole reads and ranges alike", async () => {
    made = await newStore();
    const bytes = randomBytes(2 * MiB + 11);
    const digest = digestOf(bytes);
    await putContent(made.store, digest, bytes);
    let received = 0;
    const reader = new S3ContentStore({
      client,
      bucket: BUCKET,
      prefix: made.prefix,
      root: made.dir,
      pacer: { received: (n) => (received += n) },
    });
    expect((await (await reader.open(digest))!.bytes()).equals(bytes)).toBe(true);
    expect(received).toBe(bytes.length);
    const part = (await reader.open(digest))!.read({ start: 5, end: 1004 });
    for await (const _ of part);
    expect(received).toBe(bytes.length + 1000);
  });

  it("aborts at start the uploads a crashed process left under its prefix, and counts them", async () => {
    made = await newStore();
    const { prefix, again } = made;
    const key = `${prefix}blobs/sha256/${"ab".repeat(32)}`;
    const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: key }));
    await client.send(
      new UploadPartCommand({ Bucket: BUCKET, Key: key, UploadId, PartNumber: 1, Body: randomBytes(5 * MiB) }),
    );
    const kept = randomBytes(1000);
    await putContent(made.store, digestOf(kept), kept);
    // A replica sharing the prefix that only aborts uploads older than its fill timeout leaves this one alone...
    const patient = new S3ContentStore({
      client,
      bucket: BUCKET,
      prefix,
      root: made.dir,
      leftoverUploadAfterMs: 3_600_000,
    });
    expect(await patient.init()).toMatchObject({ removedTempFiles: 0, objects: 1 });
    expect((await serverHolds(prefix)).uploads).toHaveLength(1);
    // ...and a single mirror restarting aborts it.
    const restarted = again();
    const found = await restarted.init();
    expect(found).toMatchObject({ removedTempFiles: 1, objects: 1, bytes: 1000 });
    expect((await serverHolds(prefix)).uploads).toEqual([]);
  });
});

/** A client of its own for one store, and the names of the commands it sent (what that store asked of S3). */
async function countedClient(): Promise<{ client: S3Client; sent: string[] }> {
  const counted = await createS3Client(s3Access(s3));
  const sent: string[] = [];
  counted.middlewareStack.add(
    (next, context) => (args) => {
      sent.push(context.commandName ?? "?");
      return next(args);
    },
    { step: "initialize" },
  );
  return { client: counted, sent };
}

const UPLOADS = new Set(["CreateMultipartUploadCommand", "UploadPartCommand", "PutObjectCommand"]);

describe("S3 content store: a write following another writer's upload of the same content (sharedWith)", () => {
  let made: Awaited<ReturnType<typeof newStore>> | undefined;
  let follower: { client: S3Client; sent: string[] } | undefined;
  afterEach(async () => {
    follower?.client.destroy();
    follower = undefined;
    if (made === undefined) return;
    await emptyPrefix(made.prefix);
    await rm(made.dir, { recursive: true, force: true });
    made = undefined;
  });

  /** A second store on the same prefix (another replica), whose S3 requests are counted. */
  async function followerStore(): Promise<S3ContentStore> {
    follower = await countedClient();
    const dir = await mkdtemp(join(tmpdir(), "s3-conformance-follower-"));
    const store = new S3ContentStore({
      client: follower.client,
      bucket: BUCKET,
      prefix: made!.prefix,
      root: dir,
      partSize: 5 * MiB,
    });
    await store.init();
    follower.sent.length = 0;
    return store;
  }

  it("uploads nothing and commits the other's object once its own bytes verified", async () => {
    made = await newStore();
    const { store, prefix } = made;
    const other = await followerStore();
    const bytes = randomBytes(12 * MiB + 5);
    const digest = digestOf(bytes);
    const key = `blobs/sha256/${digest.slice("sha256:".length)}`;
    let pendingAsked = 0;
    const writer = await other.createWriter(digest, {
      expectedSize: bytes.length,
      sharedWith: { pending: async () => (pendingAsked++, true), waitMs: 30_000 },
    });
    for (let at = 0; at < bytes.length; at += MiB) await writer.write([bytes.subarray(at, at + MiB)]);
    expect(await serverHolds(prefix)).toEqual({ objects: [], uploads: [] });
    // Its commit waits while the other may still commit, and takes the other's object when it appears.
    const committing = writer.commit();
    await waitForValue(() => pendingAsked > 0);
    await putContent(store, digest, bytes);
    await committing;
    await writer.close();
    expect(follower!.sent.filter((c) => UPLOADS.has(c) || c === "CompleteMultipartUploadCommand")).toEqual([]);
    expect(await serverHolds(prefix)).toEqual({ objects: [[key, bytes.length]], uploads: [] });
    expect(other.index.sizeOf(digest)).toBe(bytes.length);
    expect((await (await other.open(digest))!.bytes()).equals(bytes)).toBe(true);
  });

  it("uploads its own verified copy when the other ended without an object", async () => {
    made = await newStore();
    const { prefix } = made;
    const other = await followerStore();
    for (const size of [9 * MiB, 1000]) {
      const bytes = randomBytes(size);
      const digest = digestOf(bytes);
      const writer = await other.createWriter(digest, {
        expectedSize: size,
        sharedWith: { pending: async () => false, waitMs: 30_000 },
      });
      await writer.write([bytes]);
      await writer.commit();
      await writer.close();
      expect((await serverHolds(prefix)).objects).toContainEqual([`blobs/sha256/${digest.slice(7)}`, size]);
      expect((await (await other.open(digest))!.bytes()).equals(bytes)).toBe(true);
    }
    expect(follower!.sent.filter((c) => c === "CompleteMultipartUploadCommand" || c === "PutObjectCommand")).toEqual([
      "CompleteMultipartUploadCommand",
      "PutObjectCommand",
    ]);
    expect((await serverHolds(prefix)).uploads).toEqual([]);
  });

  it("commits nothing, neither its own nor the other's, when its own bytes do not verify", async () => {
    made = await newStore();
    const { store, prefix } = made;
    const other = await followerStore();
    const bytes = randomBytes(6 * MiB);
    const digest = digestOf(bytes);
    await putContent(store, digest, bytes);
    const wrong = Buffer.from(bytes);
    wrong[MiB] = wrong[MiB]! ^ 1;
    const writer = await other.createWriter(digest, {
      expectedSize: bytes.length,
      sharedWith: { pending: async () => true, waitMs: 30_000 },
    });
    await writer.write([wrong]);
    await expect(writer.commit()).rejects.toMatchObject({ actualDigest: digestOf(wrong) });
    await writer.close();
    expect(follower!.sent.filter((c) => UPLOADS.has(c) || c === "HeadObjectCommand")).toEqual([]);
    expect(other.index.has(digest)).toBe(false);
    expect((await serverHolds(prefix)).uploads).toEqual([]);
  });
});

/** Waits (bounded: 10 s) until `check` holds. */
async function waitForValue(check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 50));
  expect(check()).toBe(true);
}

describe("ManifestStore over the S3 store", () => {
  let made: Awaited<ReturnType<typeof newStore>> | undefined;
  afterEach(async () => {
    if (made === undefined) return;
    await emptyPrefix(made.prefix);
    await rm(made.dir, { recursive: true, force: true });
    made = undefined;
  });
  const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, layers: [] }));
  const digest = digestOf(manifest);
  const hex = digest.slice("sha256:".length);

  it("keeps the media type in the bucket: a restarted process (no memory copy) serves the manifest as stored", async () => {
    made = await newStore();
    const manifests = new ManifestStore(made.store, { mediaTypes: new S3MediaTypes(made.store) });
    await manifests.init();
    await manifests.put(digest, OCI_MANIFEST, manifest);
    expect((await serverHolds(made.prefix)).objects.sort()).toEqual([
      [`blobs/sha256/${hex}`, manifest.length],
      [`manifests/sha256/${hex}.json`, expect.any(Number)],
    ]);
    const restartedStore = made.again();
    await restartedStore.init();
    const restarted = new ManifestStore(restartedStore, { mediaTypes: new S3MediaTypes(restartedStore) });
    await restarted.init();
    const got = await restarted.get(digest);
    expect(got?.mediaType).toBe(OCI_MANIFEST);
    expect(got?.bytes.equals(manifest)).toBe(true);
    await restarted.forget(digest);
    await restartedStore.delete(digest);
    expect(await restarted.get(digest)).toBeUndefined();
    expect(await serverHolds(made.prefix)).toEqual({ objects: [], uploads: [] });
  });

  it("serves bytes stored as a blob (no media type recorded) to walks only, never as a manifest", async () => {
    made = await newStore();
    await putContent(made.store, digest, manifest);
    const manifests = new ManifestStore(made.store, { mediaTypes: new S3MediaTypes(made.store) });
    expect(await manifests.get(digest)).toBeUndefined();
    expect((await manifests.bytesOf(digest, 1024 * 1024))?.equals(manifest)).toBe(true);
    expect(await manifests.holdsBytes(digest)).toBe(true);
  });

  it("needs to be told where the media types go over a store other than the filesystem", async () => {
    made = await newStore();
    const store = made.store;
    expect(() => new ManifestStore(store)).toThrow(/mediaTypes/);
  });
});
