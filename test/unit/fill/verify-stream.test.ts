import { createHash, randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { pipeline, Readable } from "node:stream";
import { Agent, request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { VerifyStream } from "../../../src/fill/verify-stream.ts";
import { ReceivePacer } from "../../../src/fill/receive-pacer.ts";

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** Pipes `content` in 64 KiB chunks through a VerifyStream; what came out, and the error if it failed. */
async function run(
  content: Buffer,
  digest: string,
  size: number | undefined,
  pacer?: ReceivePacer,
): Promise<{ out: Buffer; error?: Error }> {
  const chunks: Buffer[] = [];
  for (let at = 0; at < content.length; at += 64 * 1024) chunks.push(content.subarray(at, at + 64 * 1024));
  const verify = new VerifyStream(digest, size, { pacer });
  Readable.from(chunks).pipe(verify);
  const out: Buffer[] = [];
  try {
    for await (const chunk of verify) out.push(chunk as Buffer);
  } catch (err) {
    return { out: Buffer.concat(out), error: err as Error };
  }
  return { out: Buffer.concat(out) };
}

describe("VerifyStream", () => {
  const content = randomBytes(12 * 1024 * 1024 + 5);

  it("passes verified content through whole, and counts it towards the receive pacer's minor GCs", async () => {
    const pacer = new ReceivePacer();
    const before = pacer.collections;
    const { out, error } = await run(content, digestOf(content), content.length, pacer);
    expect(error).toBeUndefined();
    expect(out.equals(content)).toBe(true);
    expect(pacer.active).toBe(true);
    expect(pacer.collections - before).toBeGreaterThanOrEqual(1); // 12 MiB through, one every 8 MiB
  });

  it("fails wrong content without ever emitting its last chunk", async () => {
    const wrong = Buffer.from(content);
    wrong[10] = wrong[10]! ^ 1;
    const { out, error } = await run(wrong, digestOf(content), content.length);
    expect(error?.message).toMatch(/hashes to/);
    expect(out.length).toBeLessThan(wrong.length);
  });

  it("fails content longer or shorter than announced", async () => {
    expect((await run(content, digestOf(content), content.length - 1)).error?.message).toMatch(
      /more than the announced/,
    );
    expect((await run(content, digestOf(content), content.length + 1)).error?.message).toMatch(/of .* bytes/);
  });

  describe("a reader that stops reading", () => {
    let upstream: Server | undefined;
    let agent: Agent | undefined;
    afterEach(async () => {
      await agent?.destroy().catch(() => undefined);
      upstream?.closeAllConnections();
      await new Promise((resolve) => (upstream ? upstream.close(resolve) : resolve(undefined)));
      upstream = agent = undefined;
    });

    /** An upstream that sends a 64 MiB body as fast as it is taken; resolves with its URL and its server-side sockets. */
    async function startUpstream(): Promise<{ url: string; sockets: Socket[]; body: Buffer }> {
      const body = randomBytes(64 * 1024 * 1024);
      const sockets: Socket[] = [];
      upstream = createServer((_req, res) => {
        sockets.push(res.socket!);
        res.writeHead(200, { "content-length": String(body.length) });
        res.end(body);
      });
      await new Promise<void>((resolve) => upstream!.listen(0, "127.0.0.1", resolve));
      return { url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}/`, sockets, body };
    }

    it("releases the upstream connection once it has read nothing for the stall timeout", async () => {
      const { url, sockets, body } = await startUpstream();
      // undici's own body timeout is far away and, paused by backpressure, would never fire anyway.
      agent = new Agent({ bodyTimeout: 10 * 60_000 });
      const res = await request(url, { dispatcher: agent });
      const verify = new VerifyStream(digestOf(body), body.length, { stallTimeoutMs: 300 });
      const failed = new Promise<Error | undefined>((resolve) =>
        pipeline(res.body, verify, (err) => resolve(err ?? undefined)),
      );
      verify.once("data", () => verify.pause()); // takes one chunk, then nothing more
      let timer: NodeJS.Timeout | undefined;
      const bounded = new Promise<Error>(
        (resolve) => (timer = setTimeout(() => resolve(new Error("the transfer was still held after 10 s")), 10_000)),
      );
      const err = await Promise.race([failed, bounded]);
      clearTimeout(timer);
      expect(err?.message).toMatch(/read nothing for 300 ms/);
      expect(res.body.destroyed).toBe(true);
      expect(sockets).toHaveLength(1);
      // The upstream sees its connection closed: it is not held for the rest of a transfer nobody reads.
      await new Promise<void>((resolve) =>
        sockets[0]!.destroyed ? resolve() : sockets[0]!.once("close", () => resolve()),
      );
      expect(sockets[0]!.destroyed).toBe(true);
    });

    it("does not cut off a reader that keeps taking chunks, however slowly", async () => {
      const content = randomBytes(3 * 1024 * 1024);
      const verify = new VerifyStream(digestOf(content), content.length, { stallTimeoutMs: 500 });
      const chunks: Buffer[] = [];
      for (let at = 0; at < content.length; at += 64 * 1024) chunks.push(content.subarray(at, at + 64 * 1024));
      Readable.from(chunks).pipe(verify);
      const out: Buffer[] = [];
      // Output full most of the time, one chunk taken every 20 ms: well over the stall timeout in total.
      for await (const chunk of verify) {
        out.push(chunk as Buffer);
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(Buffer.concat(out).equals(content)).toBe(true);
    });
  });
});
