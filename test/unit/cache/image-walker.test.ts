import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { MAX_INDEX_DEPTH, walkManifests, type ChildSource } from "../../../src/cache/image-walker.ts";
import type { Descriptor } from "../../../src/oci/manifest.ts";
import type { StoredManifest } from "../../../src/storage/manifest-store.ts";
import { MediaType } from "../../../src/oci/media-types.ts";

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** Manifests by digest: the walk's source, and a record of what it asked for. */
class Manifests {
  readonly byDigest = new Map<string, StoredManifest>();
  readonly asked: string[] = [];
  readonly source: ChildSource = async (d) => {
    this.asked.push(d.digest);
    return this.byDigest.get(d.digest);
  };

  add(mediaType: string, doc: object): StoredManifest & { descriptor: Descriptor } {
    const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType, ...doc }));
    const m = { digest: digestOf(bytes), mediaType, bytes };
    this.byDigest.set(m.digest, m);
    return { ...m, descriptor: { mediaType, digest: m.digest, size: bytes.length } };
  }

  image(name: string) {
    const blob = (kind: string) => ({
      mediaType: "application/octet-stream",
      digest: digestOf(Buffer.from(`${name}-${kind}`)),
      size: 10,
    });
    return this.add(MediaType.ociManifest, { config: blob("config"), layers: [blob("layer")] });
  }

  index(children: Array<{ descriptor: Descriptor }>, platforms: Array<string | undefined> = []) {
    return this.add(MediaType.ociIndex, {
      manifests: children.map((c, i) => {
        const [os, architecture] = platforms[i]?.split("/") ?? [];
        return { ...c.descriptor, ...(platforms[i] !== undefined ? { platform: { os, architecture } } : {}) };
      }),
    });
  }
}

describe("walkManifests", () => {
  it("follows indexes of indexes to every image, each manifest once, blobs deduplicated", async () => {
    const m = new Manifests();
    const amd64 = m.image("amd64");
    const arm64 = m.image("arm64");
    const inner = m.index([amd64, arm64], ["linux/amd64", "linux/arm64"]);
    const other = m.index([arm64], ["linux/arm64"]);
    // amd64 is listed twice at the top and once inside: walked the first time only.
    const top = m.index([inner, other, amd64, amd64], [undefined, undefined, "linux/amd64", "linux/amd64"]);
    const walked = await walkManifests(top, m.source);
    expect(walked.children.map((c) => c.digest)).toEqual([inner.digest, amd64.digest, arm64.digest, other.digest]);
    expect(walked.images.map((c) => c.digest)).toEqual([amd64.digest, arm64.digest]);
    expect(walked.blobs.size).toBe(4);
    expect(new Set(m.asked).size).toBe(m.asked.length);
    expect(walked.absent).toEqual([]);
  });

  it("selects platforms inside a nested index that names none itself", async () => {
    const m = new Manifests();
    const amd64 = m.image("amd64");
    const arm64 = m.image("arm64");
    const top = m.index([m.index([amd64, arm64], ["linux/amd64", "linux/arm64"])]);
    const walked = await walkManifests(top, m.source, { platforms: ["linux/arm64"] });
    expect(walked.images.map((c) => c.digest)).toEqual([arm64.digest]);
    expect(m.asked).not.toContain(amd64.digest);
  });

  it("reports children its source does not have, and walks the rest", async () => {
    const m = new Manifests();
    const amd64 = m.image("amd64");
    const arm64 = m.image("arm64");
    const top = m.index([m.index([amd64, arm64])]);
    m.byDigest.delete(arm64.digest);
    const walked = await walkManifests(top, m.source);
    expect(walked.absent.map((d) => d.digest)).toEqual([arm64.digest]);
    expect(walked.images.map((c) => c.digest)).toEqual([amd64.digest]);
  });

  it(`walks ${MAX_INDEX_DEPTH} levels of nested indexes and refuses one more`, async () => {
    const m = new Manifests();
    let chain: ReturnType<Manifests["add"]> = m.image("deep");
    for (let level = 0; level < MAX_INDEX_DEPTH; level++) chain = m.index([chain]);
    expect((await walkManifests(m.index([chain]), m.source)).images).toHaveLength(1);
    await expect(walkManifests(m.index([m.index([chain])]), m.source)).rejects.toThrow(
      `indexes nested more than ${MAX_INDEX_DEPTH} levels deep`,
    );
  });

  it("reads fields of the wrong type as absent: an index without a list reaches nothing, an image without blobs is refused", async () => {
    const m = new Manifests();
    const listless = m.add(MediaType.ociIndex, { manifests: { digest: m.image("x").digest } });
    expect(await walkManifests(listless, m.source)).toMatchObject({ children: [], images: [], absent: [] });
    const odd = m.add(MediaType.ociManifest, { config: "none", layers: { digest: "sha256:0" } });
    await expect(walkManifests(odd, m.source)).rejects.toThrow(
      `${odd.digest} lists neither child manifests nor a config`,
    );
  });

  it("walks a schema 1 manifest's fsLayers as its blobs", async () => {
    const m = new Manifests();
    const layer = `sha256:${"c".repeat(64)}`;
    const schema1 = m.add(MediaType.dockerSchema1Signed, {
      schemaVersion: 1,
      fsLayers: [{ blobSum: layer }, { blobSum: layer }],
    });
    const walked = await walkManifests(schema1, m.source);
    expect(walked.images.map((i) => i.digest)).toEqual([schema1.digest]);
    expect([...walked.blobs.keys()]).toEqual([layer]);
  });

  it("refuses a manifest that is neither an index nor an image", async () => {
    const m = new Manifests();
    const odd = m.add(MediaType.ociManifest, { layers: [] });
    await expect(walkManifests(m.index([odd]), m.source)).rejects.toThrow(
      `${odd.digest} lists neither child manifests nor a config`,
    );
  });
});
