import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, open, readdir, rm, symlink, truncate, writeFile, type FileHandle } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ContentMismatchError, putContent } from "../../../src/storage/content-store.ts";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import { writeAt } from "../../../src/storage/temp-file-write.ts";

const dirs: string[] = [];
const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

async function freshStore(): Promise<BlobStore> {
  const dir = await mkdtemp(join(tmpdir(), "store-"));
  dirs.push(dir);
  const store = new BlobStore(dir);
  await store.init();
  return store;
}

async function waitFor(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !condition(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(condition()).toBe(true);
}

afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

describe("BlobStore", () => {
  it("deletes temp files a previous process left behind, and only those", async () => {
    const dir = await mkdtemp(join(tmpdir(), "store-"));
    dirs.push(dir);
    const bytes = Buffer.from("hello");
    const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
    const first = new BlobStore(dir);
    await first.init();
    await putContent(first, digest, bytes);
    await mkdir(join(dir, "tmp"), { recursive: true });
    await writeFile(join(dir, "tmp", "deadbeef.123"), "partial");
    const second = new BlobStore(dir);
    expect(await second.init()).toMatchObject({ removedTempFiles: 1, objects: 1, bytes: 5 });
    expect(second.index.sizeOf(digest)).toBe(5);
    expect(await readdir(join(dir, "tmp"))).toEqual([]);
    expect(await second.size(digest)).toBe(5);
    const opened = await second.open(digest);
    expect(opened?.size).toBe(5);
    await opened?.close();
  });

  it("indexes at start-up the committed files only: not other names, directories or symlinks in a shard", async () => {
    const dir = await mkdtemp(join(tmpdir(), "store-"));
    dirs.push(dir);
    const first = new BlobStore(dir);
    await first.init();
    const kept = Buffer.from("kept");
    await putContent(first, digestOf(kept), kept);
    const hex = digestOf(kept).slice("sha256:".length);
    const shard = join(dir, "blobs", "sha256", hex.slice(0, 2));
    const other = "ab".repeat(32);
    // A symlink named like a digest (to the committed file), a directory so named, a name that is not one.
    await symlink(join(shard, hex), join(shard, other));
    await mkdir(join(shard, "cd".repeat(32)));
    await writeFile(join(shard, `${"ef".repeat(32)}.part`), "stray");
    await writeFile(join(shard, "EF".repeat(32)), "upper case");
    const second = new BlobStore(dir);
    expect(await second.init()).toMatchObject({ objects: 1, bytes: kept.length });
    expect(second.index.sizeOf(digestOf(kept))).toBe(kept.length);
    expect(second.index.has(`sha256:${other}`)).toBe(false);
  });

  it("commits only a temp file that holds exactly the verified size, and deletes one that does not", async () => {
    const store = await freshStore();
    const bytes = Buffer.from("verified content");
    const digest = digestOf(bytes);
    const writer = await store.createWriter(digest, { expectedSize: bytes.length });
    await writer.write([bytes]);
    // What a write that stored less than it reported leaves: the verified bytes counted, fewer of them on disk.
    const [temp] = await store.tempFiles();
    await truncate(join(store.tempDir, temp!), 10);
    await expect(writer.commit()).rejects.toThrow(/holds 10 bytes, not the 16 that were verified/);
    await writer.close();
    expect(await store.size(digest)).toBeUndefined();
    expect(store.index.has(digest)).toBe(false);
    expect(await store.tempFiles()).toEqual([]);
  });

  it("hashes large writes in the worker, reading back the file: bytes changed on disk behind the writer fail the commit", async () => {
    const store = await freshStore();
    const MiB = 1024 * 1024;
    const bytes = randomBytes(9 * MiB - 1); // at least 8 MiB: hashed by the worker, from the temp file
    const writer = await store.createWriter(digestOf(bytes), { expectedSize: bytes.length });
    // The worker is told of progress every 4 MiB: after these writes it may read up to 5 MiB, and no further
    // until the commit asks for the rest. A byte beyond that, changed on disk, is what it will hash.
    await writer.write([bytes.subarray(0, 5 * MiB)]);
    await writer.write([bytes.subarray(5 * MiB)]);
    const [temp] = await store.tempFiles();
    const handle = await open(join(store.tempDir, temp!), "r+");
    await handle.write(Buffer.from([bytes[8 * MiB]! ^ 0xff]), 0, 1, 8 * MiB);
    await handle.close();
    await expect(writer.commit()).rejects.toBeInstanceOf(ContentMismatchError);
    await writer.close();
    expect(await store.size(digestOf(bytes))).toBeUndefined();
    expect(await store.tempFiles()).toEqual([]);
  });

  it("opens committed content at the size its index holds: a file cut short behind its back fails the read, one not indexed is measured", async () => {
    const store = await freshStore();
    const bytes = randomBytes(64 * 1024);
    const digest = digestOf(bytes);
    await putContent(store, digest, bytes);
    // Damaged on disk behind the store's back: the index still holds the committed size.
    await truncate(store.pathOf(digest), 1000);
    const opened = await store.open(digest);
    expect(opened?.size).toBe(bytes.length);
    const received: Buffer[] = [];
    const reading = (async () => {
      for await (const chunk of opened!.read()) received.push(chunk as Buffer);
    })();
    // Never a complete answer with fewer bytes than the length announced.
    await expect(reading).rejects.toThrow(/file ended at 1000/);
    expect(Buffer.concat(received)).toEqual(bytes.subarray(0, 1000));
    await waitFor(() => !store.inUse(digest)); // the failed read released its handle
    // Content in the store that the index does not hold is measured (fstat), and indexed at that size.
    store.index.remove(digest);
    const measured = await store.open(digest);
    expect(measured?.size).toBe(1000);
    expect(store.index.sizeOf(digest)).toBe(1000);
    await measured?.close();
    // Deleted: not served, whatever was opened before.
    await store.delete(digest);
    expect(await store.open(digest)).toBeUndefined();
  });

  it("places content by digest hex only", () => {
    const store = new BlobStore("/cache");
    expect(store.pathOf(`sha256:${"ab".repeat(32)}`)).toBe(`/cache/blobs/sha256/ab/${"ab".repeat(32)}`);
    expect(() => store.pathOf("sha256:../../x")).toThrow();
  });
});

describe("writeAt", () => {
  /**
   * A file handle whose writes store fewer bytes than they are given, as write(2) may on a nearly full disk or
   * at a file-size limit: `writev` at most `limits.writev` bytes, each `write` at most `limits.write`.
   */
  function shortWritingFile(limits: { writev: number; write: number }): { handle: FileHandle; bytes: () => Buffer } {
    let file = Buffer.alloc(0);
    const store = (data: Uint8Array, position: number, limit: number): number => {
      const n = Math.min(data.length, limit);
      const grown = Buffer.alloc(Math.max(file.length, position + n));
      file.copy(grown);
      grown.set(data.subarray(0, n), position);
      file = grown;
      return n;
    };
    const handle = {
      writev: async (chunks: Uint8Array[], position: number) => ({
        bytesWritten: store(Buffer.concat(chunks), position, limits.writev),
        buffers: chunks,
      }),
      write: async (buffer: Uint8Array, offset: number, length: number, position: number) => ({
        bytesWritten: store(buffer.subarray(offset, offset + length), position, limits.write),
        buffer,
      }),
    };
    return { handle: handle as unknown as FileHandle, bytes: () => file };
  }

  it("writes every byte, in order, at the position given, when each write stores only part of what it is given", async () => {
    const file = shortWritingFile({ writev: 15, write: 4 }); // writev stops inside the second chunk
    await writeAt(
      file.handle,
      [Buffer.from("first chunk "), Buffer.from("second chunk "), Buffer.from(""), Buffer.from("third")],
      5,
    );
    expect(file.bytes().length).toBe(5 + 30);
    expect(file.bytes().subarray(5).toString()).toBe("first chunk second chunk third");
  });

  it("fails when a write stores nothing, rather than looping", async () => {
    const file = shortWritingFile({ writev: 3, write: 0 });
    await expect(writeAt(file.handle, [Buffer.from("abcd"), Buffer.from("ef")], 10)).rejects.toThrow(
      /no byte could be written at offset 13/,
    );
  });
});
