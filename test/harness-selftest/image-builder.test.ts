// Self-tests of the in-memory image builder: layers are real gzip'd tars (read back with tar-stream, an
// independent implementation), digests match bytes, and configs/manifests/indexes say what they should.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import * as tar from "tar-stream";
import { describe, expect, it } from "vitest";
import {
  buildImage,
  buildIndex,
  busyboxLayer,
  MediaTypes,
  randomLayer,
  sha256,
  type Blob,
} from "../harness/image-builder.ts";

interface ReadEntry {
  name: string;
  type: string;
  mode: number;
  linkname: string;
  content: Buffer;
}

/** Unpacks a gzip'd tar with tar-stream. */
async function readLayer(layer: Blob): Promise<ReadEntry[]> {
  const extract = tar.extract();
  extract.end(gunzipSync(layer.bytes));
  const entries: ReadEntry[] = [];
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const chunk of entry as AsyncIterable<Buffer>) chunks.push(chunk);
    entries.push({
      name: entry.header.name,
      type: entry.header.type ?? "",
      mode: entry.header.mode ?? 0,
      linkname: entry.header.linkname ?? "",
      content: Buffer.concat(chunks),
    });
  }
  return entries;
}

function json(bytes: Buffer): Record<string, unknown> {
  return JSON.parse(bytes.toString("utf8")) as Record<string, unknown>;
}

describe("randomLayer", () => {
  it("is a gzip'd tar holding one file of exactly `size` random bytes, with digest and diffId over the right bytes", async () => {
    const layer = randomLayer(300_000, { format: "oci" });
    expect(layer.mediaType).toBe(MediaTypes.ociLayer);
    expect(layer.digest).toBe(`sha256:${createHash("sha256").update(layer.bytes).digest("hex")}`);
    expect(layer.diffId).toBe(sha256(gunzipSync(layer.bytes)));
    expect(layer.diffId).not.toBe(layer.digest);
    const entries = await readLayer(layer);
    expect(entries).toHaveLength(1);
    expect(entries[0]?.type).toBe("file");
    expect(entries[0]?.content.length).toBe(300_000);
    // Random content does not compress: the blob is at least as big as the file.
    expect(layer.bytes.length).toBeGreaterThanOrEqual(300_000);
  });

  it("differs on every call and honours the docker format", () => {
    const a = randomLayer(1000, { format: "docker" });
    const b = randomLayer(1000, { format: "docker" });
    expect(a.mediaType).toBe(MediaTypes.dockerLayer);
    expect(a.digest).not.toBe(b.digest);
  });

  it("handles sizes that are not a multiple of the tar block, including zero", async () => {
    for (const size of [0, 1, 511, 512, 513]) {
      const entries = await readLayer(randomLayer(size));
      expect(entries[0]?.content.length).toBe(size);
    }
  });
});

describe("busyboxLayer", () => {
  it("holds the real static busybox with sh and echo linked to it", async () => {
    const layer = busyboxLayer("docker");
    expect(layer.mediaType).toBe(MediaTypes.dockerLayer);
    const entries = await readLayer(layer);
    const byName = new Map(entries.map((e) => [e.name, e]));
    expect([...byName.keys()].sort()).toEqual(["bin/", "bin/busybox", "bin/echo", "bin/sh"]);
    expect(byName.get("bin/")?.type).toBe("directory");
    const busybox = byName.get("bin/busybox");
    expect(busybox?.type).toBe("file");
    expect(busybox?.mode).toBe(0o755);
    expect(busybox?.content.equals(readFileSync("/bin/busybox"))).toBe(true);
    for (const link of ["bin/sh", "bin/echo"]) {
      expect(byName.get(link)).toMatchObject({ type: "symlink", linkname: "busybox" });
    }
  });

  it("is deterministic, so the same image gets the same digest", () => {
    expect(busyboxLayer("oci").digest).toBe(busyboxLayer("oci").digest);
  });
});

describe("buildImage", () => {
  it("writes an OCI config and manifest whose digests and descriptors match the bytes", () => {
    const layers = [randomLayer(1000), randomLayer(2000)];
    const image = buildImage({ layers, format: "oci", architecture: "arm64", cmd: ["/bin/true"] });
    expect(image.mediaType).toBe(MediaTypes.ociManifest);
    expect(image.digest).toBe(sha256(image.manifest));
    expect(image.config.digest).toBe(sha256(image.config.bytes));
    expect(image.config.mediaType).toBe(MediaTypes.ociConfig);
    expect(image.blobs()).toEqual([image.config, ...layers]);

    const config = json(image.config.bytes);
    expect(config).toMatchObject({
      architecture: "arm64",
      os: "linux",
      config: { Cmd: ["/bin/true"] },
      rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
    });

    const manifest = json(image.manifest);
    expect(manifest).toEqual({
      schemaVersion: 2,
      mediaType: MediaTypes.ociManifest,
      config: { mediaType: MediaTypes.ociConfig, digest: image.config.digest, size: image.config.bytes.length },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.bytes.length })),
    });
  });

  it("writes Docker schema 2 media types for the docker format", () => {
    const image = buildImage({ layers: [randomLayer(10, { format: "docker" })], format: "docker" });
    expect(image.mediaType).toBe(MediaTypes.dockerManifest);
    expect(json(image.manifest)["mediaType"]).toBe(MediaTypes.dockerManifest);
    expect(image.config.mediaType).toBe(MediaTypes.dockerConfig);
    expect(image.architecture).toBe("amd64");
  });

  it("computes diff_ids for layers built elsewhere", () => {
    const layer = randomLayer(100);
    const bare: Blob = { digest: layer.digest, bytes: layer.bytes, mediaType: layer.mediaType };
    const image = buildImage({ layers: [bare], format: "oci" });
    expect(json(image.config.bytes)).toMatchObject({ rootfs: { diff_ids: [layer.diffId] } });
  });
});

describe("buildIndex", () => {
  it("lists each child with digest, size, media type and platform", () => {
    const amd = buildImage({ layers: [randomLayer(10)], format: "oci", architecture: "amd64" });
    const arm = buildImage({ layers: [randomLayer(10)], format: "oci", architecture: "arm64" });
    const index = buildIndex([amd, arm]);
    expect(index.mediaType).toBe(MediaTypes.ociIndex);
    expect(index.digest).toBe(sha256(index.manifest));
    expect(json(index.manifest)).toEqual({
      schemaVersion: 2,
      mediaType: MediaTypes.ociIndex,
      manifests: [amd, arm].map((c) => ({
        mediaType: MediaTypes.ociManifest,
        digest: c.digest,
        size: c.manifest.length,
        platform: { architecture: c.architecture, os: "linux" },
      })),
    });
    expect(buildIndex([amd], { format: "docker" }).mediaType).toBe(MediaTypes.dockerManifestList);
  });
});
