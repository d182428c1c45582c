import { describe, expect, it } from "vitest";
import { assertDigest, digestHex, digestOf, EMPTY_DIGEST, isSha256Digest, verifies } from "../../../src/oci/digest.ts";
import { RegistryError } from "../../../src/oci/errors.ts";

const D = `sha256:${"a".repeat(64)}`;

describe("digests", () => {
  it("refuses malformed digests with DIGEST_INVALID", () => {
    for (const bad of [
      "sha256:abc",
      `sha256:${"A".repeat(64)}`,
      `sha256:${"a".repeat(65)}`,
      "sha256:",
      ":abc",
      `sha256:${"g".repeat(64)}`,
    ]) {
      expect(() => assertDigest(bad), bad).toThrow(expect.objectContaining({ code: "DIGEST_INVALID" }) as Error);
    }
  });
  it("refuses algorithms it cannot verify, saying so", () => {
    try {
      assertDigest(`sha512:${"a".repeat(128)}`);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(RegistryError);
      expect((err as RegistryError).message).toMatch(/unsupported digest algorithm: sha512/);
    }
  });
  it("derives file names only from validated hex", () => {
    expect(digestHex(D)).toBe("a".repeat(64));
    expect(() => digestHex("sha256:../../etc/passwd")).toThrow();
  });
  it("hashes whole content to the sha256 digest that names it", () => {
    expect(digestOf(Buffer.alloc(0))).toBe(EMPTY_DIGEST);
    expect(digestOf(Buffer.from("hello"))).toBe(
      "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
    );
    expect(isSha256Digest(digestOf(Buffer.from("x")))).toBe(true);
    expect(verifies(Buffer.from("hello"), digestOf(Buffer.from("hello")))).toBe(true);
    expect(verifies(Buffer.from("hello!"), digestOf(Buffer.from("hello")))).toBe(false);
  });
});
