import { describe, expect, it } from "vitest";
import { AcceptSet, MediaType } from "../../../src/oci/media-types.ts";

describe("AcceptSet", () => {
  it("treats several separate Accept headers as one set (dockerd, containers/image)", () => {
    const accept = AcceptSet.parse([MediaType.dockerManifest, MediaType.ociIndex]);
    expect(accept.accepts(MediaType.dockerManifest)).toBe(true);
    expect(accept.accepts(MediaType.ociIndex)).toBe(true);
    expect(accept.accepts(MediaType.ociManifest)).toBe(false);
  });
  it("parses one comma-joined header ending in */* (containerd)", () => {
    const accept = AcceptSet.parse(`${MediaType.dockerManifest}, ${MediaType.ociManifest}, */*`);
    expect(accept.accepts(MediaType.dockerManifestList)).toBe(true);
  });
  it("accepts anything without an Accept header", () => {
    expect(AcceptSet.parse(undefined).accepts(MediaType.ociIndex)).toBe(true);
  });
  it("honours q=0 exclusions and the most specific match", () => {
    const accept = AcceptSet.parse(`*/*, ${MediaType.ociIndex};q=0`);
    expect(accept.accepts(MediaType.ociIndex)).toBe(false);
    expect(accept.accepts(MediaType.ociManifest)).toBe(true);
    expect(AcceptSet.parse("application/*").accepts(MediaType.ociIndex)).toBe(true);
    expect(AcceptSet.parse("text/*").accepts(MediaType.ociIndex)).toBe(false);
  });
  it("ignores parameters and case on the response type", () => {
    expect(
      AcceptSet.parse(MediaType.ociManifest).accepts(`${MediaType.ociManifest.toUpperCase()}; charset=utf-8`),
    ).toBe(true);
  });
});
