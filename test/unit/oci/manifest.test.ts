// The two readings of a manifest's references: what its repository is confirmed to hold (the basis of links),
// and what it reaches (the basis of pins and walks). Only the second may include `subject` and artifact `blobs`.
import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { confirmedDigests, reachableDigests, reachableManifests } from "../../../src/oci/manifest.ts";

const digestOf = (text: string) => `sha256:${createHash("sha256").update(text).digest("hex")}`;
const descriptor = (text: string, mediaType = "application/vnd.oci.image.layer.v1.tar+gzip") => ({ mediaType, digest: digestOf(text), size: text.length });
const bytes = (doc: unknown) => Buffer.from(JSON.stringify(doc));

describe("manifest references", () => {
  const image = {
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: descriptor("config", "application/vnd.oci.image.config.v1+json"),
    layers: [descriptor("layer1"), descriptor("layer2")],
    subject: descriptor("signed", "application/vnd.oci.image.manifest.v1+json"),
    blobs: [descriptor("artifact")],
  };

  it("confirms an image manifest's config and layers, never its subject or artifact blobs", () => {
    expect(confirmedDigests(bytes(image))).toEqual([digestOf("config"), digestOf("layer1"), digestOf("layer2")]);
  });

  it("confirms an index's child manifests, not its subject", () => {
    const index = { schemaVersion: 2, manifests: [descriptor("amd64"), descriptor("arm64")], subject: descriptor("signed") };
    expect(confirmedDigests(bytes(index))).toEqual([digestOf("amd64"), digestOf("arm64")]);
    expect(reachableDigests(bytes(index)).sort()).toEqual([digestOf("amd64"), digestOf("arm64"), digestOf("signed")].sort());
    expect(reachableManifests(bytes(index)).sort()).toEqual([digestOf("amd64"), digestOf("arm64"), digestOf("signed")].sort());
  });

  it("of what it reaches, names as manifests only an index's children and a subject", () => {
    expect(reachableManifests(bytes(image))).toEqual([digestOf("signed")]);
  });

  it("reaches everything a manifest points at, subject and artifact blobs included", () => {
    expect(reachableDigests(bytes(image)).sort()).toEqual(["config", "layer1", "layer2", "signed", "artifact"].map(digestOf).sort());
  });

  it("names nothing for what does not parse or is not an object, and skips descriptors without a sha256 digest", () => {
    for (const text of ["", "not json", "null", "42", '"a string"', "[]"]) {
      expect(confirmedDigests(Buffer.from(text)), text).toEqual([]);
      expect(reachableDigests(Buffer.from(text)), text).toEqual([]);
      expect(reachableManifests(Buffer.from(text)), text).toEqual([]);
    }
    const odd = { config: { digest: "sha512:abc" }, layers: [null, 5, { digest: 7 }, descriptor("ok")], manifests: "not a list" };
    expect(confirmedDigests(bytes(odd))).toEqual([digestOf("ok")]);
  });
});
