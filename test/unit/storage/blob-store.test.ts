import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readdir, rm, writeFile, type FileHandle } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { BlobStore, writeAt } from "../../../src/storage/blob-store.ts";

const dirs: string[] = [];
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
    await first.putVerified(digest, bytes);
    await mkdir(join(dir, "tmp"), { recursive: true });
    await writeFile(join(dir, "tmp", "deadbeef.123"), "partial");
    const second = new BlobStore(dir);
    expect(await second.init()).toMatchObject({ removedTempFiles: 1, objects: 1, bytes: 5 });
    expect(second.index.sizeOf(digest)).toBe(5);
    expect(await readdir(join(dir, "tmp"))).toEqual([]);
    expect(await second.size(digest)).toBe(5);
    const opened = await second.open(digest);
    expect(opened?.size).toBe(5);
    await opened?.handle.close();
  });

  it("commits only a temp file that holds exactly the verified size, and deletes one that does not", async () => {
    const dir = await mkdtemp(join(tmpdir(), "store-"));
    dirs.push(dir);
    const store = new BlobStore(dir);
    await store.init();
    const bytes = Buffer.from("verified content");
    const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
    // What an unchecked short write leaves: the verified bytes counted, fewer of them on disk.
    const { path, handle } = await store.createTemp(digest);
    await handle.write(bytes.subarray(0, 10), 0, 10, 0);
    await handle.close();
    await expect(store.commit(path, digest, bytes.length)).rejects.toThrow(/holds 10 bytes, not the 16 that were verified/);
    expect(await store.size(digest)).toBeUndefined();
    expect(store.index.has(digest)).toBe(false);
    expect(await store.tempFiles()).toEqual([]);
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
      writev: async (chunks: Uint8Array[], position: number) => ({ bytesWritten: store(Buffer.concat(chunks), position, limits.writev), buffers: chunks }),
      write: async (buffer: Uint8Array, offset: number, length: number, position: number) => ({
        bytesWritten: store(buffer.subarray(offset, offset + length), position, limits.write),
        buffer,
      }),
    };
    return { handle: handle as unknown as FileHandle, bytes: () => file };
  }

  it("writes every byte, in order, at the position given, when each write stores only part of what it is given", async () => {
    const file = shortWritingFile({ writev: 15, write: 4 }); // writev stops inside the second chunk
    await writeAt(file.handle, [Buffer.from("first chunk "), Buffer.from("second chunk "), Buffer.from(""), Buffer.from("third")], 5);
    expect(file.bytes().length).toBe(5 + 30);
    expect(file.bytes().subarray(5).toString()).toBe("first chunk second chunk third");
  });

  it("fails when a write stores nothing, rather than looping", async () => {
    const file = shortWritingFile({ writev: 3, write: 0 });
    await expect(writeAt(file.handle, [Buffer.from("abcd"), Buffer.from("ef")], 10)).rejects.toThrow(/no byte could be written at offset 13/);
  });
});
