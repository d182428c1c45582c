// What the S3 store decides without a server: the part size of a write (S3 allows 10,000 parts per upload).
// Everything it does with a server is tested against a real one: test/conformance/s3-content-store.test.ts.
import { describe, expect, it } from "vitest";
import { partSizeFor } from "../../../src/storage/s3-content-store.ts";

const MiB = 1024 * 1024;

describe("partSizeFor", () => {
  it("keeps the store's part size while 10,000 parts hold the announced length, or when none is announced", () => {
    expect(partSizeFor(undefined, 8 * MiB)).toBe(8 * MiB);
    expect(partSizeFor(20 * MiB, 8 * MiB)).toBe(8 * MiB);
    expect(partSizeFor(10_000 * 8 * MiB, 8 * MiB)).toBe(8 * MiB);
  });

  it("grows to whole MiB so that a longer announced length still fits in 10,000 parts", () => {
    const size = 10_000 * 8 * MiB + 1;
    const part = partSizeFor(size, 8 * MiB);
    expect(part).toBe(9 * MiB);
    expect(Math.ceil(size / part)).toBeLessThanOrEqual(10_000);
    const huge = 200 * 1024 * MiB; // 200 GiB
    expect(Math.ceil(huge / partSizeFor(huge, 8 * MiB))).toBeLessThanOrEqual(10_000);
  });
});
