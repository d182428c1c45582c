import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, type Readable } from "node:stream";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BlobStore } from "../../../src/cache/blob-store.ts";
import { FillCoordinator } from "../../../src/cache/fill-coordinator.ts";
import { FileHasher } from "../../../src/cache/hash-worker.ts";

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

async function collect(stream: Readable): Promise<{ bytes: Buffer; error?: Error }> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    return { bytes: Buffer.concat(chunks) };
  } catch (error) {
    return { bytes: Buffer.concat(chunks), error: error as Error };
  }
}

describe("FileHasher (worker thread)", () => {
  let dir: string;
  let hasher: FileHasher;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "hash-worker-"));
    hasher = new FileHasher();
  });
  afterEach(async () => {
    await hasher.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("hashes a file as it grows, and concurrent jobs independently", async () => {
    const a = randomBytes(9 * 1024 * 1024 + 5);
    const b = randomBytes(3 * 1024 * 1024);
    const fa = await open(join(dir, "a"), "w+");
    const fb = await open(join(dir, "b"), "w+");
    const ha = hasher.open(join(dir, "a"));
    const hb = hasher.open(join(dir, "b"));
    for (let at = 0; at < a.length; at += 1024 * 1024) {
      const part = a.subarray(at, at + 1024 * 1024);
      await fa.write(part, 0, part.length, at);
      ha.extend(at + part.length);
    }
    await fb.write(b, 0, b.length, 0);
    expect(await hb.finish(b.length)).toBe(digestOf(b));
    expect(await ha.finish(a.length)).toBe(digestOf(a));
    await fa.close();
    await fb.close();
  });

  it("fails the jobs of a worker that went away, and starts a new one for the next job", async () => {
    const bytes = randomBytes(1000);
    await writeFile(join(dir, "f"), bytes);
    const orphan = hasher.open(join(dir, "f"));
    await hasher.close();
    await expect(orphan.finish(bytes.length)).rejects.toThrow();
    expect(await hasher.open(join(dir, "f")).finish(bytes.length)).toBe(digestOf(bytes));
  });

  it("fails a file shorter than its announced size, and an aborted job never answers", async () => {
    await writeFile(join(dir, "short"), Buffer.alloc(100));
    await expect(hasher.open(join(dir, "short")).finish(101)).rejects.toThrow(/shorter/);
    const job = hasher.open(join(dir, "short"));
    job.abort();
    await expect(job.finish(100)).rejects.toThrow();
  });
});

describe("FillCoordinator with worker hashing (downloads of 8 MiB and more)", () => {
  let dir: string;
  let store: BlobStore;
  let fills: FillCoordinator;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "fill-large-"));
    store = new BlobStore(dir);
    await store.init();
    fills = new FillCoordinator(store, { timeoutMs: 20_000, log: pino({ level: "silent" }), committedGraceMs: 50 });
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  const content = randomBytes(12 * 1024 * 1024 + 3);

  for (const announce of [content.length, undefined]) {
    it(`commits verified content (size ${announce === undefined ? "not announced" : "announced"})`, async () => {
      const body = new PassThrough();
      const fill = fills.start(digestOf(content), { upstream: "u", repo: "r" }, async () => ({ size: announce, body }));
      await fill.ready;
      const reader = collect(fill.createReader(0, undefined));
      for (let at = 0; at < content.length; at += 1024 * 1024) body.write(content.subarray(at, at + 1024 * 1024));
      body.end();
      await fill.done;
      const got = await reader;
      expect(got.error).toBeUndefined();
      expect(got.bytes.equals(content)).toBe(true);
      expect((await readFile(store.pathOf(digestOf(content)))).equals(content)).toBe(true);
      expect(await store.tempFiles()).toEqual([]);
    });
  }

  it("commits nothing and never delivers the last byte when the content does not match", async () => {
    const wrong = Buffer.from(content);
    wrong[wrong.length - 100] = wrong[wrong.length - 100]! ^ 0xff;
    const body = new PassThrough();
    const fill = fills.start(digestOf(content), { upstream: "u", repo: "r" }, async () => ({ size: wrong.length, body }));
    await fill.ready;
    const reader = collect(fill.createReader(0, undefined));
    body.end(wrong);
    await expect(fill.done).rejects.toThrow(/hashes to/);
    const got = await reader;
    expect(got.error).toBeDefined();
    expect(got.bytes.length).toBeLessThan(wrong.length);
    expect(await store.size(digestOf(content))).toBeUndefined();
    expect(await store.tempFiles()).toEqual([]);
  });
});
