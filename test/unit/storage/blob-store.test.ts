import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, truncate, writeFile, type FileHandle } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ContentMismatchError, putContent, type WriteReservation } from "../../../src/storage/content-store.ts";
import { BlobStore, writeAt } from "../../../src/storage/blob-store.ts";

const dirs: string[] = [];
const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

async function freshStore(): Promise<BlobStore> {
  const dir = await mkdtemp(join(tmpdir(), "store-"));
  dirs.push(dir);
  const store = new BlobStore(dir);
  await store.init();
  return store;
}

/** A reservation that records what it is told, and what the index held when it was released. */
function watchedReservation(observe: () => unknown): WriteReservation & { told: number[]; releasedWith: unknown[] } {
  const r = {
    told: [] as number[],
    releasedWith: [] as unknown[],
    wrote: (n: number) => void r.told.push(n),
    release: () => void r.releasedWith.push(observe()),
  };
  return r;
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

  describe("writers", () => {
    for (const [what, size] of [
      ["hashed inline", 100_000],
      ["hashed by the worker", 9 * 1024 * 1024],
    ] as const) {
      it(`commit verified content, readable meanwhile, and make it visible only then (${what})`, async () => {
        const store = await freshStore();
        const bytes = randomBytes(size);
        const digest = digestOf(bytes);
        const commits: string[] = [];
        store.onCommit((d) => commits.push(d));
        const reservation = watchedReservation(() => store.index.has(digest));
        const writer = await store.createWriter(digest, { expectedSize: size, reservation });
        const half = Math.floor(size / 2);
        await writer.write([bytes.subarray(0, half)]);
        const head = Buffer.alloc(10);
        expect(await writer.readAt(head, 10, 5)).toBe(10);
        expect(head.equals(bytes.subarray(5, 15))).toBe(true);
        await writer.write([bytes.subarray(half, half + 7), bytes.subarray(half + 7)]);
        expect(writer.written).toBe(size);
        expect(reservation.told.at(-1)).toBe(size);
        expect(await store.size(digest)).toBeUndefined(); // not visible before the commit
        await writer.commit();
        expect(reservation.releasedWith).toEqual([true]); // released once, with the bytes in the index already
        expect(commits).toEqual([digest]);
        await writer.close();
        expect((await readFile(store.pathOf(digest))).equals(bytes)).toBe(true);
        expect(store.index.sizeOf(digest)).toBe(size);
        expect(await store.tempFiles()).toEqual([]);
      });

      it(`refuse content that is not what its digest names, and keep nothing (${what})`, async () => {
        const store = await freshStore();
        const bytes = randomBytes(size);
        const wrong = Buffer.from(bytes);
        wrong[size - 1] = wrong[size - 1]! ^ 0xff;
        const reservation = watchedReservation(() => "released");
        const writer = await store.createWriter(digestOf(bytes), { reservation });
        await writer.write([wrong]);
        const failure = writer.commit();
        await expect(failure).rejects.toBeInstanceOf(ContentMismatchError);
        await expect(failure).rejects.toMatchObject({ size, actualDigest: digestOf(wrong) });
        expect(reservation.releasedWith).toEqual(["released"]);
        await writer.close();
        expect(await store.size(digestOf(bytes))).toBeUndefined();
        expect(store.index.has(digestOf(bytes))).toBe(false);
        expect(await store.tempFiles()).toEqual([]);
      });
    }

    it("refuse content of another length than expected, whatever it hashes to", async () => {
      const store = await freshStore();
      const bytes = Buffer.from("twelve bytes");
      const writer = await store.createWriter(digestOf(bytes), { expectedSize: 13 });
      await writer.write([bytes]);
      await expect(writer.verify()).rejects.toMatchObject({ size: 12, expectedSize: 13, actualDigest: undefined });
      await expect(writer.commit()).rejects.toBeInstanceOf(ContentMismatchError);
      await writer.close();
      expect(await store.size(digestOf(bytes))).toBeUndefined();
      expect(await store.tempFiles()).toEqual([]);
    });

    it("verify without committing: the content stays readable until close, and is never visible", async () => {
      const store = await freshStore();
      const bytes = randomBytes(1000);
      const writer = await store.createWriter(digestOf(bytes));
      await writer.write([bytes]);
      await writer.verify();
      await writer.abort();
      expect(await store.tempFiles()).toEqual([]); // discarded at once...
      const back = Buffer.alloc(1000);
      expect(await writer.readAt(back, 1000, 0)).toBe(1000); // ...but still readable by whoever follows it
      expect(back.equals(bytes)).toBe(true);
      await expect(writer.commit()).rejects.toThrow(/discarded/);
      await writer.close();
      expect(await store.size(digestOf(bytes))).toBeUndefined();
    });

    it("discard what was written when closed uncommitted, and release the reservation", async () => {
      const store = await freshStore();
      const bytes = randomBytes(1000);
      const reservation = watchedReservation(() => "released");
      const writer = await store.createWriter(digestOf(bytes), { expectedSize: 1000, reservation });
      await writer.write([bytes.subarray(0, 500)]);
      await writer.close();
      expect(reservation.releasedWith).toEqual(["released"]);
      expect(await store.tempFiles()).toEqual([]);
      expect(await store.size(digestOf(bytes))).toBeUndefined();
    });
  });

  it("serves committed content by range, and whole", async () => {
    const store = await freshStore();
    const bytes = randomBytes(2000);
    await putContent(store, digestOf(bytes), bytes);
    const ranged = (await store.open(digestOf(bytes)))!;
    expect(ranged.size).toBe(2000);
    const chunks: Buffer[] = [];
    for await (const chunk of ranged.read({ start: 100, end: 199 })) chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).equals(bytes.subarray(100, 200))).toBe(true);
    expect((await (await store.open(digestOf(bytes)))!.bytes()).equals(bytes)).toBe(true);
    expect(await store.open(digestOf(Buffer.from("absent")))).toBeUndefined();
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
