import { randomBytes } from "node:crypto";
import { mkdtemp, open, rm, writeFile } from "node:fs/promises";
import { createServer, get, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BufferPool, FileHandleRangeStream } from "../../../src/cache/file-range-stream.ts";

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

  /** Serves [start, end] of the file the way Koa does (stream.pipeline into the response); resolves with the URL. */
  async function serve(start: number, end: number, onClosed?: (closed: Promise<void>) => void): Promise<string> {
    server = createServer((_req, res) => {
      void open(path, "r").then((handle) => {
        onClosed?.(new Promise((resolve) => (handle as unknown as NodeJS.EventEmitter).once("close", () => resolve())));
        res.writeHead(200, { "content-length": String(end - start + 1) });
        pipeline(new FileHandleRangeStream(pool, handle, start, end), res, () => undefined);
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
    for await (const chunk of new FileHandleRangeStream(pool, handle, 7, content.length - 2)) chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).equals(content.subarray(7, content.length - 1))).toBe(true);
  });

  it("closes its file when the client goes away mid-transfer", async () => {
    let closed: Promise<void> | undefined;
    const url = await serve(0, content.length - 1, (c) => (closed = c));
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
    await closed;
  });
});
