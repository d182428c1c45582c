import { describe, expect, it } from "vitest";
import { formatReference, splitImageReference } from "../../../src/oci/image-reference.ts";

const D = `sha256:${"b".repeat(64)}`;

describe("splitImageReference", () => {
  it("splits a name from its tag or digest, and leaves the reference undefined when there is neither", () => {
    expect(splitImageReference("docker.io/library/alpine:3.20")).toEqual({
      name: "docker.io/library/alpine",
      reference: "3.20",
    });
    expect(splitImageReference(`ghcr.io/team/tool@${D}`)).toEqual({ name: "ghcr.io/team/tool", reference: D });
    expect(splitImageReference("alpine")).toEqual({ name: "alpine", reference: undefined });
  });

  it("reads a colon before the last slash as a registry port, not a tag", () => {
    expect(splitImageReference("registry.local:5000/team/app")).toEqual({
      name: "registry.local:5000/team/app",
      reference: undefined,
    });
    expect(splitImageReference("registry.local:5000/team/app:1")).toEqual({
      name: "registry.local:5000/team/app",
      reference: "1",
    });
  });

  it("lets a digest decide over a tag written before it", () => {
    expect(splitImageReference(`alpine:3.20@${D}`)).toEqual({ name: "alpine", reference: D });
    expect(splitImageReference(`registry.local:5000/app@${D}`)).toEqual({
      name: "registry.local:5000/app",
      reference: D,
    });
  });

  it("checks nothing: an empty tag or digest is split off as written", () => {
    expect(splitImageReference("alpine:")).toEqual({ name: "alpine", reference: "" });
    expect(splitImageReference("alpine@")).toEqual({ name: "alpine", reference: "" });
  });
});

describe("formatReference", () => {
  it("writes the canonical form: upstream, repository, then :tag or @digest", () => {
    expect(formatReference("docker.io", "library/alpine", { kind: "tag", tag: "3.20" })).toBe(
      "docker.io/library/alpine:3.20",
    );
    expect(formatReference("ghcr.io", "team/tool", { kind: "digest", digest: D })).toBe(`ghcr.io/team/tool@${D}`);
  });
});
