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
  it("parses a header once while it is among the 64 most recently new ones; a longer header every time", () => {
    for (let i = 0; i < 64; i++) AcceptSet.parse(`application/x-earlier-${i}`); // whatever other tests parsed goes
    const header = `${MediaType.ociManifest}, ${MediaType.ociIndex};q=0.5`;
    const first = AcceptSet.parse(header);
    expect(AcceptSet.parse(header)).toBe(first);
    for (let i = 0; i < 63; i++) AcceptSet.parse(`application/x-${i}`);
    expect(AcceptSet.parse(header)).toBe(first);
    AcceptSet.parse("application/x-one-more");
    const again = AcceptSet.parse(header);
    expect(again).not.toBe(first);
    expect(again.toString()).toBe(first.toString());
    const long = `${MediaType.ociManifest}, ${"application/x-padding, ".repeat(50)}`;
    expect(long.length).toBeGreaterThan(1024);
    expect(AcceptSet.parse(long)).not.toBe(AcceptSet.parse(long));
    expect(AcceptSet.parse(long).accepts(MediaType.ociManifest)).toBe(true);
  });
  it("decides each media type the same every time, for each header on its own", () => {
    const oci = AcceptSet.parse(MediaType.ociManifest);
    const docker = AcceptSet.parse(MediaType.dockerManifest);
    for (let i = 0; i < 3; i++) {
      expect(oci.accepts(MediaType.ociManifest)).toBe(true);
      expect(oci.accepts(MediaType.dockerManifest)).toBe(false);
      expect(docker.accepts(MediaType.ociManifest)).toBe(false);
      expect(docker.accepts(MediaType.dockerManifest)).toBe(true);
    }
    // Case and parameters still do not matter once a type was decided in another spelling.
    expect(oci.accepts(`${MediaType.ociManifest.toUpperCase()}; charset=utf-8`)).toBe(true);
  });
});
