import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { FileHasher } from "../../../src/storage/hash-worker.ts";

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

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
    // Past the first progress step, so that the job is on the worker when it goes.
    const bytes = randomBytes(4 * 1024 * 1024 + 1000);
    await writeFile(join(dir, "f"), bytes);
    const orphan = hasher.open(join(dir, "f"));
    orphan.extend(bytes.length);
    expect(hasher.running).toBe(true);
    await hasher.close();
    expect(hasher.running).toBe(false);
    await expect(orphan.finish(bytes.length)).rejects.toThrow();
    expect(await hasher.open(join(dir, "f")).finish(bytes.length)).toBe(digestOf(bytes));
  });

  it("starts no worker for a job until it has something to hash, and then hashes it from the start", async () => {
    const bytes = randomBytes(6 * 1024 * 1024);
    await writeFile(join(dir, "f"), bytes);
    const small = hasher.open(join(dir, "f"));
    small.extend(1024 * 1024); // less than a progress step: nothing for a worker yet
    expect(hasher.running).toBe(false);
    small.abort();
    expect(hasher.running).toBe(false);
    const job = hasher.open(join(dir, "f"));
    expect(hasher.running).toBe(false);
    job.extend(bytes.length);
    expect(hasher.running).toBe(true);
    expect(await job.finish(bytes.length)).toBe(digestOf(bytes));
    // A job that never reported progress starts the worker at its end, and is hashed whole.
    await hasher.close();
    expect(await hasher.open(join(dir, "f")).finish(bytes.length)).toBe(digestOf(bytes));
  });

  it("answers a job's end with a rejection when no worker can start, and starts one for the next job", async () => {
    const bytes = randomBytes(1000);
    await writeFile(join(dir, "f"), bytes);
    const job = hasher.open(join(dir, "f"));
    const real = Object.getOwnPropertyDescriptor(FileHasher.prototype, "ensureWorker")!;
    Object.defineProperty(hasher, "ensureWorker", {
      value: () => {
        throw new Error("no threads left");
      },
      configurable: true,
    });
    let answer: Promise<string> | undefined;
    expect(() => (answer = job.finish(bytes.length))).not.toThrow();
    await expect(answer).rejects.toThrow(/no threads left/);
    Object.defineProperty(hasher, "ensureWorker", real);
    expect(await hasher.open(join(dir, "f")).finish(bytes.length)).toBe(digestOf(bytes));
  });

  it("fails a file shorter than its announced size, and an aborted job never answers", async () => {
    await writeFile(join(dir, "short"), Buffer.alloc(100));
    await expect(hasher.open(join(dir, "short")).finish(101)).rejects.toThrow(/shorter/);
    const job = hasher.open(join(dir, "short"));
    job.abort();
    await expect(job.finish(100)).rejects.toThrow();
  });

  it("hashes ranges of a file (an upload's parts) while a job hashes the whole; a range past the end or of no file fails alone", async () => {
    const bytes = randomBytes(5 * 1024 * 1024 + 777);
    const path = join(dir, "parts");
    await writeFile(path, bytes);
    const whole = hasher.open(path);
    whole.extend(bytes.length);
    const ranges: Array<[number, number]> = [
      [0, 2 * 1024 * 1024],
      [2 * 1024 * 1024, bytes.length],
      [1000, 1001],
    ];
    const digests = await Promise.all(ranges.map(([start, end]) => hasher.hashRange(path, start, end)));
    expect(digests).toEqual(ranges.map(([start, end]) => digestOf(bytes.subarray(start, end))));
    expect(await whole.finish(bytes.length)).toBe(digestOf(bytes));
    await expect(hasher.hashRange(path, 5 * 1024 * 1024, bytes.length + 1)).rejects.toThrow(/shorter/);
    await expect(hasher.hashRange(join(dir, "absent"), 0, 1)).rejects.toThrow(/ENOENT/);
    // The worker still answers after those failures.
    expect(await hasher.hashRange(path, 0, 10)).toBe(digestOf(bytes.subarray(0, 10)));
  });
});
