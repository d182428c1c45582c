// The two readings of a manifest's references: what its repository is confirmed to hold (the basis of links),
// and what it reaches (the basis of pins and walks). Only the second may include `subject` and artifact `blobs`.
import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  confirmedDigests,
  imageBlobs,
  indexEntries,
  isIndexManifest,
  parseManifest,
  platformMatches,
  reachableDigests,
  reachableManifests,
} from "../../../src/oci/manifest.ts";
import { MediaType } from "../../../src/oci/media-types.ts";

const digestOf = (text: string) => `sha256:${createHash("sha256").update(text).digest("hex")}`;
const descriptor = (text: string, mediaType = "application/vnd.oci.image.layer.v1.tar+gzip") => ({
  mediaType,
  digest: digestOf(text),
  size: text.length,
});
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
    const index = {
      schemaVersion: 2,
      manifests: [descriptor("amd64"), descriptor("arm64")],
      subject: descriptor("signed"),
    };
    expect(confirmedDigests(bytes(index))).toEqual([digestOf("amd64"), digestOf("arm64")]);
    expect(reachableDigests(bytes(index)).sort()).toEqual(
      [digestOf("amd64"), digestOf("arm64"), digestOf("signed")].sort(),
    );
    expect(reachableManifests(bytes(index)).sort()).toEqual(
      [digestOf("amd64"), digestOf("arm64"), digestOf("signed")].sort(),
    );
  });

  it("of what it reaches, names as manifests only an index's children and a subject", () => {
    expect(reachableManifests(bytes(image))).toEqual([digestOf("signed")]);
  });

  it("reaches everything a manifest points at, subject and artifact blobs included", () => {
    expect(reachableDigests(bytes(image)).sort()).toEqual(
      ["config", "layer1", "layer2", "signed", "artifact"].map(digestOf).sort(),
    );
  });

  it("names nothing for what does not parse or is not an object, and skips descriptors without a sha256 digest", () => {
    for (const text of ["", "not json", "null", "42", '"a string"', "[]"]) {
      expect(confirmedDigests(Buffer.from(text)), text).toEqual([]);
      expect(reachableDigests(Buffer.from(text)), text).toEqual([]);
      expect(reachableManifests(Buffer.from(text)), text).toEqual([]);
    }
    const odd = {
      config: { digest: "sha512:abc" },
      layers: [null, 5, { digest: 7 }, descriptor("ok")],
      manifests: "not a list",
    };
    expect(confirmedDigests(bytes(odd))).toEqual([digestOf("ok")]);
  });
});

describe("parseManifest", () => {
  it("reads the fields of an image manifest, of an index and of a schema 1 manifest", () => {
    const config = descriptor("config", MediaType.ociManifest);
    const image = parseManifest(
      bytes({
        schemaVersion: 2,
        mediaType: MediaType.ociManifest,
        config,
        layers: [descriptor("l1"), descriptor("l2")],
      }),
    );
    expect(image).toEqual({
      mediaType: MediaType.ociManifest,
      config,
      layers: [descriptor("l1"), descriptor("l2")],
      fsLayers: [],
      blobs: [],
    });
    const amd64 = {
      ...descriptor("amd64", MediaType.ociManifest),
      platform: { os: "linux", architecture: "amd64" },
      annotations: { "org.example": "x" },
    };
    expect(parseManifest(bytes({ schemaVersion: 2, manifests: [amd64] })).manifests).toEqual([amd64]);
    const schema1 = parseManifest(
      bytes({ schemaVersion: 1, fsLayers: [{ blobSum: digestOf("l1") }, { blobSum: 7 }, null] }),
    );
    expect(schema1.fsLayers).toEqual([{ digest: digestOf("l1") }]);
    expect(imageBlobs(schema1)).toEqual([{ digest: digestOf("l1") }]);
  });

  it("reads a field of the wrong type as absent, and a list entry without a string digest as no descriptor", () => {
    const odd = parseManifest(
      bytes({
        mediaType: 5,
        config: "x",
        layers: { digest: digestOf("l") },
        blobs: [7, { digest: 7 }, { digest: "d", size: "9", mediaType: 1, annotations: { a: "b", n: 1 } }],
      }),
    );
    expect(odd).toEqual({ layers: [], fsLayers: [], blobs: [{ digest: "d", annotations: { a: "b" } }] });
    for (const text of ["", "not json", "null", "42", '"a string"', "[]"])
      expect(parseManifest(Buffer.from(text)), text).toEqual({ layers: [], fsLayers: [], blobs: [] });
  });

  it("tells an index by its media type, or by the shape of its JSON when the media type says otherwise", () => {
    expect(isIndexManifest(MediaType.ociIndex, parseManifest(bytes({})))).toBe(true);
    expect(isIndexManifest(MediaType.dockerManifestList, parseManifest(bytes({})))).toBe(true);
    expect(isIndexManifest("application/json", parseManifest(bytes({ manifests: [] })))).toBe(true);
    expect(
      isIndexManifest(
        MediaType.ociManifest,
        parseManifest(bytes({ manifests: "not a list", config: descriptor("c") })),
      ),
    ).toBe(false);
  });

  it("names an image's blobs: config first, then layers in order", () => {
    const doc = parseManifest(bytes({ layers: [descriptor("l1"), descriptor("l2")], config: descriptor("c") }));
    expect(imageBlobs(doc).map((d) => d.digest)).toEqual([digestOf("c"), digestOf("l1"), digestOf("l2")]);
    expect(imageBlobs(parseManifest(bytes({ layers: [] })))).toEqual([]);
  });
});

describe("index entries", () => {
  it("keeps every entry of the list in place, undefined where an entry is no descriptor", () => {
    const ok = { ...descriptor("ok"), annotations: { "org.opencontainers.image.ref.name": "x" } };
    expect(indexEntries(bytes({ manifests: [ok, 5, { digest: 7 }, null] }))).toEqual([
      ok,
      undefined,
      undefined,
      undefined,
    ]);
    expect(indexEntries(bytes({ manifests: [] }))).toEqual([]);
  });

  it("is undefined for what is no index", () => {
    for (const text of ["", "null", "[]", JSON.stringify({ manifests: {} }), JSON.stringify({ layers: [] })])
      expect(indexEntries(Buffer.from(text)), text).toBeUndefined();
  });
});

describe("platformMatches", () => {
  const on = (platform: unknown) =>
    parseManifest(bytes({ manifests: [{ ...descriptor("m"), ...(platform === undefined ? {} : { platform }) }] }))
      .manifests![0]!;

  it("selects every entry when no platform is asked for", () => {
    expect(platformMatches(on(undefined), [])).toBe(true);
    expect(platformMatches(on({ os: "linux", architecture: "amd64" }), [])).toBe(true);
  });

  it("matches os and architecture, and the variant only when one is asked for", () => {
    const arm64v8 = on({ os: "linux", architecture: "arm64", variant: "v8" });
    expect(platformMatches(arm64v8, ["linux/arm64"])).toBe(true);
    expect(platformMatches(arm64v8, ["linux/arm64/v8"])).toBe(true);
    expect(platformMatches(arm64v8, ["linux/arm64/v7"])).toBe(false);
    expect(platformMatches(arm64v8, ["linux/amd64", "linux/arm64/v8"])).toBe(true);
    expect(platformMatches(on({ os: "linux", architecture: "amd64" }), ["linux/arm64", "windows/amd64"])).toBe(false);
  });

  it("never selects an entry without a platform, or whose platform is no object, for a non-empty selection", () => {
    expect(platformMatches(on(undefined), ["linux/amd64"])).toBe(false);
    expect(platformMatches(on(null), ["linux/amd64"])).toBe(false);
    expect(platformMatches(on("linux/amd64"), ["linux/amd64"])).toBe(false);
    expect(platformMatches(on({ os: 1, architecture: "amd64" }), ["linux/amd64"])).toBe(false);
  });
});
