/**
 * Referrers (OCI 1.1 signatures, SBOMs) through `mirror export` and `mirror import`, run as processes: the bundle
 * carries an image's referrers and theirs as ordinary manifests by digest; after import, a mirror whose upstream
 * is offline answers the referrers API with them and serves them by digest, so a site can verify offline.
 * `--no-referrers` leaves them out. The upstream is the real registry (no referrers API: the fallback tags).
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as tar from "tar-stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ImportReport } from "../../src/transfer/importer.ts";
import {
  buildArtifact,
  buildImage,
  pushArtifact,
  pushImage,
  pushReferrersFallback,
  randomLayer,
  referrerDescriptor,
  type BuiltArtifact,
  type BuiltImage,
} from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { freePort, runCommand, Teardown, type CommandResult } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

let upstream: Registry;
let work: string;
let nowhere: string;
const image: BuiltImage = buildImage({ format: "oci", layers: [randomLayer(30_000)], labels: { image: "carried" } });
let sig: BuiltArtifact;
let sbom: BuiltArtifact;
/** A signature of the signature: a referrer two levels down. */
let sigOfSig: BuiltArtifact;

function cli(args: string[]): Promise<CommandResult> {
  return runCommand(process.execPath, ["src/main.ts", ...args], { timeoutMs: 60_000 });
}

async function config(name: string, dataDir: string, url: string, extra = ""): Promise<string> {
  const file = join(work, `${name}.yaml`);
  await writeFile(
    file,
    [
      `storage: { path: ${JSON.stringify(dataDir)} }`,
      "upstreams:",
      `  docker.io: { url: ${JSON.stringify(url)}, default: true${extra} }`,
      "",
    ].join("\n"),
  );
  return file;
}

async function indexJsonOf(bundle: string): Promise<{
  annotations?: Record<string, string>;
  manifests: Array<{ digest: string; annotations: Record<string, string> }>;
}> {
  const extract = tar.extract();
  extract.end(await readFile(bundle));
  let index: Buffer | undefined;
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const chunk of entry as AsyncIterable<Buffer>) chunks.push(chunk);
    if (entry.header.name === "index.json") index = Buffer.concat(chunks);
  }
  return JSON.parse(index!.toString()) as never;
}

async function offlineMirror(dataDir: string, extra?: Record<string, unknown>): Promise<TestMirror> {
  return teardown.track(
    await startTestMirror({
      upstreams: { "docker.io": { url: nowhere, default: true, offline: true } },
      dataDir,
      extra,
    }),
  );
}

const referrersOf = async (m: TestMirror, digest: string) => {
  const res = await fetchRaw(`${m.url}/v2/team/carried/referrers/${digest}`);
  expect(res.status, res.body.toString()).toBe(200);
  return { res, manifests: (JSON.parse(res.body.toString()) as { manifests: unknown[] }).manifests };
};

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "referrers-transfer-"));
  teardown.add("work dir", () => rm(work, { recursive: true, force: true }));
  upstream = teardown.track(await startRegistry());
  nowhere = `http://127.0.0.1:${await freePort()}`;
  await pushImage(upstream.url, "team/carried", "v1", image);
  sig = buildArtifact({ subject: image, artifactType: "application/vnd.example.sig", payload: Buffer.from("sig") });
  sbom = buildArtifact({ subject: image, artifactType: "application/vnd.example.sbom", payload: Buffer.from("sbom") });
  sigOfSig = buildArtifact({
    subject: { mediaType: sig.mediaType, digest: sig.digest, manifest: sig.manifest },
    artifactType: "application/vnd.example.sig",
    payload: Buffer.from("countersignature"),
  });
  for (const a of [sig, sbom, sigOfSig]) await pushArtifact(upstream.url, "team/carried", a);
  await pushReferrersFallback(upstream.url, "team/carried", image.digest, [sig, sbom]);
  await pushReferrersFallback(upstream.url, "team/carried", sig.digest, [sigOfSig]);
});

describe("export and import carry referrers", () => {
  it("carries an image's referrers and theirs; after a pinned import, an offline mirror lists and serves them", async () => {
    const bundle = join(work, "with.tar");
    const source = await config("source", join(work, "source-cache"), upstream.url);
    const exported = await cli(["export", "docker.io/team/carried:v1", "--config", source, "--output", bundle]);
    expect(exported.code, exported.stderr).toBe(0);
    expect(exported.stderr).toMatch(/1 references, 3 referrers, 4 manifests, 6 blobs/);

    const index = await indexJsonOf(bundle);
    expect(index.annotations?.["io.registry-mirror.referrers"]).toBe("included");
    expect(index.manifests.map((d) => [d.digest, d.annotations])).toEqual([
      [
        image.digest,
        {
          "org.opencontainers.image.ref.name": "docker.io/team/carried:v1",
          "io.registry-mirror.reference": "docker.io/team/carried:v1",
          "io.containerd.image.name": "docker.io/team/carried:v1",
        },
      ],
      ...[
        [sig, image],
        [sbom, image],
        [sigOfSig, sig],
      ].map(([a, subject]) => [
        a!.digest,
        {
          "io.registry-mirror.reference": `docker.io/team/carried@${a!.digest}`,
          "io.registry-mirror.referrer-of": subject!.digest,
        },
      ]),
    ]);

    const dataDir = join(work, "imported-cache");
    const imported = await cli([
      "import",
      bundle,
      "--config",
      await config("dest", dataDir, nowhere, ", offline: true"),
      "--pin",
      "--json",
    ]);
    expect(imported.code, imported.stderr).toBe(0);
    const report = JSON.parse(imported.stdout) as ImportReport;
    expect(report.ok).toBe(true);
    expect(report.images.map((i) => [i.reference, i.status, i.referrerOf])).toEqual([
      ["docker.io/team/carried:v1", "imported", undefined],
      [`docker.io/team/carried@${sig.digest}`, "imported", image.digest],
      [`docker.io/team/carried@${sbom.digest}`, "imported", image.digest],
      [`docker.io/team/carried@${sigOfSig.digest}`, "imported", sig.digest],
    ]);
    // The image's list and the signature's: recomputed from the referrers' `subject` fields.
    expect(report.referrers.lists).toBe(2);

    // The inventory lists the tag, not the referrers lists kept beside it.
    const inventory = await cli(["inventory", "--config", await config("dest", dataDir, nowhere, ", offline: true")]);
    expect(inventory.code, inventory.stderr).toBe(0);
    expect((JSON.parse(inventory.stdout) as { references: Array<{ reference: string }> }).references).toEqual([
      expect.objectContaining({ reference: "docker.io/team/carried:v1" }),
    ]);

    // A 1-byte budget: the start-up sweep evicts everything not pinned. The import pinned the lists with the images.
    const offline = await offlineMirror(dataDir, { storage: { maxSize: 1 } });
    await upstream.sync();
    upstream.clearRequests();
    expect((await referrersOf(offline, image.digest)).manifests).toEqual([sig, sbom].map(referrerDescriptor));
    expect((await referrersOf(offline, sig.digest)).manifests).toEqual([referrerDescriptor(sigOfSig)]);
    const filtered = await fetchRaw(
      `${offline.url}/v2/team/carried/referrers/${image.digest}?artifactType=application/vnd.example.sbom`,
    );
    expect(filtered.headers["oci-filters-applied"]).toBe("artifactType");
    expect((JSON.parse(filtered.body.toString()) as { manifests: unknown[] }).manifests).toEqual([
      referrerDescriptor(sbom),
    ]);
    for (const a of [sig, sbom, sigOfSig]) {
      const m = await fetchRaw(`${offline.url}/v2/team/carried/manifests/${a.digest}`, {
        headers: { accept: ALL_MANIFEST_TYPES },
      });
      expect(m.status).toBe(200);
      expect(m.body.equals(a.manifest)).toBe(true);
      for (const blob of a.blobs()) {
        const b = await fetchRaw(`${offline.url}/v2/team/carried/blobs/${blob.digest}`);
        expect(b.status).toBe(200);
        expect(b.body.equals(blob.bytes)).toBe(true);
      }
    }
    await upstream.sync();
    expect(upstream.requests()).toEqual([]);
    await offline.stop();
  });

  it("--no-referrers leaves them out: the imported image has none, and they are not served", async () => {
    const bundle = join(work, "without.tar");
    const source = await config("source-plain", join(work, "source-plain-cache"), upstream.url);
    const exported = await cli([
      "export",
      "docker.io/team/carried:v1",
      "--no-referrers",
      "--config",
      source,
      "--output",
      bundle,
    ]);
    expect(exported.code, exported.stderr).toBe(0);
    expect(exported.stderr).toMatch(/1 references, 1 manifests, 2 blobs/);
    const index = await indexJsonOf(bundle);
    expect(index.annotations).toBeUndefined();
    expect(index.manifests.map((d) => d.digest)).toEqual([image.digest]);

    const dataDir = join(work, "plain-cache");
    const imported = await cli([
      "import",
      bundle,
      "--config",
      await config("plain", dataDir, nowhere, ", offline: true"),
      "--json",
    ]);
    expect(imported.code, imported.stderr).toBe(0);
    expect((JSON.parse(imported.stdout) as ImportReport).referrers.lists).toBe(0);
    const offline = await offlineMirror(dataDir);
    const { res, manifests } = await referrersOf(offline, image.digest);
    expect(manifests).toEqual([]);
    // Not confirmed by anyone: the upstream is offline and the bundle said nothing about referrers.
    expect(res.headers["x-mirror-cache"]).toBe("stale");
    const m = await fetchRaw(`${offline.url}/v2/team/carried/manifests/${sig.digest}`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(m.status).toBe(404);
    expect(errorCode(m)).toBe("MANIFEST_UNKNOWN");
    await offline.stop();
  });
});
