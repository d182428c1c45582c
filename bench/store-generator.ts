/**
 * Writes a cache directory in the blob store's layout (`blobs/sha256/<hh>/<hex>`) holding `count` tiny blobs,
 * each named by the real sha256 of its bytes, for the start-up scenario: what the mirror finds after a long life.
 */
import { createHash } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";

const CONCURRENCY = 64;

export async function generateStore(dataDir: string, count: number): Promise<void> {
  const root = join(dataDir, "blobs", "sha256");
  await Promise.all(
    Array.from({ length: 256 }, (_, i) => mkdir(join(root, i.toString(16).padStart(2, "0")), { recursive: true })),
  );
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < count; i = next++) {
      const bytes = Buffer.from(`bench blob ${i}\n`);
      const hex = createHash("sha256").update(bytes).digest("hex");
      await writeFile(join(root, hex.slice(0, 2), hex), bytes);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
}
