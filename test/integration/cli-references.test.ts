/**
 * One reference grammar for every command: `mirror prefetch` (through a running mirror's admin API) and
 * `mirror export` (through a cache directory of its own) take the same short, aliased and prefixed references
 * and read them alike (src/config/upstream-resolver.ts): a name whose first component names no upstream is the
 * default upstream's, as with docker. Export runs as a user would, through scripts/start.sh from their own
 * directory with relative --config and --output.
 */
import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer, type BuiltImage } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { runCommand, Teardown } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { fetchRaw } from "./client.ts";

const TOKEN = "admin-token-for-tests-0123";
const teardown = new Teardown();
afterAll(() => teardown.run());
let upstream: Registry;
let mirror: TestMirror;
let image: BuiltImage;
let home: string;

/** The default upstream, with an alias and Docker Hub's library prefix (its preset keys on the real host). */
const upstreamConfig = (url: string) => ({
  url,
  default: true,
  aliases: ["hub.example"],
  libraryPrefix: "library",
});

/** Short (default upstream, library prefix), aliased, and prefixed by name: all one image. */
const REFERENCES = ["tool:v1", "hub.example/tool:v1", "HUB.EXAMPLE/library/tool:v1", "docker.io/library/tool:v1"];
const CANONICAL = "docker.io/library/tool:v1";

beforeAll(async () => {
  upstream = teardown.track(await startRegistry());
  image = buildImage({ format: "oci", layers: [randomLayer(50_000)] });
  await pushImage(upstream.url, "library/tool", "v1", image);
  mirror = teardown.track(
    await startTestMirror({
      upstreams: { "docker.io": upstreamConfig(upstream.url) },
      extra: { admin: { token: TOKEN } },
    }),
  );
  home = await mkdtemp(join(tmpdir(), "cli-refs-"));
  teardown.add("temp dir", () => rm(home, { recursive: true, force: true }));
  await writeFile(
    join(home, "mirror.yaml"),
    `storage: { path: export-cache }\nupstreams:\n  docker.io: ${JSON.stringify(upstreamConfig(upstream.url))}\n`,
  );
});

describe("one reference grammar", () => {
  it("mirror prefetch takes short, aliased and prefixed references, as export does", async () => {
    for (const reference of REFERENCES) {
      const res = await runCommand(
        process.execPath,
        ["src/main.ts", "prefetch", reference, "--url", mirror.url, "--token", TOKEN, "--poll-ms", "50"],
        { timeoutMs: 30_000 },
      );
      expect(res.code, `${reference}: ${res.stderr}`).toBe(0);
      expect(res.stderr, reference).toContain(`${CANONICAL} done: 1 manifests, blobs 2/2`);
    }
    for (const blob of image.blobs()) expect(await mirror.mirror.blobStore.size(blob.digest)).toBe(blob.bytes.length);
    // The admin API itself reads them alike.
    const started = await fetchRaw(`${mirror.url}/admin/v1/prefetch`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
      body: Buffer.from(JSON.stringify({ reference: "tool:v1" })),
    });
    expect(started.status).toBe(202);
    expect((JSON.parse(started.body.toString()) as { reference: string }).reference).toBe(CANONICAL);
  });

  it("mirror export takes the same references, run from the user's directory with relative paths", async () => {
    const env = {
      ...(process.env as Record<string, string>),
      PATH: `${dirname(process.execPath)}:${process.env.PATH}`,
      // start.sh's compile cache under the test's directory, not the user's ~/.cache.
      XDG_CACHE_HOME: join(home, ".cache"),
      NODE_COMPILE_CACHE: "",
    };
    for (const [i, reference] of REFERENCES.entries()) {
      const res = await runCommand(
        "bash",
        [resolve("scripts/start.sh"), "export", reference, "--config", "mirror.yaml", "--output", `bundle-${i}.tar`],
        { cwd: home, env, timeoutMs: 60_000 },
      );
      expect(res.code, `${reference}: ${res.stderr}`).toBe(0);
      expect(res.stderr, reference).toContain(`${CANONICAL} ${image.digest}`);
      expect(res.stderr).toContain(`export: wrote bundle-${i}.tar: 1 references, 1 manifests, 2 blobs`);
      expect((await stat(join(home, `bundle-${i}.tar`))).size).toBeGreaterThan(50_000);
    }
    // The cache of the config, relative to the config file's directory; nothing in the checkout.
    expect((await stat(join(home, "export-cache", "blobs"))).isDirectory()).toBe(true);
    await expect(stat(resolve("bundle-0.tar"))).rejects.toThrow();
    await expect(stat(resolve("export-cache"))).rejects.toThrow();
  });

  it("refuses the same reference alike in both when it cannot name an image", async () => {
    const bad = "Tool:V1"; // upper case is no repository name
    const prefetch = await runCommand(
      process.execPath,
      ["src/main.ts", "prefetch", bad, "--url", mirror.url, "--token", TOKEN],
      { timeoutMs: 30_000 },
    );
    expect(prefetch.code).toBe(1);
    expect(prefetch.stderr).toMatch(/^prefetch: 400 .*NAME_INVALID/m);
    const exported = await runCommand(
      process.execPath,
      [resolve("src/main.ts"), "export", bad, "--config", "mirror.yaml", "--output", "bad.tar"],
      { cwd: home, timeoutMs: 30_000 },
    );
    expect(exported.code).toBe(1);
    expect(exported.stderr).toMatch(/^export: .*invalid repository name/im);
  });
});
