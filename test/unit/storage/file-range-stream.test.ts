import { randomBytes } from "node:crypto";
import { mkdtemp, open, rm, writeFile, type FileHandle } from "node:fs/promises";
import { createServer, get, type Server } from "node:http";
import { connect, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  BufferPool,
  FileHandleRangeStream,
  MAX_IN_FLIGHT,
  READ_CHUNK,
} from "../../../src/storage/file-range-stream.ts";
import { waitFor } from "../../harness/processes.ts";

describe("FileHandleRangeStream", () => {
  let dir: string;
  let path: string;
  const content = randomBytes(5 * 1024 * 1024 + 123);
  const pool = new BufferPool(4);
  let server: Server | undefined;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "range-stream-"));
    path = join(dir, "blob");
    await writeFile(path, content);
  });
  afterEach(async () => {
    server?.closeAllConnections();
    await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
    server = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  /**
   * Serves [start, end] of the file (`path` unless `file` names another) the way Koa does (stream.pipeline into the
   * response); resolves with the URL. `onStream` sees each response's stream and the file handle it owns.
   */
  async function serve(
    start: number,
    end: number,
    opts: { file?: string; onStream?: (stream: FileHandleRangeStream, handle: FileHandle) => void } = {},
  ): Promise<string> {
    server = createServer((_req, res) => {
      void open(opts.file ?? path, "r").then((handle) => {
        res.writeHead(200, { "content-length": String(end - start + 1) });
        const stream = new FileHandleRangeStream(pool, handle, start, end);
        opts.onStream?.(stream, handle);
        pipeline(stream, res, () => undefined);
      });
    });
    await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  }

  function fetchAll(url: string): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      get(url, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve(Buffer.concat(chunks)));
        res.on("error", reject);
      }).on("error", reject);
    });
  }

  it("writes exact ranges into an HTTP response, with buffers reused across responses", async () => {
    const url = await serve(0, content.length - 1);
    expect(pool.idleCount).toBe(0);
    expect((await fetchAll(url)).equals(content)).toBe(true);
    expect(pool.idleCount).toBeGreaterThan(0); // the direct path ran: buffers came back from write callbacks
    expect((await fetchAll(url)).equals(content)).toBe(true);
    server?.closeAllConnections();
    await new Promise((resolve) => server!.close(resolve));
    const url2 = await serve(1_000_000, 3_100_000);
    expect((await fetchAll(url2)).equals(content.subarray(1_000_000, 3_100_001))).toBe(true);
  });

  it("reads plainly for any other consumer", async () => {
    const handle = await open(path, "r");
    const chunks: Buffer[] = [];
    for await (const chunk of new FileHandleRangeStream(pool, handle, 7, content.length - 2))
      chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).equals(content.subarray(7, content.length - 1))).toBe(true);
  });

  it("holds at most MAX_IN_FLIGHT buffers for a client that stopped reading, gives them back when the client leaves", async () => {
    // Larger than what loopback socket buffers absorb, so the client's stop backs the response up.
    const big = join(dir, "big");
    await writeFile(big, randomBytes(48 * 1024 * 1024));
    const own = new BufferPool();
    let stream: FileHandleRangeStream | undefined;
    let handleClosed: Promise<void> | undefined;
    server = createServer((_req, res) => {
      void open(big, "r").then((handle) => {
        handleClosed = new Promise((resolve) =>
          (handle as unknown as NodeJS.EventEmitter).once("close", () => resolve()),
        );
        res.writeHead(200, { "content-length": String(48 * 1024 * 1024) });
        stream = new FileHandleRangeStream(own, handle, 0, 48 * 1024 * 1024 - 1);
        pipeline(stream, res, () => undefined);
      });
    });
    await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
    const client: Socket = connect((server.address() as AddressInfo).port, "127.0.0.1");
    client.on("error", () => undefined);
    client.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    client.once("data", () => client.pause()); // the first bytes, then nothing more
    try {
      // Stalled: nothing more read from the file for several checks in a row.
      let last = -1;
      let still = 0;
      await waitFor(
        async () => {
          const read = stream?.bytesRead ?? -1;
          still = read > 0 && read === last ? still + 1 : 0;
          last = read;
          return still >= 5;
        },
        { timeoutMs: 20_000, intervalMs: 50, what: "the response to back up" },
      );
      expect(stream!.bytesRead).toBeLessThan(48 * 1024 * 1024);
      // The chunks being sent and nothing besides: at most 1 MiB however long it waits (it was 2 MiB, and more
      // buffers could pile up before).
      expect(own.lentCount).toBeGreaterThanOrEqual(1);
      expect(own.lentCount).toBeLessThanOrEqual(MAX_IN_FLIGHT);
      expect(MAX_IN_FLIGHT * READ_CHUNK).toBeLessThanOrEqual(1024 * 1024);
    } finally {
      client.destroy();
    }
    await handleClosed;
    await waitFor(async () => own.lentCount === 0, {
      timeoutMs: 10_000,
      what: "the stalled write's buffer to be released",
    });
  });

  it("closes its file when the client goes away mid-transfer", async () => {
    // Larger than what loopback socket buffers absorb, so the client leaves while most of it is still unread.
    const big = join(dir, "big");
    const size = 48 * 1024 * 1024;
    await writeFile(big, randomBytes(size));
    let handle: FileHandle | undefined;
    let stream: FileHandleRangeStream | undefined;
    const url = await serve(0, size - 1, {
      file: big,
      onStream: (s, h) => {
        stream = s;
        handle = h;
      },
    });
    await new Promise<void>((resolve, reject) => {
      const req = get(url, (res) => {
        res.once("data", () => {
          req.destroy();
          resolve();
        });
      });
      req.on("error", () => undefined);
      req.setTimeout(10_000, () => reject(new Error("no data")));
    });
    // A closed FileHandle reports fd -1.
    await waitFor(async () => handle?.fd === -1, { timeoutMs: 10_000, what: "the file handle to be closed" });
    expect(stream!.destroyed).toBe(true);
    expect(stream!.bytesRead).toBeLessThan(size); // closed because the client left, not because the range ended
  });
});
