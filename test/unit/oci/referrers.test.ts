import { describe, expect, it } from "vitest";
import { digestOf } from "../../../src/oci/digest.ts";
import {
  filterReferrers,
  isMediaType,
  parseReferrersIndex,
  referrerOf,
  referrersFallbackTag,
  renderReferrersIndex,
  type ReferrerDescriptor,
} from "../../../src/oci/referrers.ts";

const INDEX = "application/vnd.oci.image.index.v1+json";
const MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const D1 = `sha256:${"1".repeat(64)}`;
const D2 = `sha256:${"2".repeat(64)}`;
const SUBJECT = `sha256:${"5".repeat(64)}`;
const sig: ReferrerDescriptor = {
  mediaType: MANIFEST,
  digest: D1,
  size: 10,
  artifactType: "application/vnd.x.sig",
  annotations: { a: "b" },
};
const sbom: ReferrerDescriptor = { mediaType: MANIFEST, digest: D2, size: 20, artifactType: "application/vnd.x.sbom" };
const json = (value: unknown) => Buffer.from(JSON.stringify(value));

describe("parseReferrersIndex", () => {
  it("reads an image index's descriptors, with and without the optional fields", () => {
    expect(parseReferrersIndex(json({ schemaVersion: 2, mediaType: INDEX, manifests: [sig, sbom] }))).toEqual([
      sig,
      sbom,
    ]);
    expect(parseReferrersIndex(json({ manifests: [] }))).toEqual([]);
    // Fields a referrers answer does not carry are dropped (a platform, unknown ones).
    expect(parseReferrersIndex(json({ manifests: [{ ...sbom, platform: { os: "linux" }, extra: 1 }] }))).toEqual([
      sbom,
    ]);
  });

  it("refuses what is not a referrers index, and an index with any entry that is not a full descriptor", () => {
    for (const bad of [
      Buffer.from("not json"),
      json(null),
      json([sig]),
      json({ schemaVersion: 2 }),
      json({ manifests: {} }),
      json({ mediaType: MANIFEST, manifests: [] }),
      json({ schemaVersion: 1, manifests: [] }),
      json({ manifests: [sig, null] }),
      json({ manifests: [{ ...sig, digest: "sha256:abc" }] }),
      json({ manifests: [{ ...sig, digest: `sha512:${"a".repeat(128)}` }] }),
      json({ manifests: [{ ...sig, size: -1 }] }),
      json({ manifests: [{ ...sig, size: 1.5 }] }),
      json({ manifests: [{ ...sig, size: "10" }] }),
      json({ manifests: [{ digest: D1, size: 1 }] }),
      json({ manifests: [{ ...sig, mediaType: "nonsense" }] }),
      json({ manifests: [{ ...sig, artifactType: 3 }] }),
      json({ manifests: [{ ...sig, annotations: { a: 1 } }] }),
      json({ manifests: [{ ...sig, annotations: [] }] }),
    ])
      expect(parseReferrersIndex(bad), bad.toString()).toBeUndefined();
  });
});

describe("renderReferrersIndex", () => {
  it("renders the same list as the same bytes, which parse back to it", () => {
    const bytes = renderReferrersIndex([sig, sbom]);
    expect(JSON.parse(bytes.toString())).toEqual({ schemaVersion: 2, mediaType: INDEX, manifests: [sig, sbom] });
    expect(parseReferrersIndex(bytes)).toEqual([sig, sbom]);
    // Field order in the input does not matter.
    const shuffled = {
      size: 20,
      artifactType: sbom.artifactType,
      digest: D2,
      mediaType: MANIFEST,
    } as ReferrerDescriptor;
    expect(renderReferrersIndex([sig, shuffled]).equals(bytes)).toBe(true);
    expect(renderReferrersIndex([]).toString()).toBe(`{"schemaVersion":2,"mediaType":"${INDEX}","manifests":[]}`);
  });
});

describe("filterReferrers", () => {
  it("keeps the descriptors of one artifact type, or all without a filter", () => {
    expect(filterReferrers([sig, sbom], undefined)).toEqual([sig, sbom]);
    expect(filterReferrers([sig, sbom], "application/vnd.x.sbom")).toEqual([sbom]);
    expect(filterReferrers([sig, sbom], "application/other")).toEqual([]);
  });
});

describe("referrerOf", () => {
  const manifest = (doc: unknown) => {
    const bytes = json(doc);
    return { digest: digestOf(bytes), mediaType: MANIFEST, bytes };
  };
  it("describes a manifest whose subject is the digest, its artifact type from artifactType or else the config", () => {
    const withType = manifest({
      artifactType: "application/vnd.x.sig",
      config: { mediaType: "application/vnd.oci.empty.v1+json", digest: D2, size: 2 },
      subject: { mediaType: MANIFEST, digest: SUBJECT, size: 1 },
      annotations: { k: "v" },
    });
    expect(referrerOf(withType, SUBJECT)).toEqual({
      mediaType: MANIFEST,
      digest: withType.digest,
      size: withType.bytes.length,
      artifactType: "application/vnd.x.sig",
      annotations: { k: "v" },
    });
    const byConfig = manifest({
      config: { mediaType: "application/vnd.x.sbom.config", digest: D2, size: 2 },
      subject: { digest: SUBJECT },
    });
    expect(referrerOf(byConfig, SUBJECT)?.artifactType).toBe("application/vnd.x.sbom.config");
  });
  it("is undefined for a manifest without that subject", () => {
    expect(referrerOf(manifest({ subject: { digest: D1 } }), SUBJECT)).toBeUndefined();
    expect(referrerOf(manifest({ config: {} }), SUBJECT)).toBeUndefined();
    expect(referrerOf({ digest: D1, mediaType: MANIFEST, bytes: Buffer.from("[") }, SUBJECT)).toBeUndefined();
  });
});

describe("isMediaType and the fallback tag", () => {
  it("accepts type/subtype only", () => {
    expect(isMediaType("application/vnd.dev.cosign.artifact.sig.v1+json")).toBe(true);
    for (const bad of ["", "a", "a/", "/b", "a/b/c", "a/b; charset=x", "a b/c"])
      expect(isMediaType(bad), bad).toBe(false);
  });
  it("names sha256:<hex> as sha256-<hex>, a valid tag", () => {
    expect(referrersFallbackTag(SUBJECT)).toBe(`sha256-${"5".repeat(64)}`);
    expect(() => referrersFallbackTag("sha256:x")).toThrow();
  });
});
