import { describe, expect, it } from "vitest";
import { isValidName, isValidTag, parseManifestReference } from "../../../src/oci/reference.ts";

const D = `sha256:${"a".repeat(64)}`;

describe("repository names", () => {
  it.each(["alpine", "library/alpine", "a/b/c", "my-org/my_app", "a__b", "a--b", "ghcr.io/team/tool", "x.y/z"])(
    "accepts %s",
    (n) => {
      expect(isValidName(n)).toBe(true);
    },
  );
  it.each([
    "",
    "Alpine",
    "a//b",
    "/a",
    "a/",
    "..",
    "a/../b",
    "a/./b",
    "a%2Fb",
    "-a",
    "a-",
    "a_",
    "a:b",
    "a b",
    "a___b",
    "a/b\u0000",
  ])("refuses %j", (n) => {
    expect(isValidName(n)).toBe(false);
  });
  it("refuses names over 255 characters", () => {
    expect(isValidName("a".repeat(255))).toBe(true);
    expect(isValidName("a".repeat(256))).toBe(false);
  });
});

describe("tags", () => {
  it("accepts the spec grammar up to 128 characters", () => {
    expect(isValidTag("latest")).toBe(true);
    expect(isValidTag("_x.Y-1")).toBe(true);
    expect(isValidTag("a".repeat(128))).toBe(true);
    expect(isValidTag("a".repeat(129))).toBe(false);
    expect(isValidTag(".hidden")).toBe(false);
    expect(isValidTag("-x")).toBe(false);
    expect(isValidTag("a/b")).toBe(false);
  });
});

describe("manifest references", () => {
  it("parses a tag and a sha256 digest", () => {
    expect(parseManifestReference("1.36")).toEqual({ kind: "tag", tag: "1.36" });
    expect(parseManifestReference(D)).toEqual({ kind: "digest", digest: D });
  });
  it("refuses an invalid tag with TAG_INVALID", () => {
    expect(() => parseManifestReference("-bad")).toThrow(
      expect.objectContaining({ code: "TAG_INVALID", status: 400 }) as Error,
    );
  });
});
