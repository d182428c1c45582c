// What a bucket holds, as the S3 tests check it: the objects under a prefix and the multipart uploads left open.
// The store's own layout (`<prefix>blobs/sha256/<hex>`, s3-content-store.ts) is spelt here once for the tests.
import {
  CreateBucketCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  type S3Client,
} from "@aws-sdk/client-s3";
import { createS3Client } from "../../src/storage/s3-content-store.ts";
import { startS3, type S3Server } from "./s3.ts";
import type { Teardown } from "./teardown.ts";

/**
 * Starts the test S3 server (s3.ts) and a client of it, the mirror's own (`createS3Client`: path-style, the server's
 * keys), and creates `bucket`; `teardown` stops both.
 */
export async function startS3WithBucket(
  teardown: Teardown,
  bucket: string,
): Promise<{ s3: S3Server; client: S3Client }> {
  const s3 = await startS3();
  teardown.add("s3", () => s3.dispose());
  const client = await createS3Client(s3Access(s3));
  teardown.add("s3 client", () => client.destroy());
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  return { s3, client };
}

/**
 * How a client reaches the test S3 server (path-style, its keys), at `endpoint` when something stands in front of
 * it (the fault relay): what `createS3Client` takes, and the access part of the mirror's `storage.s3`.
 */
export function s3Access(
  s3: S3Server,
  endpoint = s3.endpoint,
): { endpoint: string; region: string; forcePathStyle: true; accessKeyId: string; secretAccessKey: string } {
  return {
    endpoint,
    region: s3.region,
    forcePathStyle: true,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
  };
}

/** The mirror's `storage.s3` for `bucket` under `prefix` on the test server, with `more` settings over it. */
export function mirrorS3Settings(
  s3: S3Server,
  bucket: string,
  prefix: string,
  more: { endpoint?: string } & Record<string, unknown> = {},
): Record<string, unknown> {
  const { endpoint, ...rest } = more;
  return { ...s3Access(s3, endpoint), bucket, prefix, ...rest };
}

/** The key of a blob's object under `prefix`. */
export const blobKey = (prefix: string, digest: string): string =>
  `${prefix}blobs/sha256/${digest.slice("sha256:".length)}`;

/** Listing pages read at most (1000 keys each): far more than any test writes. */
const MAX_PAGES = 50;

/**
 * Every object under `prefix` (key → size, all pages) and the keys of the multipart uploads not completed or
 * aborted under it.
 */
export async function bucketHolds(
  client: S3Client,
  bucket: string,
  prefix: string,
): Promise<{ objects: Map<string, number>; uploads: string[] }> {
  const objects = new Map<string, number>();
  let token: string | undefined;
  for (let page = 0; page < MAX_PAGES; page++) {
    const listed = await client.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
    );
    for (const o of listed.Contents ?? []) objects.set(o.Key!, o.Size!);
    if (!listed.IsTruncated) break;
    token = listed.NextContinuationToken;
  }
  const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: prefix }));
  return { objects, uploads: (uploads.Uploads ?? []).map((u) => u.Key!) };
}
