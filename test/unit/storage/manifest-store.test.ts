import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { putContent } from "../../../src/storage/content-store.ts";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import { Janitor } from "../../../src/cache/janitor.ts";
import { ManifestStore } from "../../../src/storage/manifest-store.ts";
import { EmbeddedMetadataStore } from "../../../src/metadata/embedded-metadata-store.ts";
import { PinList } from "../../../src/storage/pin-list.ts";

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";

describe("ManifestStore", () => {
  let dir: string;
  let store: BlobStore;
  let manifests: ManifestStore;
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { digest: `sha256:${"c".repeat(64)}`, size: 2 },
      layers: [],
    }),
  );
  const digest = digestOf(manifest);

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "manifest-store-"));
    store = new BlobStore(dir);
    await store.init();
    manifests = new ManifestStore(store);
    await manifests.init();
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** Where the media-type sidecar of `digest` lives. */
  const sidecarOf = (d: string) => join(dir, "manifests", "sha256", d.slice(7, 9), `${d.slice(7)}.json`);

  /** What a restarted process sees: the same directory, no memory copy. */
  async function restarted(): Promise<ManifestStore> {
    const fresh = new ManifestStore(store);
    await fresh.init();
    return fresh;
  }

  it("stores concurrent puts of one manifest, each of them, and leaves no temp file", async () => {
    const results = await Promise.allSettled(
      Array.from({ length: 8 }, () => manifests.put(digest, OCI_MANIFEST, manifest)),
    );
    expect(results.filter((r) => r.status === "rejected")).toEqual([]);
    expect(JSON.parse(await readFile(sidecarOf(digest), "utf8"))).toEqual({
      mediaType: OCI_MANIFEST,
      size: manifest.length,
    });
    expect(await readdir(join(sidecarOf(digest), ".."))).toEqual([`${digest.slice(7)}.json`]);
    expect(await store.tempFiles()).toEqual([]);
    expect((await (await restarted()).get(digest))?.bytes.equals(manifest)).toBe(true);
  });

  for (const [damage, text] of [
    ["empty (a power cut before the data reached the disk)", ""],
    ["torn", '{"mediaType":"application/vnd.oci.ima'],
    ["without a media type", JSON.stringify({ size: manifest.length })],
  ] as const) {
    it(`reads a sidecar that is ${damage} as absent, and the next put repairs it`, async () => {
      await manifests.put(digest, OCI_MANIFEST, manifest);
      await writeFile(sidecarOf(digest), text);
      const fresh = await restarted();
      await expect(fresh.get(digest)).resolves.toBeUndefined();
      // The manifest is fetched again and put: the sidecar is whole again, and the manifest servable.
      await fresh.put(digest, OCI_MANIFEST, manifest);
      expect((await (await restarted()).get(digest))?.mediaType).toBe(OCI_MANIFEST);
    });
  }

  it("a pinned manifest with a damaged sidecar does not stop eviction", async () => {
    await manifests.put(digest, OCI_MANIFEST, manifest);
    const pins = new PinList(dir);
    await pins.set([{ reference: "docker.io/library/app:1", digest }]);
    for (let i = 0; i < 10; i++) {
      const bytes = randomBytes(100_000);
      await putContent(store, digestOf(bytes), bytes);
    }
    await writeFile(sidecarOf(digest), "");
    const metadata = new EmbeddedMetadataStore();
    const janitor = new Janitor({
      store,
      manifests: await restarted(),
      metadata,
      budget: { maxSize: 500_000, high: 0.9, low: 0.5 },
      pins: [],
      pinList: pins,
      log: pino({ level: "silent" }),
      fsUsage: async () => ({ total: 1e12, free: 1e12 }),
    });
    expect(store.index.bytes).toBeGreaterThan(1_000_000);
    await janitor.check();
    expect(store.index.bytes).toBeLessThanOrEqual(500_000);
    expect(store.index.has(digest)).toBe(true); // the pinned manifest itself is kept
    await metadata.close();
  });
});
