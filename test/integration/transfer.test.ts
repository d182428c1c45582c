/**
 * Air-gapped transfer (docs/air-gapped-transfer.md) with every part real: a distribution registry as the
 * upstream, the `mirror export|import|inventory` commands run as processes, mirrors on loopback whose upstream
 * is a closed port (nothing can come from anywhere but the bundle), and tar-stream as an independent reader of
 * what the exporter writes.
 */
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import * as tar from "tar-stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMirror } from "../../src/app.ts";
import { DataDirLockedError } from "../../src/storage/data-dir-lock.ts";
import { parseConfig } from "../../src/config/load.ts";
import type { ImportReport } from "../../src/transfer/importer.ts";
import { TarError, TarReader } from "../../src/transfer/tar-reader.ts";
import { endOfArchive, fileHeader } from "../../src/transfer/tar-writer.ts";
import {
  buildImage,
  buildIndex,
  buildNestedIndex,
  pushImage,
  pushIndex,
  pushNestedIndex,
  randomLayer,
  type BuiltImage,
  type BuiltIndex,
  type BuiltNestedIndex,
} from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { freePort, runCommand, Teardown, type CommandResult } from "../harness/processes.ts";
import { startRedis } from "../harness/redis.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const TOKEN = "transfer-admin-token-0123";
const teardown = new Teardown();
afterAll(() => teardown.run());

let upstream: Registry;
let work: string;
/** An origin nothing listens on: mirrors pointed at it can only serve what a bundle brought. */
let nowhere: string;
let bundle: string;

const multi: BuiltIndex = buildIndex([
  buildImage({
    format: "oci",
    architecture: "amd64",
    layers: [randomLayer(120_000), randomLayer(40_000)],
    labels: { image: "multi" },
  }),
  buildImage({ format: "oci", architecture: "arm64", layers: [randomLayer(110_000)], labels: { image: "multi" } }),
]);
const dockerImage: BuiltImage = buildImage({
  format: "docker",
  layers: [randomLayer(150_000, { format: "docker" }), randomLayer(30_000, { format: "docker" })],
});
const tool: BuiltImage = buildImage({ format: "oci", layers: [randomLayer(60_000)], labels: { image: "tool" } });
const base = randomLayer(90_000);
const appV1: BuiltImage = buildImage({ format: "oci", layers: [base, randomLayer(20_000)], labels: { version: "1" } });
const appV2: BuiltImage = buildImage({ format: "oci", layers: [base, randomLayer(25_000)], labels: { version: "2" } });

/** The references exported in the first bundle, and where each image lives upstream. */
const EXPORTED = [
  {
    ref: "docker.io/team/multi:v1",
    canonical: "docker.io/team/multi:v1",
    repo: "team/multi",
    tag: "v1",
    path: "team/multi",
    image: multi,
  },
  // No upstream named: the default one, with Docker Hub's library/ prefix.
  {
    ref: "dockerimg:v1",
    canonical: "docker.io/library/dockerimg:v1",
    repo: "library/dockerimg",
    tag: "v1",
    path: "library/dockerimg",
    image: dockerImage,
  },
  {
    ref: "ghcr.io/team/tool:v1",
    canonical: "ghcr.io/team/tool:v1",
    repo: "team/tool",
    tag: "v1",
    path: "ghcr.io/team/tool",
    image: tool,
  },
  {
    ref: "docker.io/team/app:v1",
    canonical: "docker.io/team/app:v1",
    repo: "team/app",
    tag: "v1",
    path: "team/app",
    image: appV1,
  },
] as const;

function imagesOf(image: BuiltImage | BuiltIndex): BuiltImage[] {
  return "children" in image ? image.children : [image];
}

function cli(args: string[], timeoutMs = 60_000): Promise<CommandResult> {
  return runCommand(process.execPath, ["src/main.ts", ...args], { timeoutMs });
}

async function writeConfig(name: string, dataDir: string, upstreamUrl: string, extra = ""): Promise<string> {
  const file = join(work, `${name}.yaml`);
  await writeFile(
    file,
    [
      `storage: { path: ${JSON.stringify(dataDir)} }`,
      "upstreams:",
      // libraryPrefix as Docker Hub's preset gives it (the preset keys on the real host, not on loopback).
      `  docker.io: { url: ${JSON.stringify(upstreamUrl)}, default: true, aliases: [registry-1.docker.io], libraryPrefix: library }`,
      `  ghcr.io: { url: ${JSON.stringify(upstreamUrl)} }`,
      extra,
      "",
    ].join("\n"),
  );
  return file;
}

/** Entries of a tar, read with tar-stream (an implementation independent of ours). */
async function readBundle(path: string): Promise<Map<string, Buffer>> {
  const extract = tar.extract();
  extract.end(await readFile(path));
  const entries = new Map<string, Buffer>();
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const chunk of entry as AsyncIterable<Buffer>) chunks.push(chunk);
    if (entry.header.type === "file") entries.set(entry.header.name, Buffer.concat(chunks));
  }
  return entries;
}

/** Every manifest and blob of an image pulled through `mirror` byte for byte, as a client would. */
async function expectServed(
  mirror: TestMirror,
  path: string,
  tag: string,
  image: BuiltImage | BuiltIndex,
): Promise<void> {
  const top = await fetchRaw(`${mirror.url}/v2/${path}/manifests/${tag}`, { headers: { accept: ALL_MANIFEST_TYPES } });
  expect(top.status, `${path}:${tag}: ${top.body.toString()}`).toBe(200);
  expect(top.body.equals(image.manifest)).toBe(true);
  expect(top.headers["content-type"]).toBe(image.mediaType);
  for (const child of imagesOf(image)) {
    const m = await fetchRaw(`${mirror.url}/v2/${path}/manifests/${child.digest}`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(m.body.equals(child.manifest), `${path}@${child.digest}`).toBe(true);
    for (const blob of child.blobs()) {
      const res = await fetchRaw(`${mirror.url}/v2/${path}/blobs/${blob.digest}`);
      expect(res.status, `${path} blob ${blob.digest}`).toBe(200);
      expect(sha256(res.body)).toBe(blob.digest);
    }
  }
}

async function unreachableMirror(opts: { dataDir?: string } = {}): Promise<TestMirror> {
  return teardown.track(
    await startTestMirror({
      upstreams: {
        "docker.io": {
          url: nowhere,
          default: true,
          aliases: ["registry-1.docker.io"],
          libraryPrefix: "library",
          retries: 0,
        },
        "ghcr.io": { url: nowhere, retries: 0 },
      },
      extra: { admin: { token: TOKEN } },
      ...opts,
    }),
  );
}

function report(result: CommandResult): ImportReport {
  return JSON.parse(result.stdout) as ImportReport;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "transfer-"));
  teardown.add("transfer work dir", () => rm(work, { recursive: true, force: true }));
  upstream = teardown.track(await startRegistry());
  nowhere = `http://127.0.0.1:${await freePort()}`;
  await pushIndex(upstream.url, "team/multi", "v1", multi);
  await pushImage(upstream.url, "library/dockerimg", "v1", dockerImage);
  await pushImage(upstream.url, "team/tool", "v1", tool);
  await pushImage(upstream.url, "team/app", "v1", appV1);
  bundle = join(work, "bundle.tar");
});

describe("mirror export", () => {
  it("fetches through a mirror's cache (cached content is not fetched again) and refuses a directory in use", async () => {
    const dataDir = join(work, "source-cache");
    const config = await writeConfig("source", dataDir, upstream.url);
    const source = await startTestMirror({ upstreams: { "docker.io": { url: upstream.url, default: true } }, dataDir });
    try {
      // Seed the source mirror's cache with one image, as client pulls would.
      await expectServed(source, "library/dockerimg", "v1", dockerImage);
      const refused = await cli([
        "export",
        "docker.io/team/app:v1",
        "--config",
        config,
        "--output",
        join(work, "never.tar"),
      ]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(new RegExp(`in use by process ${process.pid} `));
      await expect(stat(join(work, "never.tar"))).rejects.toThrow();
    } finally {
      await source.stop();
    }
    await upstream.sync();
    upstream.clearRequests();
    const refs = join(work, "refs.txt");
    await writeFile(
      refs,
      `# every image of the first transfer\n${EXPORTED.slice(1)
        .map((e) => e.ref)
        .join("\n")}\n`,
    );
    const res = await cli(["export", EXPORTED[0].ref, "--file", refs, "--config", config, "--output", bundle]);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toMatch(/export: wrote .*bundle\.tar: 4 references, 6 manifests, 13 blobs/);
    await upstream.sync();
    for (const blob of dockerImage.blobs())
      expect(
        upstream.count({ method: "GET", kind: "blobs", pathIncludes: blob.digest }),
        "cached blob fetched again",
      ).toBe(0);
    expect(upstream.count({ method: "GET", kind: "blobs", pathIncludes: tool.layers[0]!.digest })).toBe(1);
    await expect(stat(`${bundle}.partial`)).rejects.toThrow();
  });

  it("writes a standard OCI image layout: oci-layout, annotated index.json, every manifest and blob by digest", async () => {
    const entries = await readBundle(bundle);
    expect(JSON.parse(entries.get("oci-layout")!.toString())).toEqual({ imageLayoutVersion: "1.0.0" });
    const index = JSON.parse(entries.get("index.json")!.toString()) as {
      schemaVersion: number;
      manifests: Array<{ mediaType: string; digest: string; size: number; annotations: Record<string, string> }>;
    };
    expect(index.schemaVersion).toBe(2);
    expect(index.manifests.map((d) => d.annotations["io.registry-mirror.reference"])).toEqual(
      EXPORTED.map((e) => e.canonical),
    );
    for (const [i, e] of EXPORTED.entries()) {
      const d = index.manifests[i]!;
      expect(d).toMatchObject({ mediaType: e.image.mediaType, digest: e.image.digest, size: e.image.manifest.length });
      expect(d.annotations["org.opencontainers.image.ref.name"]).toBe(e.canonical);
    }
    const expected = new Map<string, Buffer>();
    for (const e of EXPORTED) {
      expected.set(e.image.digest, e.image.manifest);
      for (const child of imagesOf(e.image)) {
        expected.set(child.digest, child.manifest);
        for (const blob of child.blobs()) expected.set(blob.digest, blob.bytes);
      }
    }
    const blobs = [...entries.keys()].filter((n) => n.startsWith("blobs/"));
    expect(blobs.sort()).toEqual([...expected.keys()].map((d) => `blobs/sha256/${d.slice(7)}`).sort());
    for (const [digest, bytes] of expected)
      expect(entries.get(`blobs/sha256/${digest.slice(7)}`)!.equals(bytes), digest).toBe(true);
  });

  it("refuses a reference the upstream does not have, and leaves no bundle behind", async () => {
    const config = await writeConfig("missing", join(work, "missing-cache"), upstream.url);
    const out = join(work, "missing.tar");
    const res = await cli(["export", "docker.io/team/nothing:v9", "--config", config, "--output", out]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/^export: docker\.io\/team\/nothing:v9: /m);
    await expect(stat(out)).rejects.toThrow();
    await expect(stat(`${out}.partial`)).rejects.toThrow();
  });
});

describe("mirror import", () => {
  let running: TestMirror;

  it("into a running mirror (admin endpoint), pinned: every image is served with the upstream unreachable", async () => {
    // A directory of its own (not the test mirror's temp dir, deleted at stop): the next test restarts over it.
    running = await unreachableMirror({ dataDir: join(work, "running-cache") });
    const res = await cli(["import", bundle, "--url", running.url, "--token", TOKEN, "--pin", "--json"]);
    expect(res.code, res.stderr + res.stdout).toBe(0);
    const r = report(res);
    expect(r.ok).toBe(true);
    expect(r.refused).toEqual([]);
    expect(r.images.map((i) => [i.reference, i.status, i.pinned])).toEqual(
      EXPORTED.map((e) => [e.canonical, "imported", true]),
    );
    expect(r.blobs.added).toBe(13);
    expect(r.manifests.added).toBe(6);
    for (const e of EXPORTED) await expectServed(running, e.path, e.tag, e.image);
    const pins = JSON.parse(await readFile(join(running.dataDir, "pins.json"), "utf8")) as {
      pins: Array<{ reference: string; digest: string }>;
    };
    const referrerLists = pins.pins.filter((p) => p.reference.endsWith(" (referrers)"));
    expect(
      pins.pins
        .filter((p) => !referrerLists.includes(p))
        .map((p) => [p.reference, p.digest])
        .sort(),
    ).toEqual(EXPORTED.map((e) => [e.canonical, e.image.digest]).sort());
    // The (empty) referrers list the import recorded for every image manifest is pinned with it.
    expect(referrerLists.map((p) => p.reference.split("@")[1]!.replace(" (referrers)", "")).sort()).toEqual(
      EXPORTED.flatMap((e) => [
        e.image.digest,
        ...("children" in e.image ? e.image.children.map((c) => c.digest) : []),
      ]).sort(),
    );
    expect(await running.mirror.blobStore.tempFiles()).toEqual([]);
  });

  it("pinned imports survive eviction: a sweep over budget frees nothing they reach", async () => {
    const before = running.mirror.blobStore.index.objects;
    // The same directory under a 1-byte budget: the janitor sweeps at start, and everything here is pinned.
    await running.stop();
    const tiny = teardown.track(
      await startTestMirror({
        upstreams: {
          "docker.io": { url: nowhere, default: true, retries: 0 },
          "ghcr.io": { url: nowhere, retries: 0 },
        },
        dataDir: running.dataDir,
        extra: { storage: { maxSize: 1 } },
      }),
    );
    expect(tiny.mirror.blobStore.index.objects).toBe(before);
    await expectServed(tiny, "team/multi", "v1", multi);
    await tiny.stop();
    running = await unreachableMirror({ dataDir: tiny.dataDir });
  });

  it("into a stopped mirror's data directory; a mirror started on it offline serves every image", async () => {
    const dataDir = join(work, "offline-cache");
    const config = await writeConfig("offline", dataDir, nowhere, "offline: true");
    const res = await cli(["import", bundle, "--config", config, "--json"]);
    expect(res.code, res.stderr).toBe(0);
    expect(report(res).images.every((i) => i.status === "imported" && !i.pinned)).toBe(true);
    const offline = teardown.track(
      await startTestMirror({
        upstreams: {
          "docker.io": { url: nowhere, default: true, offline: true },
          "ghcr.io": { url: nowhere, offline: true },
        },
        dataDir,
      }),
    );
    for (const e of EXPORTED) await expectServed(offline, e.path, e.tag, e.image);
    await offline.stop();
  });

  it("reads a bundle from stdin", async () => {
    const dataDir = join(work, "stdin-cache");
    const config = await writeConfig("stdin", dataDir, nowhere);
    const res = await runCommand(
      "sh",
      ["-c", `"${process.execPath}" src/main.ts import - --config "${config}" < "${bundle}"`],
      { timeoutMs: 60_000 },
    );
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toMatch(/^imported docker\.io\/team\/multi:v1 sha256:/m);
    expect(res.stdout).toMatch(/added 6 manifests and 13 blobs/);
  });

  it("refuses exactly the blob with one flipped byte, imports everything else, and that image stays unservable", async () => {
    const bytes = await readFile(bundle);
    const victim = dockerImage.layers[0]!;
    const header = bytes.indexOf(`blobs/sha256/${victim.digest.slice(7)}`);
    expect(header % 512).toBe(0);
    bytes[header + 512 + 1000]! ^= 0x01;
    const damaged = join(work, "damaged.tar");
    await writeFile(damaged, bytes);
    const target = await unreachableMirror();
    const res = await cli(["import", damaged, "--url", target.url, "--token", TOKEN, "--json"]);
    expect(res.code).toBe(1);
    const r = report(res);
    expect(r.refused).toEqual([
      {
        entry: `blobs/sha256/${victim.digest.slice(7)}`,
        reason: expect.stringMatching(/^content hashes to sha256:[0-9a-f]{64}$/) as unknown,
      },
    ]);
    expect(r.error).toBeUndefined();
    const byRef = new Map(r.images.map((i) => [i.reference, i]));
    expect(byRef.get("docker.io/library/dockerimg:v1")).toMatchObject({
      status: "incomplete",
      missing: [victim.digest],
    });
    for (const e of EXPORTED.filter((x) => x.image !== dockerImage))
      expect(byRef.get(e.canonical)?.status).toBe("imported");
    expect(await target.mirror.blobStore.size(victim.digest)).toBeUndefined();
    expect(await target.mirror.blobStore.tempFiles()).toEqual([]);
    for (const e of EXPORTED.filter((x) => x.image !== dockerImage)) await expectServed(target, e.path, e.tag, e.image);
    const tag = await fetchRaw(`${target.url}/v2/library/dockerimg/manifests/v1`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(tag.status).toBeGreaterThanOrEqual(400);
    const layer = await fetchRaw(`${target.url}/v2/library/dockerimg/blobs/${victim.digest}`);
    expect(layer.status).toBeGreaterThanOrEqual(400);
    expect(errorCode(layer)).toMatch(/BLOB_UNKNOWN|UNAVAILABLE/);
  });

  it("on a warm mirror, still hashes every entry: a flipped byte, a shortened entry and a cut bundle are each reported, nothing changes", async () => {
    const target = await unreachableMirror();
    const good = await cli(["import", bundle, "--url", target.url, "--token", TOKEN, "--json"]);
    expect(good.code, good.stderr + good.stdout).toBe(0);
    /** Every committed file of the cache by name, with what it hashes to. */
    const holdings = async (): Promise<Map<string, string>> => {
      const out = new Map<string, string>();
      const root = join(target.dataDir, "blobs", "sha256");
      for (const shard of await readdir(root))
        for (const name of await readdir(join(root, shard)))
          out.set(name, sha256(await readFile(join(root, shard, name))));
      return out;
    };
    const before = await holdings();
    expect([...before].every(([name, digest]) => digest === `sha256:${name}`)).toBe(true);
    const bytes = await readFile(bundle);
    const entryAt = (digest: string) => {
      const at = bytes.indexOf(`blobs/sha256/${digest.slice(7)}`);
      expect(at % 512).toBe(0);
      return at;
    };

    // One flipped byte inside a layer the mirror already holds.
    const flipped = dockerImage.layers[0]!;
    const flippedBytes = Buffer.from(bytes);
    flippedBytes[entryAt(flipped.digest) + 512 + 1000]! ^= 0x01;
    // A layer entry shortened by 1000 bytes in a well-formed tar (header size rewritten).
    const shortened = appV1.layers[1]!;
    const at = entryAt(shortened.digest);
    const padded = (n: number) => Math.ceil(n / 512) * 512;
    const shorter = shortened.bytes.length - 1000;
    const shortenedBytes = Buffer.concat([
      bytes.subarray(0, at),
      fileHeader({ name: `blobs/sha256/${shortened.digest.slice(7)}`, size: shorter, mtime: 0 }),
      shortened.bytes.subarray(0, shorter),
      Buffer.alloc(padded(shorter) - shorter),
      bytes.subarray(at + 512 + padded(shortened.bytes.length)),
    ]);
    // The bundle cut off inside a layer the mirror already holds.
    const cut = tool.layers[0]!;
    const cutBytes = bytes.subarray(0, entryAt(cut.digest) + 512 + 5000);

    const cases = [
      {
        file: "warm-flipped.tar",
        content: flippedBytes,
        digest: flipped.digest,
        reason: /^content hashes to sha256:[0-9a-f]{64}$/,
      },
      {
        file: "warm-shortened.tar",
        content: shortenedBytes,
        digest: shortened.digest,
        reason: new RegExp(`^${shorter} bytes, but the descriptor`),
      },
      { file: "warm-cut.tar", content: cutBytes, digest: cut.digest, reason: /ends inside blobs\/sha256\// },
    ];
    for (const c of cases) {
      const path = join(work, c.file);
      await writeFile(path, c.content);
      const res = await cli(["import", path, "--url", target.url, "--token", TOKEN, "--json"]);
      expect(res.code, `${c.file}: ${res.stderr}`).toBe(1);
      const r = report(res);
      expect(r.ok).toBe(false);
      expect(r.refused, c.file).toEqual([
        { entry: `blobs/sha256/${c.digest.slice(7)}`, reason: expect.stringMatching(c.reason) as unknown },
      ]);
      expect(r.blobs.added, c.file).toBe(0);
      expect(r.manifests.added, c.file).toBe(0);
      // The text report names the entry too.
      const text = await cli(["import", path, "--url", target.url, "--token", TOKEN]);
      expect(text.code).toBe(1);
      expect(text.stdout).toContain(`refused entry blobs/sha256/${c.digest.slice(7)}: `);
      expect(text.stdout).toMatch(/; 1 entries refused/);
    }
    // Nothing in the store changed, nothing half written is left, and every image is still served byte-exact.
    expect(await holdings()).toEqual(before);
    expect(await target.mirror.blobStore.tempFiles()).toEqual([]);
    for (const e of EXPORTED) await expectServed(target, e.path, e.tag, e.image);
  });

  it("keeps what was verified from a truncated bundle, refuses the cut entry, and tags only complete images", async () => {
    const bytes = await readFile(bundle);
    const cutIn = tool.layers[0]!;
    const header = bytes.indexOf(`blobs/sha256/${cutIn.digest.slice(7)}`);
    const truncated = join(work, "truncated.tar");
    await writeFile(truncated, bytes.subarray(0, header + 512 + 5000));
    const dataDir = join(work, "truncated-cache");
    const res = await cli([
      "import",
      truncated,
      "--config",
      await writeConfig("truncated", dataDir, nowhere),
      "--json",
    ]);
    expect(res.code).toBe(1);
    const r = report(res);
    expect(r.error).toMatch(/ends inside blobs\/sha256\//);
    expect(r.refused).toEqual([{ entry: `blobs/sha256/${cutIn.digest.slice(7)}`, reason: r.error }]);
    expect(r.images.find((i) => i.reference === "ghcr.io/team/tool:v1")?.status).toBe("incomplete");
    // Everything that made it into the cache is whole and verified; nothing unverified is left in tmp/.
    const shards = await readdir(join(dataDir, "blobs", "sha256"));
    for (const shard of shards) {
      for (const name of await readdir(join(dataDir, "blobs", "sha256", shard))) {
        expect(sha256(await readFile(join(dataDir, "blobs", "sha256", shard, name)))).toBe(`sha256:${name}`);
      }
    }
    expect(await readdir(join(dataDir, "tmp"))).toEqual([]);
  });

  it("refuses a blob the disk took only part of (a file-size limit): nothing truncated is committed", async () => {
    // Under RLIMIT_FSIZE a write that crosses the limit stores the bytes below it and reports that count, without
    // an error (Node ignores SIGXFSZ; only a write at the limit fails, with EFBIG), as on a nearly full disk.
    // The limit sits just under the largest blob, which arrives in one chunk: its one write stops short.
    const victim = dockerImage.layers[0]!;
    const limit = victim.bytes.length - 1000;
    const content = new Map<string, number>();
    for (const e of EXPORTED) {
      content.set(e.image.digest, e.image.manifest.length);
      for (const image of imagesOf(e.image))
        for (const b of [{ digest: image.digest, bytes: image.manifest }, ...image.blobs()])
          content.set(b.digest, b.bytes.length);
    }
    expect([...content].filter(([, size]) => size >= limit)).toEqual([[victim.digest, victim.bytes.length]]);
    const dataDir = join(work, "fsize-cache");
    const config = await writeConfig("fsize", dataDir, nowhere);
    const res = await runCommand(
      "prlimit",
      [`--fsize=${limit}`, "--", process.execPath, "src/main.ts", "import", bundle, "--config", config, "--json"],
      { timeoutMs: 60_000 },
    );
    expect(res.code, res.stderr + res.stdout).toBe(1);
    const r = report(res);
    expect(r.error).toMatch(/EFBIG/);
    expect(r.refused).toEqual([{ entry: `blobs/sha256/${victim.digest.slice(7)}`, reason: r.error }]);
    expect(r.images.find((i) => i.reference === "docker.io/library/dockerimg:v1")).toMatchObject({
      status: "incomplete",
      missing: expect.arrayContaining([victim.digest]) as unknown,
    });
    const shards = await readdir(join(dataDir, "blobs", "sha256"));
    for (const shard of shards) {
      for (const name of await readdir(join(dataDir, "blobs", "sha256", shard))) {
        expect(sha256(await readFile(join(dataDir, "blobs", "sha256", shard, name)))).toBe(`sha256:${name}`);
      }
    }
    await expect(
      stat(join(dataDir, "blobs", "sha256", victim.digest.slice(7, 9), victim.digest.slice(7))),
    ).rejects.toThrow(/ENOENT/);
    expect(await readdir(join(dataDir, "tmp"))).toEqual([]);
  });

  it("imports an OCI archive written by skopeo (blobs before index.json) under its full reference name", async () => {
    const archive = join(work, "skopeo.tar");
    const copied = await runCommand(
      "skopeo",
      [
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        `docker://${upstream.host}/team/tool:v1`,
        `oci-archive:${archive}:ghcr.io/team/tool:v1`,
      ],
      {
        timeoutMs: 60_000,
      },
    );
    expect(copied.code, copied.stderr).toBe(0);
    const dataDir = join(work, "skopeo-cache");
    const res = await cli(["import", archive, "--config", await writeConfig("skopeo", dataDir, nowhere), "--json"]);
    expect(res.code, res.stdout + res.stderr).toBe(0);
    expect(report(res).images).toEqual([
      expect.objectContaining({ reference: "ghcr.io/team/tool:v1", status: "imported", digest: tool.digest }),
    ]);
  });
});

describe("delta transfer", () => {
  it("an inventory lists what a mirror holds; a delta export carries only the blobs it lacks, and imports complete", async () => {
    const target = await unreachableMirror();
    const first = await cli(["import", bundle, "--url", target.url, "--token", TOKEN]);
    expect(first.code, first.stdout).toBe(0);
    const listing = join(work, "inventory.json");
    const inv = await cli(["inventory", "--url", target.url, "--token", TOKEN, "--output", listing]);
    expect(inv.code, inv.stderr).toBe(0);
    const inventory = JSON.parse(await readFile(listing, "utf8")) as {
      references: Array<{ reference: string; digest: string }>;
      blobs: Array<{ digest: string; size: number }>;
    };
    expect(inventory.references).toContainEqual(
      expect.objectContaining({ reference: "docker.io/team/app:v1", digest: appV1.digest }),
    );
    expect(inventory.blobs).toContainEqual({ digest: base.digest, size: base.bytes.length });
    // 13 blobs, 6 manifests, and the referrers list the import recorded for each image manifest (all empty: one).
    expect(inventory.blobs).toHaveLength(20);

    await pushImage(upstream.url, "team/app", "v2", appV2);
    const delta = join(work, "delta.tar");
    const res = await cli([
      "export",
      "docker.io/team/app:v2",
      "docker.io/team/multi:v1",
      "--exclude-listing",
      listing,
      "--config",
      await writeConfig("delta", join(work, "delta-cache"), upstream.url),
      "--output",
      delta,
    ]);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toMatch(/left out 6 blobs/);
    const entries = await readBundle(delta);
    const carried = [...entries.keys()]
      .filter((n) => n.startsWith("blobs/"))
      .map((n) => `sha256:${n.slice("blobs/sha256/".length)}`);
    // Manifests always travel (they describe the images); of the blobs, only app v2's config and new layer.
    const manifests = [appV2.digest, multi.digest, ...multi.children.map((c) => c.digest)];
    expect(carried.sort()).toEqual([...manifests, appV2.config.digest, appV2.layers[1]!.digest].sort());

    const imported = await cli(["import", delta, "--url", target.url, "--token", TOKEN, "--json"]);
    expect(imported.code, imported.stdout).toBe(0);
    expect(report(imported).blobs).toMatchObject({ added: 2 });
    await expectServed(target, "team/app", "v2", appV2);
    await expectServed(target, "team/app", "v1", appV1);

    // The same delta into a mirror that lacks the listed blobs: the images are reported incomplete, untagged.
    const empty = await unreachableMirror();
    const wrong = await cli(["import", delta, "--url", empty.url, "--token", TOKEN, "--json"]);
    expect(wrong.code).toBe(1);
    expect(report(wrong).images.find((i) => i.reference === "docker.io/team/app:v2")).toMatchObject({
      status: "incomplete",
      missing: [base.digest],
    });
    expect(
      (await fetchRaw(`${empty.url}/v2/team/app/manifests/v2`, { headers: { accept: ALL_MANIFEST_TYPES } })).status,
    ).toBeGreaterThanOrEqual(400);
  });
});

describe("an index whose child is another index", () => {
  const nested: BuiltNestedIndex = buildNestedIndex(
    buildIndex([
      buildImage({ format: "oci", architecture: "amd64", layers: [randomLayer(70_000)], labels: { image: "nested" } }),
      buildImage({ format: "oci", architecture: "arm64", layers: [randomLayer(80_000)], labels: { image: "nested" } }),
    ]),
  );
  const images = nested.inner.children;
  const REF = "docker.io/team/nested:v1";

  async function expectNestedServed(mirror: TestMirror): Promise<void> {
    const top = await fetchRaw(`${mirror.url}/v2/team/nested/manifests/v1`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(top.status, top.body.toString()).toBe(200);
    expect(top.body.equals(nested.manifest)).toBe(true);
    const inner = await fetchRaw(`${mirror.url}/v2/team/nested/manifests/${nested.inner.digest}`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(inner.body.equals(nested.inner.manifest)).toBe(true);
    for (const image of images) {
      const m = await fetchRaw(`${mirror.url}/v2/team/nested/manifests/${image.digest}`, {
        headers: { accept: ALL_MANIFEST_TYPES },
      });
      expect(m.body.equals(image.manifest), image.digest).toBe(true);
      for (const blob of image.blobs())
        expect(sha256((await fetchRaw(`${mirror.url}/v2/team/nested/blobs/${blob.digest}`)).body), blob.digest).toBe(
          blob.digest,
        );
    }
  }

  it("is exported with every level, platform and layer, and imported complete: served with no upstream", async () => {
    await pushNestedIndex(upstream.url, "team/nested", "v1", nested);
    const out = join(work, "nested.tar");
    const res = await cli([
      "export",
      REF,
      "--config",
      await writeConfig("nested", join(work, "nested-cache"), upstream.url),
      "--output",
      out,
    ]);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toMatch(/1 references, 4 manifests, 4 blobs/);
    const carried = [...(await readBundle(out)).keys()]
      .filter((n) => n.startsWith("blobs/"))
      .map((n) => `sha256:${n.slice("blobs/sha256/".length)}`);
    const expected = [
      nested.digest,
      nested.inner.digest,
      ...images.flatMap((i) => [i.digest, ...i.blobs().map((b) => b.digest)]),
    ];
    expect(carried.sort()).toEqual(expected.sort());
    const target = await unreachableMirror();
    const imported = await cli(["import", out, "--url", target.url, "--token", TOKEN, "--json"]);
    expect(imported.code, imported.stdout).toBe(0);
    expect(report(imported).images).toEqual([
      expect.objectContaining({ reference: REF, status: "imported", digest: nested.digest }),
    ]);
    await expectNestedServed(target);
  });

  it("is refused a tag when a bundle carries its indexes but none of its images, naming what is missing", async () => {
    // The bundle an exporter that walked one level deep wrote: both indexes, no image manifest, no layer.
    const mtime = 0;
    const file = (name: string, bytes: Buffer) => [
      fileHeader({ name, size: bytes.length, mtime }),
      bytes,
      Buffer.alloc((512 - (bytes.length % 512)) % 512),
    ];
    const index = {
      schemaVersion: 2,
      manifests: [
        {
          mediaType: nested.mediaType,
          digest: nested.digest,
          size: nested.manifest.length,
          annotations: { "io.registry-mirror.reference": REF },
        },
      ],
    };
    const partial = join(work, "nested-partial.tar");
    await writeFile(
      partial,
      Buffer.concat([
        ...file("oci-layout", Buffer.from('{"imageLayoutVersion":"1.0.0"}')),
        ...file("index.json", Buffer.from(JSON.stringify(index))),
        ...file(`blobs/sha256/${nested.digest.slice(7)}`, nested.manifest),
        ...file(`blobs/sha256/${nested.inner.digest.slice(7)}`, nested.inner.manifest),
        endOfArchive(),
      ]),
    );
    const target = await unreachableMirror();
    const res = await cli(["import", partial, "--url", target.url, "--token", TOKEN, "--json"]);
    expect(res.code, res.stdout).toBe(1);
    expect(report(res).images).toEqual([
      expect.objectContaining({ reference: REF, status: "incomplete", missing: images.map((i) => i.digest) }),
    ]);
    const tag = await fetchRaw(`${target.url}/v2/team/nested/manifests/v1`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(tag.status).toBeGreaterThanOrEqual(400);
  });
});

describe("data directory lock", () => {
  it("refuses a second opener (CLI, mirror process, in-process mirror) and breaks a lock whose process is gone", async () => {
    const dataDir = join(work, "locked-cache");
    const config = await writeConfig("locked", dataDir, nowhere, `listen: "127.0.0.1:${await freePort()}"`);
    const holder = teardown.track(
      await startTestMirror({ upstreams: { "docker.io": { url: nowhere, default: true } }, dataDir }),
    );
    const lock = JSON.parse(await readFile(join(dataDir, "mirror.lock"), "utf8")) as { pid: number };
    expect(lock.pid).toBe(process.pid);

    const imported = await cli(["import", bundle, "--data-dir", dataDir, "--config", config]);
    expect(imported.code).toBe(1);
    expect(imported.stderr).toMatch(new RegExp(`import: the data directory is in use by process ${process.pid} `));
    const server = await cli(["--config", config], 30_000);
    expect(server.code).toBe(1);
    expect(server.stderr).toMatch(/data directory is in use/);
    await expect(
      createMirror(
        parseConfig({ storage: { path: dataDir }, upstreams: { "docker.io": { url: nowhere, default: true } } }),
      ),
    ).rejects.toBeInstanceOf(DataDirLockedError);
    await holder.stop();
    await expect(stat(join(dataDir, "mirror.lock"))).rejects.toThrow();

    // A lock left by a process that no longer exists (a SIGKILLed mirror) does not block the next opener.
    const gone = await runCommand("sh", ["-c", "echo $$"], { timeoutMs: 10_000 });
    await writeFile(
      join(dataDir, "mirror.lock"),
      JSON.stringify({
        pid: Number(gone.stdout.trim()),
        hostname: hostname(),
        purpose: "mirror",
        since: "x",
        token: "dead",
      }),
    );
    const inv = await cli([
      "inventory",
      "--data-dir",
      dataDir,
      "--config",
      config,
      "--output",
      join(work, "after-stale.json"),
    ]);
    expect(inv.code, inv.stderr).toBe(0);
    await expect(stat(join(dataDir, "mirror.lock"))).rejects.toThrow();
  });
});

describe("a fleet replica's configuration on the command line", () => {
  it("`mirror inventory --data-dir` does not join the fleet: it does not read (or complain about) the cluster secret", async () => {
    const redis = teardown.track(await startRedis());
    const dataDir = join(work, "replica-cache");
    await mkdir(dataDir);
    const missingSecret = join(work, "no-such-cluster-secret");
    const config = await writeConfig(
      "replica",
      dataDir,
      nowhere,
      [
        `redis: { url: ${JSON.stringify(redis.url)} }`,
        `cluster: { advertiseUrl: "http://127.0.0.1:${await freePort()}", secretFile: ${JSON.stringify(missingSecret)} }`,
      ].join("\n"),
    );
    const inv = await cli([
      "inventory",
      "--data-dir",
      dataDir,
      "--config",
      config,
      "--output",
      join(work, "replica.json"),
    ]);
    expect(inv.code, inv.stderr).toBe(0);
    // A replica would report its unreadable secret (an error line, /readyz); a command on its data directory has
    // no use for it and must not alarm the operator about it.
    expect(`${inv.stdout}\n${inv.stderr}`).not.toMatch(/cluster secret|no-such-cluster-secret/);
    const listing = JSON.parse(await readFile(join(work, "replica.json"), "utf8")) as { blobs: unknown[] };
    expect(listing.blobs).toEqual([]);
  });
});

describe("bundle tar format", () => {
  async function entriesOf(
    bytes: Buffer,
    chunk = 700,
  ): Promise<Array<{ name: string; type: string; content: Buffer }>> {
    // Odd-sized chunks: headers and content straddle chunk boundaries, as they do on a socket.
    const chunks = async function* () {
      for (let i = 0; i < bytes.length; i += chunk) yield bytes.subarray(i, i + chunk);
    };
    const out = [];
    for await (const entry of new TarReader(chunks()).entries()) {
      const parts: Buffer[] = [];
      for await (const c of entry.body()) parts.push(c);
      out.push({ name: entry.name, type: entry.type, content: Buffer.concat(parts) });
    }
    return out;
  }

  it("reads what another writer (tar-stream) produces: pax long names, directories, links, empty files", async () => {
    const pack = tar.pack();
    const long = `blobs/${"x".repeat(140)}/content`;
    pack.entry({ name: "blobs/", type: "directory" });
    pack.entry({ name: long }, Buffer.from("long name content"));
    pack.entry({ name: "link", type: "symlink", linkname: "blobs" });
    pack.entry({ name: "empty" }, Buffer.alloc(0));
    pack.entry({ name: "big" }, Buffer.alloc(5000, 7));
    pack.finalize();
    const parts: Buffer[] = [];
    for await (const c of pack as AsyncIterable<Buffer>) parts.push(c);
    const entries = await entriesOf(Buffer.concat(parts));
    expect(entries.map((e) => [e.name, e.type, e.content.length])).toEqual([
      ["blobs/", "directory", 0],
      [long, "file", 17],
      ["link", "other", 0],
      ["empty", "file", 0],
      ["big", "file", 5000],
    ]);
    expect(entries[4]!.content.equals(Buffer.alloc(5000, 7))).toBe(true);
  });

  it("writes sizes of 8 GiB and more in base-256, as GNU tar reads them", async () => {
    const size = 9 * 1024 ** 3 + 5;
    const header = fileHeader({ name: "blobs/sha256/huge", size, mtime: 0 });
    const file = join(work, "huge-header.tar");
    await writeFile(file, Buffer.concat([header, Buffer.alloc(512)]));
    // GNU tar lists the entry (then complains that its content is missing, which is the point of the test).
    const gnu = await runCommand("tar", ["-tvf", file], { timeoutMs: 10_000 });
    expect(gnu.stdout).toContain(` ${size} `);
    await expect(entriesOf(Buffer.concat([header, Buffer.alloc(512)]))).rejects.toThrow(
      /ends inside blobs\/sha256\/huge: 512 of 9663676421 bytes/,
    );
  });

  it("rejects a damaged header, and a stream without the end-of-archive marker", async () => {
    const header = fileHeader({ name: "oci-layout", size: 3, mtime: 0 });
    const good = Buffer.concat([header, Buffer.from("abc"), Buffer.alloc(509), endOfArchive()]);
    expect((await entriesOf(good)).map((e) => e.content.toString())).toEqual(["abc"]);
    const damaged = Buffer.from(good);
    damaged[10]! ^= 0x20;
    await expect(entriesOf(damaged)).rejects.toThrow(TarError);
    await expect(entriesOf(damaged)).rejects.toThrow(/corrupt tar header at byte 0/);
    await expect(entriesOf(good.subarray(0, 1024))).rejects.toThrow(/without the end-of-archive marker/);
  });
});
