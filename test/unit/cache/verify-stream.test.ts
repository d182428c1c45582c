import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { VerifyStream } from "../../../src/cache/verify-stream.ts";
import { receivePacer } from "../../../src/upstream/receive-pacer.ts";

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** Pipes `content` in 64 KiB chunks through a VerifyStream; what came out, and the error if it failed. */
async function run(content: Buffer, digest: string, size: number | undefined): Promise<{ out: Buffer; error?: Error }> {
  const chunks: Buffer[] = [];
  for (let at = 0; at < content.length; at += 64 * 1024) chunks.push(content.subarray(at, at + 64 * 1024));
  const verify = new VerifyStream(digest, size);
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
    const pacer = receivePacer();
    const before = pacer.collections;
    const { out, error } = await run(content, digestOf(content), content.length);
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
    expect((await run(content, digestOf(content), content.length - 1)).error?.message).toMatch(/more than the announced/);
    expect((await run(content, digestOf(content), content.length + 1)).error?.message).toMatch(/of .* bytes/);
  });
});
