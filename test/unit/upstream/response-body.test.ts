/**
 * readCappedBody on Node streams (what it is handed by undici and by Koa), and on a real undici response body
 * from a loopback server for the abort case.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Readable } from "node:stream";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { discardBody, readCappedBody } from "../../../src/upstream/response-body.ts";

const tooLarge = () => new Error("too large");

/** A body of `chunks` chunks of `size` bytes, counting how many were pulled from it. */
function counted(chunks: number, size: number): { body: Readable; pulled: () => number } {
  let pulled = 0;
  const body = new Readable({
    read() {
      if (pulled === chunks) this.push(null);
      else this.push(Buffer.alloc(size, pulled++ % 256));
    },
  });
  return { body, pulled: () => pulled };
}

let server: Server;
let base: string;
let closedEarly = 0;

beforeAll(async () => {
  server = createServer((_req, res) => {
    res.on("close", () => {
      if (!res.writableFinished) closedEarly++;
    });
    res.writeHead(200);
    res.write("first bytes");
    // Then nothing more, until the client gives up.
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

describe("readCappedBody", () => {
  it("reads a body of exactly the cap whole, in order", async () => {
    const { body } = counted(4, 1000);
    const bytes = await readCappedBody(body, 4000, tooLarge);
    expect(bytes.length).toBe(4000);
    expect([bytes[0], bytes[1000], bytes[2000], bytes[3999]]).toEqual([0, 1, 2, 3]);
  });

  it("reads an empty body as no bytes", async () => {
    expect((await readCappedBody(Readable.from([]), 10, tooLarge)).length).toBe(0);
  });

  it("stops at the first chunk past the cap, releases the body and throws the caller's error", async () => {
    const { body, pulled } = counted(1_000_000, 1024); // a 1 GiB body: reading it all would take a while
    await expect(readCappedBody(body, 4096, tooLarge)).rejects.toThrow("too large");
    expect(body.destroyed).toBe(true);
    // The cap plus what the stream buffered ahead (its highWaterMark): nowhere near the whole body.
    expect(pulled()).toBeLessThan(100);
  });

  it("is over the cap by one byte", async () => {
    await expect(readCappedBody(Readable.from([Buffer.alloc(3), Buffer.alloc(2)]), 4, tooLarge)).rejects.toThrow(
      "too large",
    );
    expect((await readCappedBody(Readable.from([Buffer.alloc(3), Buffer.alloc(1)]), 4, tooLarge)).length).toBe(4);
  });

  it("rethrows a read failure as it came, with the body released", async () => {
    const failure = Object.assign(new Error("socket hang up"), { code: "ECONNRESET" });
    const body = new Readable({
      read() {
        this.push(Buffer.from("part"));
        this.destroy(failure);
      },
    });
    await expect(readCappedBody(body, 1 << 20, tooLarge)).rejects.toBe(failure);
    expect(body.destroyed).toBe(true);
  });

  it("ends with the request when the signal it was sent with aborts (a deadline), and the connection is let go", async () => {
    closedEarly = 0;
    const deadline = new AbortController();
    const res = await request(`${base}/stalls`, { signal: deadline.signal });
    const reading = readCappedBody(res.body, 1 << 20, tooLarge);
    deadline.abort(new Error("deadline passed"));
    await expect(reading).rejects.toThrow();
    await vi.waitFor(() => expect(closedEarly).toBe(1), { timeout: 5_000 });
  });
});

describe("discardBody", () => {
  it("destroys an unfinished body without an unhandled error", async () => {
    closedEarly = 0;
    const res = await request(`${base}/discarded`);
    discardBody(res.body);
    expect(res.body.destroyed).toBe(true);
    await vi.waitFor(() => expect(closedEarly).toBe(1), { timeout: 5_000 });
  });
});
