/**
 * The importer's write path alone: real content and manifest stores on a temp dir, the embedded metadata store,
 * a pin list; the budget is a fake admission that records when each reservation is released.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { EmbeddedMetadataStore } from "../../../src/metadata/embedded-metadata-store.ts";
import { MediaType } from "../../../src/oci/media-types.ts";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import type { WriteReservation } from "../../../src/storage/content-store.ts";
import { ManifestStore } from "../../../src/storage/manifest-store.ts";
import { PinList } from "../../../src/storage/pin-list.ts";
import { Importer } from "../../../src/transfer/importer.ts";
import { buildTar, type TarEntry } from "../../harness/tar-writer.ts";

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const blobEntry = (bytes: Buffer): TarEntry => ({
  type: "file",
  name: `blobs/sha256/${digestOf(bytes).slice(7)}`,
  content: bytes,
});

describe("Importer writes", () => {
  let dir: string;
  let store: BlobStore;
  let metadata: EmbeddedMetadataStore;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "importer-"));
    store = new BlobStore(dir);
    await store.init();
    metadata = new EmbeddedMetadataStore();
  });
  afterEach(async () => {
    await metadata.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("holds each blob's reservation until its writer commits or is closed, also while it waits for its index", async () => {
    const layer = randomBytes(50_000);
    const config = Buffer.from(JSON.stringify({ architecture: "amd64", os: "linux" }));
    const loose = randomBytes(1000); // referenced by nothing: refused
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.ociManifest,
        config: {
          mediaType: "application/vnd.oci.image.config.v1+json",
          digest: digestOf(config),
          size: config.length,
        },
        layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest: digestOf(layer), size: layer.length }],
      }),
    );
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          {
            mediaType: MediaType.ociManifest,
            digest: digestOf(manifest),
            size: manifest.length,
            annotations: { "org.opencontainers.image.ref.name": "docker.io/team/app:v1" },
          },
        ],
      }),
    );
    // As skopeo writes an oci-archive: every blob first, index.json last.
    const bundle = buildTar([
      { type: "file", name: "oci-layout", content: Buffer.from('{"imageLayoutVersion": "1.0.0"}') },
      blobEntry(layer),
      blobEntry(config),
      blobEntry(loose),
      blobEntry(manifest),
      { type: "file", name: "index.json", content: index },
    ]);
    const held = new Map<
      number,
      { size: number; released: boolean; committedAtRelease: boolean | undefined; wrote: number }
    >();
    let next = 0;
    const admit = async (size: number): Promise<WriteReservation> => {
      const id = next++;
      const entry = { size, released: false, committedAtRelease: undefined as boolean | undefined, wrote: 0 };
      held.set(id, entry);
      return {
        wrote: (n) => void (entry.wrote = n),
        release: () => {
          entry.released = true;
          entry.committedAtRelease = [layer, config, loose, manifest].some(
            (b) => b.length === size && store.index.has(digestOf(b)),
          );
        },
      };
    };
    const importer = new Importer({
      store,
      manifests: new ManifestStore(store),
      metadata,
      admit,
      pins: new PinList(dir),
      upstreams: [{ name: "docker.io", config: { aliases: [], default: true, libraryPrefix: "library" } }],
      manifestMaxBytes: 4 * 1024 * 1024,
      log: pino({ level: "silent" }),
    });
    const report = await importer.import(Readable.from([bundle]));
    expect(report.images.map((i) => i.status)).toEqual(["imported"]);
    expect(report.refused.map((r) => r.reason)).toEqual([
      "not referenced by index.json or by any verified manifest in the bundle",
    ]);
    const bySize = (b: Buffer) => [...held.values()].find((h) => h.size === b.length)!;
    // Each reservation was told what its writer wrote, and released only once its bytes were in the index.
    for (const blob of [layer, config])
      expect(bySize(blob)).toEqual({ size: blob.length, released: true, committedAtRelease: true, wrote: blob.length });
    // The manifest waited in a writer too; it is stored as a manifest (by the manifest store), its writer closed.
    expect(bySize(manifest)).toMatchObject({ released: true, wrote: manifest.length });
    expect(bySize(loose)).toMatchObject({ released: true, committedAtRelease: false });
    expect(held.size).toBe(4);
    expect(await store.tempFiles()).toEqual([]);
    expect(await store.size(digestOf(loose))).toBeUndefined();
  });

  it("hashes every entry, also one the cache already holds or the bundle repeats: a damaged copy is refused, nothing changes", async () => {
    const layer = randomBytes(300_000);
    const config = Buffer.from(JSON.stringify({ architecture: "amd64", os: "linux" }));
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.ociManifest,
        config: {
          mediaType: "application/vnd.oci.image.config.v1+json",
          digest: digestOf(config),
          size: config.length,
        },
        layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest: digestOf(layer), size: layer.length }],
      }),
    );
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          {
            mediaType: MediaType.ociManifest,
            digest: digestOf(manifest),
            size: manifest.length,
            annotations: { "org.opencontainers.image.ref.name": "docker.io/team/app:v1" },
          },
        ],
      }),
    );
    const layerName = `blobs/sha256/${digestOf(layer).slice(7)}`;
    const damaged = Buffer.from(layer);
    damaged[123_456]! ^= 0x40;
    // As mirror export writes one: metadata first, then the manifest, config and layer.
    const bundleWith = (...layers: Buffer[]) =>
      buildTar([
        { type: "file", name: "oci-layout", content: Buffer.from('{"imageLayoutVersion": "1.0.0"}') },
        { type: "file", name: "index.json", content: index },
        blobEntry(manifest),
        blobEntry(config),
        ...layers.map((content): TarEntry => ({ type: "file", name: layerName, content })),
      ]);
    const importer = new Importer({
      store,
      manifests: new ManifestStore(store),
      metadata,
      pins: new PinList(dir),
      upstreams: [{ name: "docker.io", config: { aliases: [], default: true, libraryPrefix: "library" } }],
      manifestMaxBytes: 4 * 1024 * 1024,
      log: pino({ level: "silent" }),
    });
    const good = await importer.import(Readable.from([bundleWith(layer)]));
    expect(good.ok).toBe(true);
    expect(good.blobs.added).toBe(2);
    const damage = [{ entry: layerName, reason: `content hashes to ${digestOf(damaged)}` }];

    // Warm cache, damaged copy: nothing to write, and still reported.
    const warm = await importer.import(Readable.from([bundleWith(damaged)]));
    expect(warm.ok).toBe(false);
    expect(warm.refused).toEqual(damage);
    expect(warm.blobs).toEqual({ added: 0, present: 1, bytes: 0 });

    // A good copy, then a damaged repeat of it, in one bundle: the repeat is reported too.
    const repeated = await importer.import(Readable.from([bundleWith(layer, damaged)]));
    expect(repeated.ok).toBe(false);
    expect(repeated.refused).toEqual(damage);
    expect(repeated.blobs).toEqual({ added: 0, present: 2, bytes: 0 });

    // The cache still holds the good copy, and nothing was left half written.
    const stored = await store.open(digestOf(layer));
    expect(stored).toBeDefined();
    expect((await stored!.bytes()).equals(layer)).toBe(true);
    expect(await store.tempFiles()).toEqual([]);
  });
});
