// The S3 harness (harness/s3.ts) against the AWS SDK the fleet work will use: a bucket, a small object, a multipart
// upload that stays invisible until completed, an aborted one that leaves nothing, Range reads, listing of
// unfinished uploads (what start-up clean-up relies on), and credentials it must refuse.
import { createHash, randomBytes } from "node:crypto";
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startS3, type S3Server } from "../harness/s3.ts";

let s3: S3Server;
let client: S3Client;
const BUCKET = "selftest";
const MiB = 2 ** 20;

function clientFor(server: S3Server, secret = server.secretAccessKey): S3Client {
  return new S3Client({
    endpoint: server.endpoint,
    region: server.region,
    forcePathStyle: true,
    credentials: { accessKeyId: server.accessKeyId, secretAccessKey: secret },
    // Trailing CRC32 checksums (the SDK's default since 3.729) are not what every S3-compatible server accepts.
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
}

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

beforeAll(async () => {
  s3 = await startS3();
  client = clientFor(s3);
  await client.send(new CreateBucketCommand({ Bucket: BUCKET }));
}, 180_000);
afterAll(async () => {
  client?.destroy();
  await s3?.dispose();
}, 120_000);

describe("S3 harness (Ceph RADOS Gateway)", () => {
  it("listens on loopback and stores and reads back an object, whole and by Range", async () => {
    expect(new URL(s3.endpoint).hostname).toBe("127.0.0.1");
    const body = randomBytes(300_000);
    await client.send(new PutObjectCommand({ Bucket: BUCKET, Key: "small", Body: body }));
    const head = await client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: "small" }));
    expect(head.ContentLength).toBe(body.length);
    const whole = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: "small" }));
    expect(sha256(await whole.Body!.transformToByteArray())).toBe(sha256(body));
    const part = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: "small", Range: "bytes=1000-1999" }));
    expect(Buffer.from(await part.Body!.transformToByteArray()).equals(body.subarray(1000, 2000))).toBe(true);
  });

  it("keeps a multipart upload invisible until it is completed, and an aborted one leaves nothing", async () => {
    const parts = [randomBytes(5 * MiB), randomBytes(5 * MiB), randomBytes(MiB)];
    const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: "big" }));
    const etags: string[] = [];
    for (const [i, bytes] of parts.entries()) {
      const res = await client.send(
        new UploadPartCommand({ Bucket: BUCKET, Key: "big", UploadId, PartNumber: i + 1, Body: bytes }),
      );
      etags.push(res.ETag!);
    }
    const listed = await client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: "big" }));
    expect(listed.KeyCount ?? 0).toBe(0); // every part uploaded, and still nothing visible
    const pending = await client.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: "big" }));
    expect(pending.Uploads?.map((u) => u.UploadId)).toEqual([UploadId]);
    await client.send(
      new CompleteMultipartUploadCommand({
        Bucket: BUCKET,
        Key: "big",
        UploadId,
        MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
      }),
    );
    const got = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: "big" }));
    expect(sha256(await got.Body!.transformToByteArray())).toBe(sha256(Buffer.concat(parts)));

    const aborted = await client.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: "dropped" }));
    await client.send(
      new UploadPartCommand({
        Bucket: BUCKET,
        Key: "dropped",
        UploadId: aborted.UploadId,
        PartNumber: 1,
        Body: parts[0],
      }),
    );
    await client.send(new AbortMultipartUploadCommand({ Bucket: BUCKET, Key: "dropped", UploadId: aborted.UploadId }));
    const after = await client.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: "dropped" }));
    expect(after.Uploads ?? []).toEqual([]);
    await expect(client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: "dropped" }))).rejects.toMatchObject({
      $metadata: { httpStatusCode: 404 },
    });
  });

  it("refuses a request signed with the wrong secret", async () => {
    const wrong = clientFor(s3, "not-the-secret-at-all-0000000000000000");
    try {
      await expect(wrong.send(new HeadObjectCommand({ Bucket: BUCKET, Key: "small" }))).rejects.toMatchObject({
        $metadata: { httpStatusCode: 403 },
      });
    } finally {
      wrong.destroy();
    }
  });
});
