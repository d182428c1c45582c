// The one conformance suite every ContentStore implementation runs (src/storage/content-store.ts): the
// filesystem store today, an object store next. What callers rely on is pinned here once: content becomes visible
// only through a writer's verified commit, a write can be followed while it goes on, a reservation is released
// only once the index counts the bytes, deletes leave open readers whole, and a restart finds what was committed.
// A refused or abandoned write leaves nothing at once, however much of it was already stored (an object store
// holds it as an unfinished upload: `tempFiles()` asks the store, not the writer), and nothing a restart finds.
// After every test the store must hold no unfinished write (`tempFiles()`), and cleanup removes what it made.
import { createHash, randomBytes } from "node:crypto";
import type { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  ContentMismatchError,
  putContent,
  type ContentStore,
  type WriteReservation,
} from "../../src/storage/content-store.ts";

export interface ContentStoreFixture {
  store: ContentStore;
  /** A new store over the same content, initialised (what a restarted process sees). */
  reopen(): Promise<ContentStore>;
  /** Releases what the factory made. */
  cleanup(): Promise<void>;
}

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** A reservation that records what it is told, and what `observe` said each time it was released. */
function watchedReservation(observe: () => unknown): WriteReservation & { told: number[]; releasedWith: unknown[] } {
  const r = {
    told: [] as number[],
    releasedWith: [] as unknown[],
    wrote: (n: number) => void r.told.push(n),
    release: () => void r.releasedWith.push(observe()),
  };
  return r;
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

async function until(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(check(), what).toBe(true);
}

export function describeContentStore(name: string, factory: () => Promise<ContentStoreFixture>): void {
  describe(`ContentStore conformance: ${name}`, () => {
    let fixture: ContentStoreFixture | undefined;
    let store: ContentStore;

    beforeEach(async () => {
      fixture = await factory();
      store = fixture.store;
    });

    afterEach(async () => {
      const current = fixture;
      fixture = undefined;
      if (current === undefined) return;
      let leftovers: string[];
      try {
        leftovers = await current.store.tempFiles();
      } finally {
        await current.cleanup();
      }
      expect(leftovers, "writes left neither committed nor discarded").toEqual([]);
    });

    for (const [what, size, announced] of [
      ["small, length announced", 100_000, true],
      ["large, length announced", 9 * 1024 * 1024, true],
      ["large, length not announced", 9 * 1024 * 1024 + 1, false],
    ] as const) {
      it(`commits verified content, readable while written, visible only from the commit (${what})`, async () => {
        const bytes = randomBytes(size);
        const digest = digestOf(bytes);
        const commits: Array<[string, number]> = [];
        store.onCommit((d, n) => commits.push([d, n]));
        const reservation = watchedReservation(() => store.index.sizeOf(digest));
        const writer = await store.createWriter(digest, { expectedSize: announced ? size : undefined, reservation });
        const half = Math.floor(size / 2);
        await writer.write([bytes.subarray(0, half)]);
        const head = Buffer.alloc(10);
        expect(await writer.readAt(head, 10, 5)).toBe(10);
        expect(head.equals(bytes.subarray(5, 15))).toBe(true);
        await writer.write([bytes.subarray(half, half + 7), bytes.subarray(half + 7)]);
        expect(writer.written).toBe(size);
        expect(reservation.told.at(-1)).toBe(size);
        expect(await store.size(digest)).toBeUndefined();
        expect(await store.open(digest)).toBeUndefined();
        await writer.commit();
        expect(reservation.releasedWith).toEqual([size]); // released once, with the bytes in the index already
        expect(commits).toEqual([[digest, size]]);
        await writer.close();
        expect(await store.size(digest)).toBe(size);
        const stored = (await store.open(digest))!;
        expect(stored.size).toBe(size);
        expect((await readAll(stored.read({ start: 1000, end: 1999 }))).equals(bytes.subarray(1000, 2000))).toBe(true);
        expect((await (await store.open(digest))!.bytes()).equals(bytes)).toBe(true);
      });

      it(`refuses content that is not what its digest names, and keeps nothing (${what})`, async () => {
        const bytes = randomBytes(size);
        const wrong = Buffer.from(bytes);
        wrong[size - 1] = wrong[size - 1]! ^ 0xff;
        const reservation = watchedReservation(() => "released");
        const writer = await store.createWriter(digestOf(bytes), {
          expectedSize: announced ? size : undefined,
          reservation,
        });
        await writer.write([wrong]);
        const failure = writer.commit();
        await expect(failure).rejects.toBeInstanceOf(ContentMismatchError);
        await expect(failure).rejects.toMatchObject({ size, actualDigest: digestOf(wrong) });
        expect(reservation.releasedWith).toEqual(["released"]);
        expect(await store.tempFiles(), "nothing of the refused write is left, before close too").toEqual([]);
        await writer.close();
        expect(await store.size(digestOf(bytes))).toBeUndefined();
        expect(store.index.has(digestOf(bytes))).toBe(false);
        const restarted = await fixture!.reopen();
        expect(await restarted.size(digestOf(bytes))).toBeUndefined();
        expect(restarted.index.objects).toBe(0);
      });
    }

    it("refuses content of another length than announced, whatever it hashes to", async () => {
      const bytes = Buffer.from("twelve bytes");
      const writer = await store.createWriter(digestOf(bytes), { expectedSize: 13 });
      await writer.write([bytes]);
      await expect(writer.verify()).rejects.toMatchObject({ size: 12, expectedSize: 13, actualDigest: undefined });
      await expect(writer.commit()).rejects.toBeInstanceOf(Error);
      await writer.close();
      expect(await store.size(digestOf(bytes))).toBeUndefined();
    });

    it("verifies without committing: the content stays readable until close, and is never visible", async () => {
      const bytes = randomBytes(1000);
      const writer = await store.createWriter(digestOf(bytes));
      await writer.write([bytes]);
      await writer.verify();
      await writer.abort();
      expect(await store.tempFiles()).toEqual([]); // discarded at once...
      const back = Buffer.alloc(1000);
      expect(await writer.readAt(back, 1000, 0)).toBe(1000); // ...but still readable by whoever follows it
      expect(back.equals(bytes)).toBe(true);
      await expect(writer.commit()).rejects.toThrow();
      await writer.close();
      expect(await store.size(digestOf(bytes))).toBeUndefined();
    });

    it("discards what was written when a writer is closed uncommitted, and releases its reservation", async () => {
      const bytes = randomBytes(1000);
      const reservation = watchedReservation(() => "released");
      const writer = await store.createWriter(digestOf(bytes), { expectedSize: 1000, reservation });
      await writer.write([bytes.subarray(0, 500)]);
      await writer.close();
      expect(reservation.releasedWith).toEqual(["released"]);
      expect(await store.size(digestOf(bytes))).toBeUndefined();
    });

    it("discards a large write closed before its commit, whatever of it was already stored", async () => {
      const bytes = randomBytes(11 * 1024 * 1024);
      const writer = await store.createWriter(digestOf(bytes), { expectedSize: bytes.length });
      for (let at = 0; at < bytes.length; at += 1024 * 1024) await writer.write([bytes.subarray(at, at + 1024 * 1024)]);
      await writer.close();
      expect(await store.tempFiles()).toEqual([]);
      expect(await store.size(digestOf(bytes))).toBeUndefined();
      const restarted = await fixture!.reopen();
      expect(restarted.index.objects).toBe(0);
      expect(await restarted.size(digestOf(bytes))).toBeUndefined();
    });

    it("commits the same content from two writers at once, counted once", async () => {
      const bytes = randomBytes(50_000);
      const digest = digestOf(bytes);
      await Promise.all([putContent(store, digest, bytes), putContent(store, digest, bytes)]);
      expect(await store.size(digest)).toBe(50_000);
      expect(store.index.bytes).toBe(50_000);
    });

    it("deletes content whole; a reader that opened it first keeps every byte", async () => {
      const bytes = randomBytes(300_000);
      const digest = digestOf(bytes);
      await putContent(store, digest, bytes);
      const deleted: string[] = [];
      store.onDelete((d) => deleted.push(d));
      const reader = (await store.open(digest))!;
      expect(store.inUse(digest)).toBe(true);
      await store.delete(digest);
      expect(deleted).toEqual([digest]);
      expect(store.index.has(digest)).toBe(false);
      expect(await store.size(digest)).toBeUndefined();
      expect(await store.open(digest)).toBeUndefined();
      expect((await readAll(reader.read())).equals(bytes)).toBe(true);
      await until(() => !store.inUse(digest), "the reader to be released at its end");
    });

    it("an open racing a delete yields nothing or every byte, never a reader that breaks", async () => {
      for (let round = 0; round < 5; round++) {
        const bytes = randomBytes(200_000);
        const digest = digestOf(bytes);
        await putContent(store, digest, bytes);
        const [reader] = await Promise.all([store.open(digest), store.delete(digest)]);
        if (reader) expect((await readAll(reader.read())).equals(bytes)).toBe(true);
        expect(await store.size(digest)).toBeUndefined();
        await until(() => !store.inUse(digest), "the reader to be released");
      }
    });

    it("is found again after a restart: every committed object, none of the unfinished writes", async () => {
      const kept = [randomBytes(1000), randomBytes(2000)];
      for (const bytes of kept) await putContent(store, digestOf(bytes), bytes);
      const unfinished = await store.createWriter(digestOf(Buffer.from("never committed")));
      await unfinished.write([Buffer.from("never")]);
      const restarted = await fixture!.reopen();
      expect(restarted.index.objects).toBe(2);
      expect(restarted.index.bytes).toBe(3000);
      for (const bytes of kept) expect(await restarted.size(digestOf(bytes))).toBe(bytes.length);
      expect(await restarted.tempFiles()).toEqual([]);
      await unfinished.close();
    });
  });
}
