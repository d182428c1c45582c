/**
 * Content-addressed files on disk: `blobs/sha256/<hh>/<hex>` for blobs and manifests alike, written only through
 * a temp file in `tmp/` that is verified, fsynced and renamed into place. A file at a final path is therefore
 * always complete and verified; a crash leaves at worst a temp file, which `init()` deletes.
 *
 * Layout:
 *   <root>/blobs/sha256/ab/abcdef…   committed content
 *   <root>/tmp/<hex>.<random>        in-progress writes (never served except through their Fill)
 */
import { randomBytes } from "node:crypto";
import { mkdir, open, readdir, rename, rm, stat, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { digestHex } from "../oci/reference.ts";

export interface OpenedBlob {
  handle: FileHandle;
  size: number;
}

export class BlobStore {
  readonly root: string;
  private readonly blobsDir: string;
  private readonly tmpDir: string;

  constructor(root: string) {
    this.root = root;
    this.blobsDir = join(root, "blobs", "sha256");
    this.tmpDir = join(root, "tmp");
  }

  /** Creates the layout and deletes temp files left by a previous process (they were never verified). */
  async init(): Promise<{ removedTempFiles: number }> {
    await mkdir(this.blobsDir, { recursive: true });
    await mkdir(this.tmpDir, { recursive: true });
    const leftovers = await readdir(this.tmpDir);
    await Promise.all(leftovers.map((name) => rm(join(this.tmpDir, name), { force: true, recursive: true })));
    return { removedTempFiles: leftovers.length };
  }

  pathOf(digest: string): string {
    const hex = digestHex(digest);
    return join(this.blobsDir, hex.slice(0, 2), hex);
  }

  async size(digest: string): Promise<number | undefined> {
    try {
      return (await stat(this.pathOf(digest))).size;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /**
   * Opens committed content for reading. The open handle stays valid even if the file is later unlinked
   * (eviction), so a response that has started always completes.
   */
  async open(digest: string): Promise<OpenedBlob | undefined> {
    let handle: FileHandle;
    try {
      handle = await open(this.pathOf(digest), "r");
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
    try {
      return { handle, size: (await handle.stat()).size };
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /** A new temp file for writing `digest`, opened read-write so in-flight readers can read it through the handle. */
  async createTemp(digest: string): Promise<{ path: string; handle: FileHandle }> {
    const path = join(this.tmpDir, `${digestHex(digest)}.${randomBytes(6).toString("hex")}`);
    const handle = await open(path, "wx+");
    return { path, handle };
  }

  /**
   * Makes verified content visible. The caller has checked digest and size and fsynced the handle; rename is
   * atomic within one filesystem, which is why temp files live under the same root.
   */
  async commit(tempPath: string, digest: string): Promise<void> {
    const finalPath = this.pathOf(digest);
    await mkdir(join(finalPath, ".."), { recursive: true });
    await rename(tempPath, finalPath);
  }

  async discard(tempPath: string): Promise<void> {
    await rm(tempPath, { force: true });
  }

  /** Writes small verified content (manifests) in one go, through the same temp-then-rename path. */
  async putVerified(digest: string, bytes: Uint8Array): Promise<void> {
    const { path, handle } = await this.createTemp(digest);
    try {
      await handle.writeFile(bytes);
      await handle.sync();
    } catch (err) {
      await handle.close();
      await this.discard(path);
      throw err;
    }
    await handle.close();
    await this.commit(path, digest);
  }

  /** Names of temp files present now (tests assert none are left behind). */
  async tempFiles(): Promise<string[]> {
    return readdir(this.tmpDir);
  }
}

export function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === "ENOENT";
}
