// End-to-end air-gapped transfer with real clients: images exported from a mirror of a real upstream are
// imported into a second mirror whose upstreams are offline (air-gapped), then pulled from it by skopeo
// (every exported image, by tag, every platform) and by dockerd through `registry-mirrors` (a Docker Hub name,
// run with --network none). skopeo also reads the bundle file itself (`oci-archive:`), which shows the bundle
// is a standard OCI image layout in a tar, not a private format.
//
// One limit is containers/image's, not the bundle's: selecting an image of a layout by name, it only considers
// index.json descriptors of OCI media types (oci/layout getManifestDescriptor), so a Docker schema 2 image in a
// bundle (kept byte for byte: converting it would change its digest) is read by skopeo from a bundle that holds
// it alone, with no name.
import { createHash, randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDockerd } from "../harness/dockerd.ts";
import {
  buildImage,
  buildIndex,
  busyboxLayer,
  pushImage,
  pushIndex,
  randomLayer,
  type BuiltImage,
  type BuiltIndex,
} from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { prepareContainersTools, type ContainersTools } from "../harness/podman.ts";
import { runCommand, Teardown, type CommandResult } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

const TOKEN = "transfer-e2e-admin-token-0123";
const marker = `transfer-e2e-${randomUUID()}`;
const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** A Docker Hub name dockerd will ask the mirror for (docker.io/library/transfer-hello:latest). */
const hello: BuiltImage = buildImage({
  format: "docker",
  layers: [busyboxLayer("docker")],
  cmd: ["/bin/sh", "-c", `echo ${marker}`],
});
const multi: BuiltIndex = buildIndex([
  buildImage({ format: "oci", architecture: "amd64", layers: [randomLayer(80_000)], labels: { image: "multi" } }),
  buildImage({ format: "oci", architecture: "arm64", layers: [randomLayer(70_000)], labels: { image: "multi" } }),
]);
const tool: BuiltImage = buildImage({ format: "oci", layers: [randomLayer(50_000)], labels: { image: "tool" } });

/** Each exported image: its reference in the bundle and how the air-gapped mirror serves it (path prefix for ghcr.io). */
const IMAGES = [
  { ref: "docker.io/library/transfer-hello:latest", mirrorPath: "library/transfer-hello:latest", image: hello },
  { ref: "docker.io/team/multi:v1", mirrorPath: "team/multi:v1", image: multi },
  { ref: "ghcr.io/team/tool:v1", mirrorPath: "ghcr.io/team/tool:v1", image: tool },
] as const;

let work: string;
let upstream: Registry;
let airGapped: TestMirror;
let tools: ContainersTools;
let bundle: string;
/** A bundle of the Docker schema 2 image alone. */
let dockerBundle: string;

function expectOk(what: string, res: CommandResult): void {
  expect(res.code, `${what} exited ${res.code}\nstdout: ${res.stdout}\nstderr: ${res.stderr}`).toBe(0);
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "transfer-e2e-"));
  teardown.add("work dir", () => rm(work, { recursive: true, force: true }));
  upstream = teardown.track(await startRegistry());
  await pushImage(upstream.url, "library/transfer-hello", "latest", hello);
  await pushIndex(upstream.url, "team/multi", "v1", multi);
  await pushImage(upstream.url, "team/tool", "v1", tool);

  // The connected side: export through a cache of its own, from the upstream.
  const config = join(work, "export.yaml");
  await writeFile(
    config,
    [
      `storage: { path: ${JSON.stringify(join(work, "export-cache"))} }`,
      "upstreams:",
      `  docker.io: { url: ${JSON.stringify(upstream.url)}, default: true, libraryPrefix: library }`,
      `  ghcr.io: { url: ${JSON.stringify(upstream.url)} }`,
      "",
    ].join("\n"),
  );
  bundle = join(work, "bundle.tar");
  const exported = await runCommand(
    process.execPath,
    ["src/main.ts", "export", ...IMAGES.map((i) => i.ref), "--config", config, "--output", bundle],
    { timeoutMs: 60_000 },
  );
  expectOk("mirror export", exported);
  dockerBundle = join(work, "docker-only.tar");
  expectOk(
    "mirror export (docker image alone)",
    await runCommand(
      process.execPath,
      ["src/main.ts", "export", IMAGES[0].ref, "--config", config, "--output", dockerBundle],
      { timeoutMs: 60_000 },
    ),
  );

  // The air-gapped side: every upstream offline, so content can only come from the bundle.
  airGapped = teardown.track(
    await startTestMirror({
      upstreams: {
        "docker.io": { url: upstream.url, default: true, libraryPrefix: "library", offline: true },
        "ghcr.io": { url: upstream.url, offline: true },
      },
      extra: { admin: { token: TOKEN } },
    }),
    "air-gapped mirror",
  );
  const imported = await runCommand(
    process.execPath,
    ["src/main.ts", "import", bundle, "--url", airGapped.url, "--token", TOKEN, "--pin"],
    { timeoutMs: 60_000 },
  );
  expectOk("mirror import", imported);
  expect(imported.stdout).toMatch(/^imported docker\.io\/library\/transfer-hello:latest /m);

  tools = teardown.track(await prepareContainersTools({ registries: [] }), "skopeo");
});

/** skopeo's dir: keeps the top manifest byte for byte (so its digest is the image's) and every blob under its hex. */
async function expectCopiedToDir(dest: string, image: BuiltImage | BuiltIndex): Promise<void> {
  expect(sha256(await readFile(join(dest, "manifest.json")))).toBe(image.digest);
  for (const child of "children" in image ? image.children : [image]) {
    for (const blob of child.blobs())
      expect(sha256(await readFile(join(dest, blob.digest.slice(7)))), `${dest}: ${blob.digest}`).toBe(blob.digest);
  }
}

describe("air-gapped transfer with real clients", () => {
  it("skopeo reads the bundle directly as an oci-archive", async () => {
    const readable = [
      ...IMAGES.filter((i) => i.image.mediaType.startsWith("application/vnd.oci.")).map((i) => ({
        archive: `oci-archive:${bundle}:${i.ref}`,
        image: i.image,
      })),
      { archive: `oci-archive:${dockerBundle}`, image: hello },
    ];
    expect(readable).toHaveLength(3);
    for (const [n, { archive, image }] of readable.entries()) {
      const dest = join(work, `from-archive-${n}`);
      expectOk(`skopeo copy ${archive}`, await tools.skopeo(["copy", "--all", "--quiet", archive, `dir:${dest}`]));
      await expectCopiedToDir(dest, image);
    }
  });

  it("skopeo pulls every exported image, every platform, from the air-gapped mirror", async () => {
    for (const { mirrorPath, image } of IMAGES) {
      const source = `docker://${airGapped.host}/${mirrorPath}`;
      const raw = await tools.skopeo(["inspect", "--raw", "--tls-verify=false", source]);
      expectOk(`skopeo inspect --raw ${source}`, raw);
      expect(sha256(Buffer.from(raw.stdout))).toBe(image.digest);
      const dest = join(work, `from-mirror-${sha256(Buffer.from(mirrorPath)).slice(7, 19)}`);
      expectOk(
        `skopeo copy --all ${source}`,
        await tools.skopeo(["copy", "--all", "--quiet", "--src-tls-verify=false", source, `dir:${dest}`]),
      );
      await expectCopiedToDir(dest, image);
    }
  });

  it(
    "dockerd pulls a Docker Hub name through registry-mirrors and runs it with no network",
    { timeout: 180_000 },
    async () => {
      const dockerd = teardown.track(
        await startDockerd({ registryMirror: airGapped.url, insecureRegistries: [airGapped.host] }),
        "dockerd",
      );
      const pull = await dockerd.docker(["pull", "transfer-hello"]);
      expectOk("docker pull transfer-hello", pull);
      const inspect = await dockerd.docker([
        "image",
        "inspect",
        "--format",
        "{{.Id}} {{json .RepoDigests}}",
        "transfer-hello",
      ]);
      expect(inspect.stdout.trim()).toBe(`${hello.config.digest} ["transfer-hello@${hello.digest}"]`);
      const run = await dockerd.docker(["run", "--rm", "--network", "none", "transfer-hello"]);
      expectOk("docker run", run);
      expect(run.stdout).toBe(`${marker}\n`);
      await dockerd.stop();
    },
  );
});
