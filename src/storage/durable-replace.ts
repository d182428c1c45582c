/**
 * Replacing a small file so that a crash or power cut leaves either the old content or the new, whole: the new
 * content is written to a temp file and fsynced before it is renamed over the old one, and the directory is
 * fsynced after the rename (without that, the rename itself may not survive a power cut). Used for the pin lists,
 * the manifest media-type sidecars, and (its directory sync) the metadata journal's compaction.
 *
 * A temp file has a name of its own for every replace, so concurrent replaces of one file never share one: each
 * rename is whole, and the last one wins. A crash between the write and the rename leaves the temp file behind;
 * a caller that wants those swept names a `tempDir` it empties at start (it must be on the same filesystem).
 */
import { randomBytes } from "node:crypto";
import { mkdir, open, rename, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

export async function replaceFileDurably(
  path: string,
  data: string | Uint8Array,
  opts: { tempDir?: string } = {},
): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  const temp = join(opts.tempDir ?? dir, `${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
  try {
    await writeFile(temp, data, { flush: true }); // flush: fsync before the file is closed
    await rename(temp, path);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  await syncDirectory(dir);
}

/** Makes a rename in `dir` durable: without it a power cut can bring back the old file. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
