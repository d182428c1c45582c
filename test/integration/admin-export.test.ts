/**
 * Export from a running mirror (`/admin/v1/export`, `mirror export --url`), with every part real: a distribution
 * registry as the upstream, the mirror in this process, the CLI run as a process, and a second mirror whose
 * upstream is a closed port (it can serve only what the bundle brought).
 */
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ImportReport } from "../../src/transfer/importer.ts";
import { INVENTORY_MEDIA_TYPE } from "../../src/transfer/inventory.ts";
import {
  buildImage,
  buildIndex,
  pushImage,
  pushIndex,
  randomLayer,
  type BuiltImage,
  type BuiltIndex,
} from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { freePort, runCommand, Teardown, type CommandResult } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

const TOKEN = "export-admin-token-0123";
const teardown = new Teardown();
afterAll(() => teardown.run());

let upstream: Registry;
let work: string;
let nowhere: string;
let tokenFile: string;
/** The connected mirror the exports go through, and its cache directory (kept across its restarts). */
let source: TestMirror;
let sourceDir: string;
/** The bundle GET /admin/v1/export streamed for IMAGES. */
let endpointBundle: Buffer;

const multi: BuiltIndex = buildIndex([
  buildImage({ format: "oci", architecture: "amd64", layers: [randomLayer(120_000), randomLayer(40_000)] }),
  buildImage({ format: "oci", architecture: "arm64", layers: [randomLayer(110_000)] }),
]);
const single: BuiltImage = buildImage({ format: "oci", layers: [randomLayer(90_000)], labels: { image: "single" } });
const dockerImage: BuiltImage = buildImage({
  format: "docker",
  layers: [randomLayer(70_000, { format: "docker" })],
});

const IMAGES = [
  { ref: "docker.io/team/multi:v1", path: "team/multi", tag: "v1", image: multi },
  { ref: "docker.io/team/single:v1", path: "team/single", tag: "v1", image: single },
  // No upstream named: the default one, with Docker Hub's library/ prefix.
  { ref: "dockerimg:v1", path: "library/dockerimg", tag: "v1", image: dockerImage },
] as const;
const REFS = IMAGES.map((i) => i.ref);

function imagesOf(image: BuiltImage | BuiltIndex): BuiltImage[] {
  return "children" in image ? image.children : [image];
}

function cli(args: string[]): Promise<CommandResult> {
  return runCommand(process.execPath, ["src/main.ts", ...args], { timeoutMs: 60_000 });
}

const auth = { authorization: `Bearer ${TOKEN}` };

function exportQuery(refs: readonly string[], extra = ""): string {
  return `${source.url}/admin/v1/export?${refs.map((r) => `reference=${encodeURIComponent(r)}`).join("&")}${extra}`;
}

async function startSource(): Promise<TestMirror> {
  return teardown.track(
    await startTestMirror({
      upstreams: { "docker.io": { url: upstream.url, default: true, libraryPrefix: "library" } },
      dataDir: sourceDir,
      extra: { admin: { token: TOKEN } },
    }),
  );
}

/** Every manifest and blob of an image pulled through `mirror` byte for byte, as a client would. */
async function expectServed(mirror: TestMirror, path: string, tag: string, image: BuiltImage | BuiltIndex) {
  const top = await fetchRaw(`${mirror.url}/v2/${path}/manifests/${tag}`, { headers: { accept: ALL_MANIFEST_TYPES } });
  expect(top.status, `${path}:${tag}: ${top.body.toString()}`).toBe(200);
  expect(top.body.equals(image.manifest)).toBe(true);
  for (const child of imagesOf(image)) {
    const m = await fetchRaw(`${mirror.url}/v2/${path}/manifests/${child.digest}`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(m.body.equals(child.manifest), `${path}@${child.digest}`).toBe(true);
    for (const blob of child.blobs()) {
      const res = await fetchRaw(`${mirror.url}/v2/${path}/blobs/${blob.digest}`);
      expect(res.status, `${path} blob ${blob.digest}`).toBe(200);
      expect(res.body.equals(blob.bytes), `${path} blob ${blob.digest}`).toBe(true);
    }
  }
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "admin-export-"));
  teardown.add("admin export work dir", () => rm(work, { recursive: true, force: true }));
  upstream = teardown.track(await startRegistry());
  nowhere = `http://127.0.0.1:${await freePort()}`;
  await pushIndex(upstream.url, "team/multi", "v1", multi);
  await pushImage(upstream.url, "team/single", "v1", single);
  await pushImage(upstream.url, "library/dockerimg", "v1", dockerImage);
  tokenFile = join(work, "admin-token");
  await writeFile(tokenFile, `${TOKEN}\n`);
  sourceDir = join(work, "source-cache");
  source = await startSource();
});

describe("GET|POST /admin/v1/export", () => {
  it("needs the admin token: 401 before anything is resolved, and the CLI writes nothing", async () => {
    const none = await fetchRaw(exportQuery(REFS));
    expect(none.status).toBe(401);
    expect(errorCode(none)).toBe("UNAUTHORIZED");
    expect(none.headers["www-authenticate"]).toBe('Bearer realm="registry-mirror-admin"');
    const wrong = await fetchRaw(`${source.url}/admin/v1/export`, {
      method: "POST",
      headers: { authorization: "Bearer not-the-token-at-all", "content-type": "application/json" },
      body: Buffer.from(JSON.stringify({ references: REFS })),
    });
    expect(wrong.status).toBe(401);
    expect(errorCode(wrong)).toBe("UNAUTHORIZED");
    const out = join(work, "unauthorized.tar");
    const res = await cli(["export", ...REFS, "--url", source.url, "--token", "not-the-token-at-all", "--output", out]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/answered 401: admin API requires the configured admin token/);
    await expect(stat(out)).rejects.toThrow(/ENOENT/);
    await expect(stat(`${out}.partial`)).rejects.toThrow(/ENOENT/);
    // Nothing was asked of the upstream on the refused requests' behalf.
    await upstream.sync();
    expect(upstream.count({ method: "GET", kind: "manifests" })).toBe(0);
  });

  it("answers a request it cannot export with the error JSON, before any byte of a bundle", async () => {
    const unknown = await fetchRaw(exportQuery([IMAGES[0].ref, "docker.io/team/single:v9"]), { headers: auth });
    expect(unknown.status).toBe(404);
    expect(unknown.headers["content-type"]).toMatch(/^application\/json/);
    expect(errorCode(unknown)).toBe("MANIFEST_UNKNOWN");
    expect(unknown.body.toString()).toContain("docker.io/team/single:v9");
    const noRefs = await fetchRaw(`${source.url}/admin/v1/export`, { headers: auth });
    expect(noRefs.status).toBe(400);
    expect(errorCode(noRefs)).toBe("NAME_INVALID");
    const badPlatform = await fetchRaw(exportQuery(REFS, "&platform=linux"), { headers: auth });
    expect(badPlatform.status).toBe(400);
    const badListing = await fetchRaw(`${source.url}/admin/v1/export`, {
      method: "POST",
      headers: { ...auth, "content-type": "application/json" },
      body: Buffer.from(JSON.stringify({ references: REFS, excludeListing: { blobs: [] } })),
    });
    expect(badListing.status).toBe(400);
    expect(badListing.body.toString()).toContain("excludeListing: not an inventory");
    const head = await fetchRaw(exportQuery(REFS), { method: "HEAD", headers: auth });
    expect(head.status).toBe(404);

    const out = join(work, "unknown.tar");
    const res = await cli([
      "export",
      "docker.io/team/single:v9",
      "--url",
      source.url,
      "--token-file",
      tokenFile,
      "--output",
      out,
    ]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/^export: http:\/\/127\.0\.0\.1:\d+ answered 404: docker\.io\/team\/single:v9: /m);
    await expect(stat(out)).rejects.toThrow(/ENOENT/);
    await expect(stat(`${out}.partial`)).rejects.toThrow(/ENOENT/);
  });

  it("streams a bundle from the mirror's cache, filling what it lacks through it; an empty offline mirror imports it and serves every image byte-exact", async () => {
    // One image is cached already, as client pulls leave it; the others are not.
    await expectServed(source, IMAGES[1].path, IMAGES[1].tag, single);
    await upstream.sync();
    upstream.clearRequests();

    const res = await fetchRaw(exportQuery(REFS), { headers: auth });
    expect(res.status, res.body.toString().slice(0, 500)).toBe(200);
    expect(res.broken).toBeUndefined();
    expect(res.headers["content-type"]).toBe("application/x-tar");
    expect(Number(res.headers["content-length"])).toBe(res.body.length);
    endpointBundle = res.body;

    await upstream.sync();
    for (const blob of single.blobs())
      expect(upstream.count({ method: "GET", kind: "blobs", pathIncludes: blob.digest }), "cached blob refetched").toBe(
        0,
      );
    // What was missing came through the mirror's own caches: fetched once, and cached now.
    for (const image of [...multi.children, dockerImage])
      for (const blob of image.blobs()) {
        expect(upstream.count({ method: "GET", kind: "blobs", pathIncludes: blob.digest })).toBe(1);
        expect(source.mirror.blobStore.index.has(blob.digest), blob.digest).toBe(true);
      }

    const file = join(work, "endpoint.tar");
    await writeFile(file, endpointBundle);
    const target = teardown.track(
      await startTestMirror({
        upstreams: {
          "docker.io": { url: nowhere, default: true, libraryPrefix: "library", offline: true },
        },
        extra: { admin: { token: TOKEN } },
      }),
    );
    const imported = await cli(["import", file, "--url", target.url, "--token-file", tokenFile, "--json"]);
    expect(imported.code, imported.stderr + imported.stdout).toBe(0);
    const report = JSON.parse(imported.stdout) as ImportReport;
    expect(report.images.map((i) => [i.reference, i.status])).toEqual([
      ["docker.io/team/multi:v1", "imported"],
      ["docker.io/team/single:v1", "imported"],
      ["docker.io/library/dockerimg:v1", "imported"],
    ]);
    for (const i of IMAGES) await expectServed(target, i.path, i.tag, i.image);
    await target.stop();
  });

  it("mirror export --url writes the bytes mirror export writes from the stopped mirror's data directory, full and delta", async () => {
    // A delta: the destination holds the single image's blobs (as its inventory would say).
    const listing = join(work, "inventory.json");
    await writeFile(
      listing,
      JSON.stringify({
        mediaType: INVENTORY_MEDIA_TYPE,
        createdAt: new Date().toISOString(),
        references: [],
        blobs: single.blobs().map((b) => ({ digest: b.digest, size: b.bytes.length })),
      }),
    );
    const runs = [
      { name: "full", args: [...REFS] },
      { name: "delta", args: [...REFS, "--exclude-listing", listing, "--platform", "linux/amd64"] },
      { name: "one-platform", args: [IMAGES[0].ref, "--platform", "linux/arm64", "--no-referrers"] },
    ];
    const viaUrl = new Map<string, Buffer>();
    for (const run of runs) {
      const out = join(work, `url-${run.name}.tar`);
      const res = await cli(["export", ...run.args, "--url", source.url, "--token-file", tokenFile, "--output", out]);
      expect(res.code, res.stderr).toBe(0);
      expect(res.stderr).toMatch(/export: wrote .*url-.*\.tar from http:\/\/127\.0\.0\.1:\d+: /);
      viaUrl.set(run.name, await readFile(out));
      await expect(stat(`${out}.partial`)).rejects.toThrow(/ENOENT/);
    }
    // The endpoint's GET answer and the CLI's POST one are the same bundle, with the same options.
    expect(viaUrl.get("full")!.equals(endpointBundle)).toBe(true);
    const onePlatform = await fetchRaw(exportQuery([IMAGES[0].ref], "&platform=linux/arm64&referrers=false"), {
      headers: auth,
    });
    expect(onePlatform.status).toBe(200);
    expect(onePlatform.body.equals(viaUrl.get("one-platform")!)).toBe(true);
    expect(endpointBundle.includes("io.registry-mirror.referrers")).toBe(true);
    expect(onePlatform.body.includes("io.registry-mirror.referrers")).toBe(false);
    expect(onePlatform.body.includes(`blobs/sha256/${multi.children[1]!.layers[0]!.digest.slice(7)}`)).toBe(true);
    expect(onePlatform.body.includes(`blobs/sha256/${multi.children[0]!.layers[0]!.digest.slice(7)}`)).toBe(false);
    const delta = viaUrl.get("delta")!;
    expect(delta.length).toBeLessThan(endpointBundle.length);
    for (const blob of single.blobs()) expect(delta.includes(`blobs/sha256/${blob.digest.slice(7)}`)).toBe(false);
    expect(delta.includes(`blobs/sha256/${multi.children[0]!.layers[0]!.digest.slice(7)}`)).toBe(true);
    expect(delta.includes(`blobs/sha256/${multi.children[1]!.layers[0]!.digest.slice(7)}`)).toBe(false);

    await source.stop();
    try {
      const config = join(work, "source.yaml");
      await writeFile(
        config,
        [
          `storage: { path: ${JSON.stringify(sourceDir)} }`,
          "upstreams:",
          `  docker.io: { url: ${JSON.stringify(upstream.url)}, default: true, libraryPrefix: library }`,
          "",
        ].join("\n"),
      );
      for (const run of runs) {
        const out = join(work, `dir-${run.name}.tar`);
        const res = await cli(["export", ...run.args, "--config", config, "--output", out]);
        expect(res.code, res.stderr).toBe(0);
        const fromDir = await readFile(out);
        expect(fromDir.length, run.name).toBe(viaUrl.get(run.name)!.length);
        expect(fromDir.equals(viaUrl.get(run.name)!), `${run.name}: the bundles differ`).toBe(true);
      }
    } finally {
      source = await startSource();
    }
  });

  it("a failure once bytes flow cuts the download short of its length; the CLI leaves no bundle", async () => {
    // A cached layer damaged on disk (same size, one byte flipped): the export hashes it on the way out.
    const victim = multi.children[0]!.layers[1]!;
    const path = join(sourceDir, "blobs", "sha256", victim.digest.slice(7, 9), victim.digest.slice(7));
    const bytes = await readFile(path);
    bytes[bytes.length >> 1]! ^= 0x01;
    await writeFile(path, bytes);

    const res = await fetchRaw(exportQuery([IMAGES[0].ref]), { headers: auth });
    expect(res.status).toBe(200);
    expect(res.broken).toBeDefined();
    expect(res.body.length).toBeLessThan(Number(res.headers["content-length"]));

    const out = join(work, "broken.tar");
    const cut = await cli(["export", IMAGES[0].ref, "--url", source.url, "--token-file", tokenFile, "--output", out]);
    expect(cut.code).toBe(1);
    expect(cut.stderr).toMatch(/the export broke off: .*no bundle was written/);
    await expect(stat(out)).rejects.toThrow(/ENOENT/);
    await expect(stat(`${out}.partial`)).rejects.toThrow(/ENOENT/);
    // The mirror goes on serving: another export without the damaged blob streams whole.
    const other = await fetchRaw(exportQuery([IMAGES[1].ref]), { headers: auth });
    expect(other.status).toBe(200);
    expect(other.broken).toBeUndefined();
    expect(other.body.length).toBe(Number(other.headers["content-length"]));
    expect(other.body.includes(`blobs/sha256/${single.layers[0]!.digest.slice(7)}`)).toBe(true);
  });
});
