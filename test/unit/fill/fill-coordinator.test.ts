import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer, get, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { PassThrough, type Readable } from "node:stream";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import {
  FillCoordinator,
  type Fill,
  type FillAdmission,
  type FillContext,
  type FillReservation,
} from "../../../src/fill/fill-coordinator.ts";
import { ReceivePacer } from "../../../src/fill/receive-pacer.ts";
import { BufferPool } from "../../../src/storage/file-range-stream.ts";
import { RegistryError } from "../../../src/oci/errors.ts";
import type { ContentWriter } from "../../../src/storage/content-store.ts";

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const origin = { upstream: "u", repo: "r" };

/** Reads a stream to the end, or resolves with the error it failed with. */
async function collect(stream: Readable): Promise<{ bytes: Buffer; error?: Error }> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of stream) chunks.push(chunk as Buffer);
    return { bytes: Buffer.concat(chunks) };
  } catch (error) {
    return { bytes: Buffer.concat(chunks), error: error as Error };
  }
}

/** Resolves once `reader` has delivered at least `n` bytes (the reader is left flowing into `sink`). */
function readAtLeast(reader: Readable, n: number, sink: Buffer[]): Promise<void> {
  return new Promise((resolve, reject) => {
    let got = 0;
    reader.on("data", (c: Buffer) => {
      sink.push(c);
      got += c.length;
      if (got >= n) resolve();
    });
    reader.on("error", reject);
  });
}

const tick = () => new Promise((r) => setTimeout(r, 20));

/** What the composition root gives every fill, over `store`. */
const contextOf = (store: BlobStore, more: Partial<FillContext> = {}): FillContext => ({
  store,
  buffers: new BufferPool(),
  pacer: new ReceivePacer({ gc: null }),
  timeoutMs: 10_000,
  log: pino({ level: "silent" }),
  ...more,
});

describe("FillCoordinator", () => {
  let dir: string;
  let store: BlobStore;
  let fills: FillCoordinator;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "fill-"));
    store = new BlobStore(dir);
    await store.init();
    fills = new FillCoordinator(contextOf(store), { committedGraceMs: 50 });
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  function startFill(
    content: Buffer,
    opts: { announce?: number | undefined; digest?: string } = {},
  ): { fill: Fill; body: PassThrough } {
    const body = new PassThrough();
    const size = "announce" in opts ? opts.announce : content.length;
    const fill = fills.start(opts.digest ?? digestOf(content), origin, async () => ({ size, body }));
    return { fill, body };
  }

  it("streams to a first reader and a late joiner, verifies, and commits once", async () => {
    const content = randomBytes(3 * 1024 * 1024 + 17);
    const { fill, body } = startFill(content);
    await fill.ready;
    const first = collect(fill.createReader(0, undefined));
    body.write(content.subarray(0, 2 * 1024 * 1024));
    await tick();
    // The joiner arrives mid-download: it gets what is on disk, then follows.
    const late = collect(fill.createReader(0, undefined));
    expect(fills.start(digestOf(content), origin, () => Promise.reject(new Error("second download")))).toBe(fill);
    body.end(content.subarray(2 * 1024 * 1024));
    const [a, b] = await Promise.all([first, late]);
    await fill.done;
    expect(a.error).toBeUndefined();
    expect(b.error).toBeUndefined();
    expect(a.bytes.equals(content)).toBe(true);
    expect(b.bytes.equals(content)).toBe(true);
    expect((await readFile(store.pathOf(digestOf(content)))).equals(content)).toBe(true);
    expect(await store.tempFiles()).toEqual([]);
  });

  it("holds back the blob's last byte until the content is verified", async () => {
    const content = randomBytes(1000);
    const { fill, body } = startFill(content);
    await fill.ready;
    const sink: Buffer[] = [];
    const reader = fill.createReader(0, undefined);
    const ended = new Promise((r) => reader.once("end", r));
    body.write(content);
    await readAtLeast(reader, 999, sink);
    await tick();
    expect(Buffer.concat(sink).length).toBe(999); // everything but the last byte, while unverified
    body.end();
    await ended;
    expect(Buffer.concat(sink).equals(content)).toBe(true);
  });

  it("never commits content whose digest does not match, and breaks every reader", async () => {
    const content = randomBytes(500_000);
    const corrupt = Buffer.from(content);
    corrupt[250_000] = corrupt[250_000]! ^ 0xff;
    const { fill, body } = startFill(corrupt, { digest: digestOf(content) });
    await fill.ready;
    const reader = collect(fill.createReader(0, undefined));
    body.end(corrupt);
    const result = await reader;
    expect(result.error).toBeInstanceOf(RegistryError);
    expect(result.error?.message).toMatch(/hashes to/);
    expect(result.bytes.length).toBeLessThan(corrupt.length);
    await expect(fill.done).rejects.toThrow(/hashes to/);
    expect(await store.size(digestOf(content))).toBeUndefined();
    expect(await store.tempFiles()).toEqual([]);
    expect(fills.current(digestOf(content))).toBeUndefined(); // the next request starts a fresh download
  });

  it("never commits a truncated download", async () => {
    const content = randomBytes(100_000);
    const { fill, body } = startFill(content);
    await fill.ready;
    const reader = collect(fill.createReader(0, undefined));
    body.end(content.subarray(0, 60_000));
    const result = await reader;
    expect(result.error?.message).toMatch(/sent 60000 of 100000 bytes/);
    expect(await store.size(digestOf(content))).toBeUndefined();
    expect(await store.tempFiles()).toEqual([]);
  });

  it("never commits when the upstream connection breaks mid-body", async () => {
    const content = randomBytes(100_000);
    const { fill, body } = startFill(content);
    await fill.ready;
    const reader = collect(fill.createReader(0, undefined));
    body.write(content.subarray(0, 10_000));
    await tick();
    body.destroy(Object.assign(new Error("socket hang up"), { code: "ECONNRESET" }));
    expect((await reader).error).toBeDefined();
    await expect(fill.done).rejects.toThrow();
    expect(await store.tempFiles()).toEqual([]);
  });

  it("keeps filling when a reader goes away, so the blob is still committed", async () => {
    const content = randomBytes(2 * 1024 * 1024);
    const { fill, body } = startFill(content);
    await fill.ready;
    const reader = fill.createReader(0, undefined);
    const sink: Buffer[] = [];
    body.write(content.subarray(0, 1024 * 1024));
    await readAtLeast(reader, 1, sink);
    reader.destroy();
    expect(fill.readers).toBe(0);
    body.end(content.subarray(1024 * 1024));
    await fill.done;
    expect((await readFile(store.pathOf(digestOf(content)))).equals(content)).toBe(true);
  });

  it("holds back the last byte of a range, wherever it ends, until the content is verified", async () => {
    const content = randomBytes(10_000);
    const { fill, body } = startFill(content);
    await fill.ready;
    const sink: Buffer[] = [];
    const reader = fill.createReader(100, 199);
    const ended = new Promise((r) => reader.once("end", r));
    body.write(content.subarray(0, 5_000)); // the whole range is on disk, the blob is not verified yet
    await readAtLeast(reader, 99, sink);
    await tick();
    expect(Buffer.concat(sink).length).toBe(99);
    body.end(content.subarray(5_000));
    await ended;
    expect(fill.state).toBe("committed");
    expect(Buffer.concat(sink).equals(content.subarray(100, 200))).toBe(true);
  });

  it("breaks a range reader when the content fails verification, though its whole range had arrived", async () => {
    const content = randomBytes(100_000);
    const corrupt = Buffer.from(content);
    corrupt[10] = corrupt[10]! ^ 0xff;
    const { fill, body } = startFill(corrupt, { digest: digestOf(content) });
    await fill.ready;
    const sink: Buffer[] = [];
    const reader = fill.createReader(0, 999); // "Range: bytes=0-999", answered 206 with Content-Length 1000
    const result = collect(reader);
    body.write(corrupt.subarray(0, 50_000));
    await readAtLeast(reader, 999, sink);
    body.end(corrupt.subarray(50_000));
    await expect(fill.done).rejects.toThrow(/hashes to/);
    expect((await result).error?.message).toMatch(/hashes to/);
    expect(Buffer.concat(sink).length).toBe(999);
  });

  it("refuses content announced for the empty blob before downloading it, and releases the upstream body", async () => {
    const digest = digestOf(Buffer.alloc(0));
    const body = new PassThrough();
    const fill = fills.start(digest, origin, async () => ({ size: 10, body }));
    await expect(fill.ready).rejects.toMatchObject({ code: "UPSTREAM_ERROR" });
    expect(body.destroyed).toBe(true);
    expect(await store.size(digest)).toBeUndefined();
    expect(await store.tempFiles()).toEqual([]);
  });

  it("fails a 0-byte announcement for a non-empty digest before any reader ends, and commits nothing", async () => {
    const digest = digestOf(randomBytes(1000));
    const body = new PassThrough();
    const fill = fills.start(digest, origin, async () => ({ size: 0, body }));
    await fill.ready;
    const reader = collect(fill.createReader(0, -1)); // what blob-handler asks for a 0-byte blob
    body.end();
    expect((await reader).error).toMatchObject({ code: "UPSTREAM_ERROR" });
    expect(fill.state).toBe("failed");
    expect(await store.size(digest)).toBeUndefined();
    expect(await store.tempFiles()).toEqual([]);
  });

  it("ends a reader of the empty blob only once it is verified", async () => {
    const empty = Buffer.alloc(0);
    const committed = startFill(empty);
    await committed.fill.ready;
    const good = collect(committed.fill.createReader(0, -1)); // what blob-handler asks for a 0-byte blob
    committed.body.end();
    expect(await good).toEqual({ bytes: empty });
    expect(committed.fill.state).toBe("committed");
    await store.delete(digestOf(empty)); // and the coordinator forgets the committed fill
    // Announced as empty, then content arrives: the reader, which had nothing to read, breaks.
    const failing = startFill(empty);
    await failing.fill.ready;
    const bad = collect(failing.fill.createReader(0, -1));
    failing.body.end(Buffer.from("not empty"));
    expect((await bad).error?.message).toMatch(/more than the announced 0 bytes/);
    expect(await store.size(digestOf(empty))).toBeUndefined();
  });

  it("ends only after commit when the upstream announced no size", async () => {
    const content = randomBytes(50_000);
    const { fill, body } = startFill(content, { announce: undefined });
    await fill.ready;
    const reader = collect(fill.createReader(0, undefined));
    body.end(content);
    expect((await reader).bytes.equals(content)).toBe(true);
    expect(fill.state).toBe("committed");
  });

  it("rejects ready with the upstream's error and forgets the fill", async () => {
    const digest = digestOf(Buffer.from("nope"));
    const fill = fills.start(digest, origin, () => Promise.reject(new RegistryError("BLOB_UNKNOWN")));
    await expect(fill.ready).rejects.toMatchObject({ code: "BLOB_UNKNOWN" });
    await tick();
    expect(fills.current(digest)).toBeUndefined();
  });

  it("abandons a fill that exceeds its timeout, committing nothing", async () => {
    const slow = new FillCoordinator(contextOf(store, { timeoutMs: 100 }));
    const content = randomBytes(1000);
    const body = new PassThrough();
    const fill = slow.start(digestOf(content), origin, async (signal) => {
      signal.addEventListener("abort", () => body.destroy(signal.reason as Error));
      return { size: content.length, body };
    });
    await fill.ready;
    body.write(content.subarray(0, 10));
    await expect(fill.done).rejects.toThrow(/fill timeout/);
    expect(await store.tempFiles()).toEqual([]);
  });

  it("takes its collaborators from the context: the pacer counts what is received, maxReaders bounds readers", async () => {
    const collections: unknown[] = [];
    const pacer = new ReceivePacer({ everyBytes: 100_000, gc: (opts) => collections.push(opts) });
    const limited = new FillCoordinator(contextOf(store, { pacer, maxReaders: 1 }));
    const content = randomBytes(250_000);
    const body = new PassThrough();
    const fill = limited.start(digestOf(content), origin, async () => ({ size: content.length, body }));
    await fill.ready;
    const reader = collect(fill.createReader(0, undefined));
    expect(() => fill.createReader(0, undefined)).toThrow(
      expect.objectContaining({ code: "TOOMANYREQUESTS" }) as Error,
    );
    body.end(content);
    expect((await reader).bytes.equals(content)).toBe(true);
    expect(collections).toContainEqual({ type: "minor" }); // 250 000 bytes received, past the 100 000 of one interval
  });

  it("hands a download there is no room for to one request, uncached, and stores nothing", async () => {
    const content = randomBytes(1000);
    const body = new PassThrough();
    const full = new FillCoordinator(
      contextOf(store, { admission: { admit: async () => undefined, noSpace: () => undefined } }),
    );
    const fill = full.start(digestOf(content), origin, async () => ({ size: content.length, body }));
    await fill.ready;
    expect(fill.state).toBe("uncached");
    expect(full.current(digestOf(content))).toBeUndefined(); // the next request starts its own
    const taken = fill.takeUncached();
    expect(taken?.body).toBe(body);
    expect(fill.takeUncached()).toBeUndefined(); // one request only
    body.destroy();
    expect(await store.tempFiles()).toEqual([]);
  });

  describe("with worker hashing (downloads of 8 MiB and more)", () => {
    const content = randomBytes(12 * 1024 * 1024 + 3);

    for (const announce of [content.length, undefined]) {
      it(`commits verified content (size ${announce === undefined ? "not announced" : "announced"})`, async () => {
        const body = new PassThrough();
        const fill = fills.start(digestOf(content), origin, async () => ({ size: announce, body }));
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
      const fill = fills.start(digestOf(content), origin, async () => ({ size: wrong.length, body }));
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

  describe("readers piped into an HTTP response (bytes being received are sent from memory)", () => {
    let server: Server | undefined;
    afterEach(async () => {
      server?.closeAllConnections();
      await new Promise((r) => server?.close(r) ?? r(undefined));
      server = undefined;
    });

    /** Counts the bytes readers read back from the temp file (the writer's readAt). */
    function countFileReads(): { bytes: number } {
      const count = { bytes: 0 };
      const createWriter = store.createWriter.bind(store);
      store.createWriter = async (...args: Parameters<BlobStore["createWriter"]>): Promise<ContentWriter> => {
        const writer = await createWriter(...args);
        const readAt = writer.readAt.bind(writer);
        writer.readAt = async (buffer, length, position) => {
          const n = await readAt(buffer, length, position);
          count.bytes += n;
          return n;
        };
        return writer;
      };
      return count;
    }

    /** Serves `fill` as Koa does (the reader piped into the response), bytes [start, end] when given. */
    async function serve(fill: Fill, start = 0, end?: number): Promise<string> {
      server = createServer((_req, res) => {
        res.statusCode = 200;
        const reader = fill.createReader(start, end);
        reader.once("error", () => res.destroy()); // as the router does: a broken source breaks the response
        reader.pipe(res);
      });
      await new Promise<void>((r) => server!.listen(0, "127.0.0.1", r));
      return `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    }

    /** GETs `url`: the response as it arrives (`got`), and how it ended (complete, or broken). */
    function download(url: string): {
      response: Promise<IncomingMessage>;
      got: Buffer[];
      ended: Promise<"complete" | "broken">;
    } {
      const got: Buffer[] = [];
      let respond!: (r: IncomingMessage) => void;
      const response = new Promise<IncomingMessage>((r) => (respond = r));
      const ended = new Promise<"complete" | "broken">((resolve) => {
        const req = get(url, (res) => {
          respond(res);
          res.on("data", (c: Buffer) => got.push(c));
          res.on("end", () => resolve("complete"));
          res.on("aborted", () => resolve("broken"));
          res.on("error", () => resolve("broken"));
        });
        req.on("error", () => resolve("broken"));
      });
      return { response, got, ended };
    }

    const length = (chunks: Buffer[]) => chunks.reduce((n, c) => n + c.length, 0);
    async function until(condition: () => boolean): Promise<void> {
      for (let i = 0; i < 500 && !condition(); i++) await new Promise((r) => setTimeout(r, 10));
      expect(condition()).toBe(true);
    }

    it("sends a reader that keeps up what is received without reading the file back, the last byte only once verified", async () => {
      const fileReads = countFileReads();
      const content = randomBytes(3 * 1024 * 1024 + 5);
      const { fill, body } = startFill(content);
      await fill.ready;
      const client = download(await serve(fill));
      await client.response; // headers are out before any byte was received
      for (let at = 0; at < content.length; at += 256 * 1024) {
        body.write(content.subarray(at, at + 256 * 1024));
        await tick();
      }
      await until(() => length(client.got) === content.length - 1);
      await tick();
      expect(length(client.got)).toBe(content.length - 1); // all but the last byte while unverified
      expect(fileReads.bytes).toBe(0); // every byte so far came from the chunks received
      body.end();
      expect(await client.ended).toBe("complete");
      expect(Buffer.concat(client.got).equals(content)).toBe(true);
      expect(fileReads.bytes).toBe(1); // the last byte, read after verification
      await fill.done;
    });

    it("holds back the last byte of a range sent from memory until verified", async () => {
      const content = randomBytes(2 * 1024 * 1024);
      const { fill, body } = startFill(content);
      await fill.ready;
      const client = download(await serve(fill, 1000, 1_500_000));
      await client.response;
      body.write(content.subarray(0, 1024 * 1024));
      await tick();
      body.write(content.subarray(1024 * 1024, 2 * 1024 * 1024 - 10));
      await until(() => length(client.got) === 1_500_000 - 1000);
      await tick();
      expect(length(client.got)).toBe(1_500_000 - 1000);
      body.end(content.subarray(2 * 1024 * 1024 - 10));
      expect(await client.ended).toBe("complete");
      expect(Buffer.concat(client.got).equals(content.subarray(1000, 1_500_001))).toBe(true);
    });

    it("never sends the last byte of a download that fails verification", async () => {
      const content = randomBytes(12 * 1024 * 1024 + 3); // hashed by the worker
      const wrong = Buffer.from(content);
      wrong[100] = wrong[100]! ^ 0xff;
      const { fill, body } = startFill(wrong, { digest: digestOf(content) });
      await fill.ready;
      const client = download(await serve(fill));
      await client.response;
      for (let at = 0; at < wrong.length; at += 512 * 1024) {
        body.write(wrong.subarray(at, at + 512 * 1024));
        await tick();
      }
      await until(() => length(client.got) === wrong.length - 1);
      body.end();
      await expect(fill.done).rejects.toThrow(/hashes to/);
      expect(await client.ended).toBe("broken");
      expect(length(client.got)).toBe(wrong.length - 1);
      expect(await store.size(digestOf(content))).toBeUndefined();
      expect(await store.tempFiles()).toEqual([]);
    });

    it("sends a client that stopped reading the rest from the file once it reads again, the same bytes", async () => {
      const fileReads = countFileReads();
      const content = randomBytes(24 * 1024 * 1024 + 7);
      const { fill, body } = startFill(content);
      await fill.ready;
      const client = download(await serve(fill));
      const response = await client.response;
      body.write(content.subarray(0, 256 * 1024));
      await until(() => length(client.got) === 256 * 1024);
      response.pause(); // the client stops reading: its socket fills up, and the download goes on without it
      for (let at = 256 * 1024; at < content.length; at += 512 * 1024) {
        body.write(content.subarray(at, at + 512 * 1024));
        await tick();
      }
      body.end();
      await fill.done; // verified and committed while the client was not reading
      response.resume();
      expect(await client.ended).toBe("complete");
      expect(Buffer.concat(client.got).equals(content)).toBe(true);
      expect(fileReads.bytes).toBeGreaterThan(1024 * 1024); // it fell behind, and read the temp file
    });
  });

  describe("in a budget (room reserved by the policy)", () => {
    type Held = FillReservation & { released: boolean; stateAtRelease: string | undefined };
    /** Reservations as the janitor makes them: up to `room` bytes cached, up to `disk` bytes passing through. */
    function budget(
      room: number,
      disk = Infinity,
      observe: () => string = () => "",
    ): { policy: FillAdmission; reservations: Held[] } {
      const reservations: Held[] = [];
      const policy: FillAdmission = {
        admit: async (size) => {
          if ((size ?? 0) > room) return undefined;
          let diskOnly = false;
          const r = {
            bytes: size ?? 0,
            released: false,
            stateAtRelease: undefined as string | undefined,
            grow: async (total: number) => {
              if (total > (diskOnly ? disk : room)) return false;
              r.bytes = total;
              return true;
            },
            wrote: () => undefined,
            stopCaching: () => {
              diskOnly = true;
            },
            release: () => {
              r.released = true;
              r.stateAtRelease = observe();
            },
          };
          reservations.push(r);
          return r;
        },
        noSpace: () => undefined,
      };
      return { policy, reservations };
    }
    const coordinator = (admission: FillAdmission) =>
      new FillCoordinator(contextOf(store, { admission }), { committedGraceMs: 50 });

    it("releases the upstream body at once when admission fails", async () => {
      const failing = coordinator({ admit: () => Promise.reject(new Error("statfs: EIO")), noSpace: () => undefined });
      const body = new PassThrough();
      const fill = failing.start(digestOf(Buffer.from("x")), origin, async () => ({ size: 1, body }));
      await expect(fill.ready).rejects.toThrow(/EIO/);
      expect(body.destroyed).toBe(true); // not held until the upstream's body-idle timeout
      expect(await store.tempFiles()).toEqual([]);
    });

    it("holds its reservation until the content is committed", async () => {
      const content = randomBytes(100_000);
      const { policy, reservations } = budget(1_000_000, Infinity, () =>
        store.index.has(digestOf(content)) ? "in the index" : "not in the index",
      );
      const body = new PassThrough();
      const fill = coordinator(policy).start(digestOf(content), origin, async () => ({ size: content.length, body }));
      await fill.ready;
      const r = reservations[0]!;
      expect(r.bytes).toBe(content.length);
      expect(r.released).toBe(false);
      body.end(content);
      await fill.done;
      expect(r.released).toBe(true);
      expect(r.stateAtRelease).toBe("in the index"); // released before, its room could be handed out twice
    });

    it("passes a download of unknown size that outgrows the budget through to its readers, verified, and stores nothing", async () => {
      const { policy, reservations } = budget(100_000);
      const content = randomBytes(500_000);
      const body = new PassThrough();
      const fill = coordinator(policy).start(digestOf(content), origin, async () => ({ size: undefined, body }));
      await fill.ready;
      const sink: Buffer[] = [];
      const reader = fill.createReader(0, undefined);
      const ended = new Promise((resolve, reject) => reader.once("end", resolve).once("error", reject));
      body.write(content);
      await readAtLeast(reader, content.length - 1, sink);
      await tick();
      expect(fill.state).toBe("passing");
      expect(Buffer.concat(sink).length).toBe(content.length - 1); // the last byte waits for verification, as ever
      body.end();
      await ended;
      expect(Buffer.concat(sink).equals(content)).toBe(true);
      expect(fill.state).toBe("passed");
      await expect(fill.done).rejects.toThrow(/not cached/);
      expect(await store.size(digestOf(content))).toBeUndefined();
      expect(await store.tempFiles()).toEqual([]);
      expect(reservations[0]!.released).toBe(true);
    });

    it("breaks the readers of a download passing through that fails verification", async () => {
      const { policy } = budget(100_000);
      const content = randomBytes(500_000);
      const wrong = Buffer.from(content);
      wrong[400_000] = wrong[400_000]! ^ 0xff;
      const body = new PassThrough();
      const fill = coordinator(policy).start(digestOf(content), origin, async () => ({ size: undefined, body }));
      await fill.ready;
      const reader = collect(fill.createReader(0, undefined));
      body.end(wrong);
      const got = await reader;
      expect(got.error?.message).toMatch(/hashes to/);
      expect(got.bytes.length).toBeLessThan(wrong.length);
      expect(await store.tempFiles()).toEqual([]);
    });

    it("stops a download passing through once its readers have all gone", async () => {
      const { policy } = budget(100_000);
      const content = randomBytes(500_000);
      const body = new PassThrough();
      const fill = coordinator(policy).start(digestOf(content), origin, async () => ({ size: undefined, body }));
      await fill.ready;
      const reader = fill.createReader(0, undefined);
      body.write(content.subarray(0, 300_000));
      await readAtLeast(reader, 1, []);
      expect(fill.state).toBe("passing");
      reader.destroy();
      await expect(fill.done).rejects.toThrow(/has gone/);
      expect(body.destroyed).toBe(true);
      expect(await store.tempFiles()).toEqual([]);
    });

    it("fails a download passing through that the disk cannot hold either", async () => {
      const { policy } = budget(100_000, 200_000);
      const content = randomBytes(500_000);
      const body = new PassThrough();
      const fill = coordinator(policy).start(digestOf(content), origin, async () => ({ size: undefined, body }));
      await fill.ready;
      const reader = collect(fill.createReader(0, undefined));
      body.end(content);
      expect((await reader).error?.message).toMatch(/no room on the disk/);
      await expect(fill.done).rejects.toThrow(/no room on the disk/);
      expect(await store.size(digestOf(content))).toBeUndefined();
      expect(await store.tempFiles()).toEqual([]);
    });
  });
});
