/**
 * A filesystem store filled for the tests of its start-up index (index-snapshot.test.ts, store-scan.test.ts):
 * blobs committed through the store, their recorded accesses set apart, the shard directories then left quiet.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, utimes } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import { putContent } from "../../../src/storage/content-store.ts";

export const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
export const shardOf = (digest: string) => digest.slice("sha256:".length, "sha256:".length + 2);

/**
 * A store (in a new temp directory, which `track` is given to remove) holding `count` blobs of 100 + i bytes whose
 * recorded accesses are 1 s apart, the first the oldest, an hour ago; its shard directories quiet (`quietShards`).
 */
export async function populatedStore(
  count: number,
  track: (dir: string) => void,
): Promise<{ dir: string; digests: string[] }> {
  const dir = await mkdtemp(join(tmpdir(), "populated-store-"));
  track(dir);
  const store = new BlobStore(dir);
  await store.init();
  const digests: string[] = [];
  const base = Date.now() / 1000 - 3600;
  for (let i = 0; i < count; i++) {
    const bytes = randomBytes(100 + i);
    const digest = digestOf(bytes);
    await putContent(store, digest, bytes);
    await utimes(store.pathOf(digest), base + i, base + i);
    digests.push(digest);
  }
  await quietShards(dir);
  return { dir, digests };
}

/**
 * Every shard directory last changed a minute ago: past the index snapshot's quiet time, as in a store a mirror
 * restarts over, written earlier than that.
 */
export async function quietShards(dir: string): Promise<void> {
  const root = join(dir, "blobs", "sha256");
  const past = Date.now() / 1000 - 60;
  for (const shard of await readdir(root)) await utimes(join(root, shard), past, past);
}
