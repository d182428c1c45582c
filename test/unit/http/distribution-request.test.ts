import { describe, expect, it } from "vitest";
import { parseDistributionRequest, type RawRequest } from "../../../src/http/distribution-request.ts";

const D = `sha256:${"b".repeat(64)}`;
const req = (method: string, path: string, headers: RawRequest["headers"] = {}, query = ""): RawRequest => ({
  method,
  path,
  query: new URLSearchParams(query),
  headers,
});
const code = (r: RawRequest) => {
  try {
    parseDistributionRequest(r);
    return "ok";
  } catch (err) {
    return `${(err as { status: number }).status} ${(err as { code: string }).code}`;
  }
};

describe("parseDistributionRequest", () => {
  it("parses manifests, blobs and tags endpoints", () => {
    expect(
      parseDistributionRequest(req("GET", "/v2/library/alpine/manifests/3.20", { accept: "a/b" }, "ns=docker.io")),
    ).toMatchObject({
      kind: "manifest",
      name: "library/alpine",
      ns: "docker.io",
      reference: { kind: "tag", tag: "3.20" },
    });
    expect(parseDistributionRequest(req("HEAD", `/v2/a/b/c/blobs/${D}`, { range: "bytes=1-2" }))).toMatchObject({
      kind: "blob",
      method: "HEAD",
      name: "a/b/c",
      digest: D,
      range: { kind: "from", start: 1, end: 2 },
    });
    expect(parseDistributionRequest(req("GET", "/v2/x/tags/list", {}, "n=5&last=a"))).toMatchObject({
      kind: "tags",
      page: { n: 5, last: "a" },
    });
    expect(parseDistributionRequest(req("GET", "/v2/x/tags/list"))).toMatchObject({
      page: { n: undefined, last: undefined },
    });
  });
  it("refuses a tags/list n that is no non-negative integer, and a last that is no tag, before any I/O", () => {
    for (const n of ["-1", "", "1.5", "abc"])
      expect(code(req("GET", "/v2/x/tags/list", {}, `n=${n}`)), n).toBe("400 UNSUPPORTED");
    for (const last of ["", ".a", "a".repeat(129), "a/b", "a%2Fb"])
      expect(code(req("GET", "/v2/x/tags/list", {}, `last=${encodeURIComponent(last)}`)), last).toBe("400 TAG_INVALID");
    expect(parseDistributionRequest(req("GET", "/v2/x/tags/list", {}, "n=99999999"))).toMatchObject({
      page: { n: 10_000 },
    });
  });
  it("returns undefined for paths that are not distribution endpoints", () => {
    expect(parseDistributionRequest(req("GET", "/v2/"))).toBeUndefined();
    expect(parseDistributionRequest(req("GET", "/healthz"))).toBeUndefined();
    expect(parseDistributionRequest(req("GET", "/v2/_catalog"))).toBeUndefined();
  });
  it("answers write methods and uploads with 405 UNSUPPORTED", () => {
    expect(code(req("PUT", "/v2/a/manifests/t"))).toBe("405 UNSUPPORTED");
    expect(code(req("DELETE", `/v2/a/blobs/${D}`))).toBe("405 UNSUPPORTED");
    expect(code(req("POST", "/v2/a/blobs/uploads/"))).toBe("405 UNSUPPORTED");
    expect(code(req("PATCH", "/v2/a/blobs/uploads/123"))).toBe("405 UNSUPPORTED");
    expect(code(req("HEAD", "/v2/a/tags/list"))).toBe("405 UNSUPPORTED");
  });
  it("refuses traversal and encoded names with NAME_INVALID before any I/O", () => {
    for (const path of [
      "/v2/../etc/manifests/x",
      "/v2/a/../../manifests/x",
      "/v2/a%2F..%2Fb/manifests/x",
      "/v2/%2e%2e/blobs/" + D,
      "/v2//abs/manifests/x",
      `/v2/${"a".repeat(256)}/manifests/x`,
    ]) {
      expect(code(req("GET", path)), path).toBe("400 NAME_INVALID");
    }
  });
  it("refuses bad digests and tags", () => {
    expect(code(req("GET", "/v2/a/blobs/sha256:123"))).toBe("400 DIGEST_INVALID");
    expect(code(req("GET", "/v2/a/blobs/latest"))).toBe("400 DIGEST_INVALID");
  });
  it("answers a manifest reference that cannot exist as an unknown manifest (404), tags and digests alike", () => {
    for (const reference of [".INVALID_MANIFEST_NAME", ".bad", "-v1", "a".repeat(129), "sha256:..%2f", "sha256:123"]) {
      expect(code(req("GET", `/v2/a/manifests/${reference}`)), reference).toBe("404 MANIFEST_UNKNOWN");
      expect(code(req("HEAD", `/v2/a/manifests/${reference}`)), reference).toBe("404 MANIFEST_UNKNOWN");
    }
    expect(code(req("GET", `/v2/a/manifests/sha512:${"a".repeat(128)}`))).toBe("404 MANIFEST_UNKNOWN");
  });
  it("parses the referrers endpoint: GET only, a sha256 digest, an artifactType that is a media type", () => {
    expect(
      parseDistributionRequest(req("GET", `/v2/a/b/referrers/${D}`, {}, "artifactType=application/vnd.x.sig%2Bjson")),
    ).toEqual({
      method: "GET",
      name: "a/b",
      ns: undefined,
      kind: "referrers",
      digest: D,
      artifactType: "application/vnd.x.sig+json",
    });
    expect(parseDistributionRequest(req("GET", `/v2/a/referrers/${D}`))).toMatchObject({ artifactType: undefined });
    // A repository may be named `referrers`: its manifests are still manifests.
    expect(parseDistributionRequest(req("GET", "/v2/a/referrers/manifests/v1"))).toMatchObject({
      kind: "manifest",
      name: "a/referrers",
    });
    expect(code(req("HEAD", `/v2/a/referrers/${D}`))).toBe("405 UNSUPPORTED");
    expect(code(req("DELETE", `/v2/a/referrers/${D}`))).toBe("405 UNSUPPORTED");
    expect(code(req("GET", "/v2/a/referrers/sha256:123"))).toBe("400 DIGEST_INVALID");
    expect(code(req("GET", "/v2/a/referrers/latest"))).toBe("400 DIGEST_INVALID");
    expect(code(req("GET", `/v2/a/referrers/sha512:${"a".repeat(128)}`))).toBe("400 DIGEST_INVALID");
    for (const bad of ["sig", "a/b/c", "a/b;x=1", "/b", "a/", `a/${"b".repeat(200)}`])
      expect(code(req("GET", `/v2/a/referrers/${D}`, {}, `artifactType=${encodeURIComponent(bad)}`)), bad).toBe(
        "400 UNSUPPORTED",
      );
    expect(code(req("GET", `/v2/A/referrers/${D}`))).toBe("400 NAME_INVALID");
  });
});
