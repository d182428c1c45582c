/** PartBuffers (s3-content-store.ts): the buffers upload bodies are read back into, reused part after part. */
import { describe, expect, it } from "vitest";
import { PartBuffers } from "../../../src/storage/s3-content-store.ts";

const MiB = 1024 * 1024;

describe("PartBuffers", () => {
  it("gives the next part the buffer the last one gave back, instead of a new one", () => {
    const buffers = new PartBuffers(2, 5 * MiB);
    const first = buffers.take(5 * MiB);
    buffers.give(first);
    expect(buffers.take(5 * MiB)).toBe(first);
    // A last part (shorter) reuses one too.
    buffers.give(first);
    expect(buffers.take(2 * MiB)).toBe(first);
  });

  it("keeps at most `keep` buffers; more taken at once are new, and the extra ones are let go", () => {
    const buffers = new PartBuffers(2, 5 * MiB);
    const taken = [buffers.take(5 * MiB), buffers.take(5 * MiB), buffers.take(5 * MiB)];
    expect(new Set(taken).size).toBe(3);
    for (const b of taken) buffers.give(b);
    const again = [buffers.take(5 * MiB), buffers.take(5 * MiB), buffers.take(5 * MiB)];
    expect(again.filter((b) => taken.includes(b))).toHaveLength(2);
  });

  it("keeps no buffer smaller than a part: content under a part gets one of its own size", () => {
    const buffers = new PartBuffers(2, 5 * MiB);
    const small = buffers.take(1000);
    expect(small.length).toBe(1000);
    buffers.give(small);
    const part = buffers.take(5 * MiB);
    expect(part).not.toBe(small);
    expect(part.length).toBe(5 * MiB);
  });

  it("takes a kept buffer only if it is large enough (parts larger than the store's, for very large blobs)", () => {
    const buffers = new PartBuffers(2, 5 * MiB);
    const part = buffers.take(5 * MiB);
    buffers.give(part);
    const larger = buffers.take(6 * MiB);
    expect(larger).not.toBe(part);
    expect(larger.length).toBe(6 * MiB);
    buffers.give(larger);
    expect(buffers.take(6 * MiB)).toBe(larger);
  });
});
