/**
 * credentialsWouldFollow: the rule by which the blob handler keeps an authenticated client's credentials away from
 * the object store in redirect mode. It mirrors what Go's HTTP client (dockerd, containerd, podman, skopeo) does
 * with an Authorization header on a redirect: kept for the same host name or a subdomain of it, any port, dropped
 * otherwise. The redirect itself, with real clients, is in e2e/s3-redirect.test.ts.
 */
import { describe, expect, it } from "vitest";
import { credentialsWouldFollow } from "../../../src/registry/blob-handler.ts";

const S3 = "http://127.0.0.1:7480/mirror/blobs/sha256/ab?X-Amz-Signature=00";

describe("credentialsWouldFollow", () => {
  it("follows to the same host name on another port, in any letter case", () => {
    expect(credentialsWouldFollow("127.0.0.1:5000", S3)).toBe(true);
    expect(credentialsWouldFollow("Mirror.Example:5000", "https://mirror.example/b/k?sig=1")).toBe(true);
    expect(credentialsWouldFollow("[::1]:5000", "http://[::1]:7480/b/k")).toBe(true);
  });

  it("follows to a subdomain of the mirror's host name", () => {
    expect(credentialsWouldFollow("corp.example", "https://s3.corp.example/b/k")).toBe(true);
    expect(credentialsWouldFollow("corp.example:443", "https://bucket.s3.corp.example/k")).toBe(true);
  });

  it("stays behind for another host name, a parent domain, a look-alike suffix, or another address", () => {
    expect(credentialsWouldFollow("localhost:5000", S3)).toBe(false);
    expect(credentialsWouldFollow("mirror.corp.example", "https://s3.corp.example/b/k")).toBe(false);
    expect(credentialsWouldFollow("s3.corp.example", "https://corp.example/b/k")).toBe(false);
    expect(credentialsWouldFollow("corp.example", "https://evilcorp.example/b/k")).toBe(false);
    expect(credentialsWouldFollow("0.0.1", "http://10.0.0.1/b/k")).toBe(false);
    expect(credentialsWouldFollow("[::1]:5000", S3)).toBe(false);
  });

  it("counts an unknown or unreadable host as following", () => {
    expect(credentialsWouldFollow(undefined, S3)).toBe(true);
    expect(credentialsWouldFollow("", S3)).toBe(true);
    expect(credentialsWouldFollow("bad host name", S3)).toBe(true);
  });
});
