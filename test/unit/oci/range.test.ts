import { describe, expect, it } from "vitest";
import { parseRange, resolveRange } from "../../../src/oci/range.ts";

describe("Range", () => {
  it("parses the three single-range forms", () => {
    expect(parseRange("bytes=0-99")).toEqual({ kind: "from", start: 0, end: 99 });
    expect(parseRange("bytes=100-")).toEqual({ kind: "from", start: 100, end: undefined });
    expect(parseRange("bytes=-10")).toEqual({ kind: "suffix", length: 10 });
  });
  it("ignores what it does not support, serving the whole blob", () => {
    for (const h of [
      undefined,
      "bytes=0-1,5-6",
      "items=0-1",
      "bytes=5-2",
      "bytes=-",
      "bytes=a-b",
      `bytes=${"9".repeat(20)}-`,
    ]) {
      expect(parseRange(h), String(h)).toBeUndefined();
    }
  });
  it("resolves against the size, clamping the end", () => {
    expect(resolveRange({ kind: "from", start: 10, end: 1000 }, 100)).toEqual({ start: 10, end: 99 });
    expect(resolveRange({ kind: "from", start: 0, end: undefined }, 100)).toEqual({ start: 0, end: 99 });
    expect(resolveRange({ kind: "suffix", length: 10 }, 100)).toEqual({ start: 90, end: 99 });
    expect(resolveRange({ kind: "suffix", length: 1000 }, 100)).toEqual({ start: 0, end: 99 });
  });
  it("reports unsatisfiable ranges", () => {
    expect(resolveRange({ kind: "from", start: 100, end: undefined }, 100)).toBe("unsatisfiable");
    expect(resolveRange({ kind: "suffix", length: 0 }, 100)).toBe("unsatisfiable");
    expect(resolveRange({ kind: "suffix", length: 5 }, 0)).toBe("unsatisfiable");
  });
});
