// The project's Dockerfile, built and run for real: the base image is a stand-in built from real parts under
// the real base image's name (harness/base-image.ts), the build runs `npm ci` and `tsc` inside `docker build`,
// and the resulting container serves a real dockerd pull from a real upstream registry on loopback.
//
// Two private daemons, so that no client pull can leave loopback: the build daemon keeps the machine's DNS
// (npm registry) and is stopped as soon as the image is saved; the client daemon (harness/dockerd.ts, DNS on
// loopback only) loads the image, runs the mirror container with --network host on a free loopback port,
// and pulls through it with `registry-mirrors`.
//
// The first run on a machine builds the stand-in rootfs with debootstrap (about 2 minutes) and caches it.
import { randomUUID } from "node:crypto";
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BASE_IMAGE, ensureStandInRootfs, importStandIn, progress, startBuildDockerd } from "../harness/base-image.ts";
import { startDockerd, type Dockerd } from "../harness/dockerd.ts";
import { buildImage, busyboxLayer, pushImage, type BuiltImage } from "../harness/image-builder.ts";
import { freePort, Teardown, waitFor, type CommandResult } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
const teardown = new Teardown();
afterAll(() => teardown.run());

/** Unique per run: two runs on one machine never share an image or container name. */
const RUN = randomUUID().slice(0, 8);
const IMAGE = `registry-mirror:test-${RUN}`;
const CONTAINER = `mirror-${RUN}`;
/** A plain Docker Hub name: dockerd sends it to its registry mirror as library/<name>. */
const PULLED = `image-test-${RUN}`;

/** Budget for what the Dockerfile adds on top of its base: compiled output and production dependencies. */
const MAX_ADDED_BYTES = 60 * 1024 * 1024;

let registry: Registry;
let dockerd: Dockerd;
let pushed: BuiltImage;
let mirrorPort: number;
let workDir: string;
let sizes: { base: number; image: number };
const marker = `image-test-${randomUUID()}`;

function explain(what: string, result: CommandResult, extra = ""): string {
  return `${what} exited ${result.code}\nstdout: ${result.stdout.slice(-4000)}\nstderr: ${result.stderr.slice(-4000)}${extra}`;
}

async function mustDocker(
  d: { docker: Dockerd["docker"] },
  args: string[],
  timeoutMs = 120_000,
): Promise<CommandResult> {
  const result = await d.docker(args, { timeoutMs });
  if (result.code !== 0) throw new Error(explain(`docker ${args.join(" ")}`, result));
  return result;
}

async function containerState(): Promise<{
  Status: string;
  ExitCode: number;
  Health?: { Status: string; Log: Array<{ ExitCode: number; Output: string }> };
}> {
  const result = await mustDocker(dockerd, ["inspect", "--format", "{{json .State}}", CONTAINER]);
  return JSON.parse(result.stdout) as Awaited<ReturnType<typeof containerState>>;
}

async function waitHealthy(): Promise<void> {
  await waitFor(async () => (await containerState()).Health?.Status === "healthy", {
    timeoutMs: 60_000,
    intervalMs: 500,
    what: `container ${CONTAINER} to report healthy`,
  }).catch(async (err: unknown) => {
    const logs = await dockerd.docker(["logs", "--tail", "50", CONTAINER]);
    throw new Error(
      `${(err as Error).message}\nstate: ${JSON.stringify(await containerState())}\nlogs:\n${logs.stdout}${logs.stderr}`,
    );
  });
}

beforeAll(async () => {
  workDir = await mkdtemp(join(tmpdir(), "image-test-"));
  teardown.add("image test work dir", () => rm(workDir, { recursive: true, force: true }));

  const rootfs = await ensureStandInRootfs(progress);
  const build = teardown.track(await startBuildDockerd());
  await importStandIn(build, rootfs);
  progress(`docker build ${ROOT} (npm ci and tsc inside the build)`);
  // BuildKit, as current Docker uses by default; --network host for the npm registry, since this daemon
  // has no bridge network.
  const built = await build.docker(["build", "--network", "host", "--tag", IMAGE, ROOT], {
    timeoutMs: 15 * 60_000,
    env: { DOCKER_BUILDKIT: "1" },
  });
  if (built.code !== 0) throw new Error(explain("docker build", built));
  const size = async (ref: string): Promise<number> =>
    Number((await mustDocker(build, ["image", "inspect", "--format", "{{.Size}}", ref])).stdout.trim());
  sizes = { base: await size(BASE_IMAGE), image: await size(IMAGE) };
  progress(
    `image ${IMAGE}: ${(sizes.image / 1e6).toFixed(1)} MB, of which the Dockerfile adds ${((sizes.image - sizes.base) / 1e6).toFixed(1)} MB`,
  );
  const archive = join(workDir, "image.tar");
  await mustDocker(build, ["save", "--output", archive, IMAGE], 5 * 60_000);
  // The build daemon (machine DNS) is gone before anything pulls through the mirror.
  await build.stop();

  registry = teardown.track(await startRegistry());
  pushed = buildImage({ layers: [busyboxLayer("docker")], format: "docker", cmd: ["/bin/sh", "-c", `echo ${marker}`] });
  await pushImage(registry.url, `library/${PULLED}`, "latest", pushed);

  mirrorPort = await freePort();
  const mirrorHost = `127.0.0.1:${mirrorPort}`;
  dockerd = teardown.track(
    await startDockerd({ registryMirror: `http://${mirrorHost}`, insecureRegistries: [mirrorHost] }),
    "client dockerd",
  );
  await mustDocker(dockerd, ["load", "--input", archive], 5 * 60_000);

  // The configuration a user would mount: one upstream, Docker Hub's stand-in on loopback, as the default.
  const configDir = join(workDir, "config");
  await mkdir(configDir);
  await writeFile(
    join(configDir, "config.yaml"),
    `upstreams:\n  docker.io:\n    url: ${registry.url}\n    default: true\n    tagTtl: 1m\nshutdownGrace: 5s\n`,
  );
  // mkdtemp makes 0700 directories; the container's uid 1000 must be able to read the mounted file.
  await chmod(workDir, 0o755);
  await chmod(configDir, 0o755);

  teardown.add("mirror container", async () => {
    await dockerd.docker(["rm", "--force", "--volumes", CONTAINER]);
  });
  await mustDocker(dockerd, [
    "run",
    "--detach",
    "--name",
    CONTAINER,
    "--network",
    "host",
    // As the Helm chart runs it: nothing but /data (the image's volume) and /tmp is writable.
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--volume",
    `${configDir}:/etc/registry-mirror:ro`,
    "--env",
    "MIRROR_CONFIG=/etc/registry-mirror/config.yaml",
    // A port of this test's choosing, set the documented way; the HEALTHCHECK must find it by itself.
    "--env",
    `MIRROR_LISTEN=${mirrorHost}`,
    // Only the interval: the check itself is the image's. Docker waits a whole interval before the first one.
    "--health-interval",
    "1s",
    IMAGE,
  ]);
  await waitHealthy();
  await registry.sync();
  registry.clearRequests();
}, 30 * 60_000);

describe("the container image", () => {
  it("is built FROM the real base image name, with compiled output and production dependencies only", async () => {
    const dockerfile = await readFile(join(ROOT, "Dockerfile"), "utf8");
    // The stand-in was imported under this exact name, so a build elsewhere uses the real image unchanged.
    expect(dockerfile).toMatch(new RegExp(`^ARG NODE_IMAGE=${BASE_IMAGE.replace(/[.]/g, "\\.")}$`, "m"));
    expect(dockerfile.match(/^FROM .*/gm)).toEqual([
      "FROM ${NODE_IMAGE} AS build",
      "FROM ${NODE_IMAGE} AS prod-deps",
      "FROM ${NODE_IMAGE}",
    ]);

    const ls = await mustDocker(dockerd, [
      "run",
      "--rm",
      "--network",
      "none",
      "--entrypoint",
      "/bin/sh",
      IMAGE,
      "-c",
      "ls -A /app; echo ---; find /app/dist -type f ! -name '*.js' ! -name '*.js.map' ! -path '/app/dist/console/assets/*'; echo ---; ls /app/node_modules; echo ---; ls /app/dist/console/assets",
    ]);
    const [appDir = "", strayFiles = "", modules = "", consoleAssets = ""] = ls.stdout.split("---\n");
    // The web console's static files, copied beside the compiled code by `npm run build`.
    expect(consoleAssets.trim().split("\n")).toEqual(expect.arrayContaining(["console.css", "console.js"]));
    expect(appDir.trim().split("\n")).toEqual(["dist", "node-flags", "node_modules", "package.json"]);
    expect(strayFiles.trim(), "files in dist/ other than compiled JavaScript").toBe("");
    const installed = modules.trim().split("\n");
    for (const dep of Object.keys(
      (JSON.parse(await readFile(join(ROOT, "package.json"), "utf8")) as { dependencies: Record<string, string> })
        .dependencies,
    )) {
      expect(installed, `production dependency ${dep}`).toContain(dep.split("/")[0]);
    }
    for (const devOnly of ["typescript", "vitest", "eslint", "ajv"])
      expect(installed, `dev dependency ${devOnly}`).not.toContain(devOnly);

    expect(sizes.image - sizes.base, `bytes added on top of ${BASE_IMAGE}`).toBeLessThan(MAX_ADDED_BYTES);
  });

  it("runs as uid 1000, not root, and reports healthy through its HEALTHCHECK", async () => {
    const config = JSON.parse(
      (await mustDocker(dockerd, ["image", "inspect", "--format", "{{json .Config}}", IMAGE])).stdout,
    ) as {
      User: string;
      Volumes: Record<string, unknown>;
      Healthcheck: { Test: string[]; Interval: number };
      Entrypoint: string[];
      StopSignal: string;
    };
    // Numeric, so Kubernetes' runAsNonRoot can check it.
    expect(config.User).toBe("1000:1000");
    expect(Object.keys(config.Volumes)).toEqual(["/data"]);
    expect(config.Healthcheck.Test.join(" ")).toContain("/healthz");
    // A shell reads the V8 flags from /app/node-flags and `exec`s node: node itself becomes PID 1 and receives
    // SIGTERM (no shell stays in between; checked on the running container below).
    expect(config.Entrypoint.slice(0, 2)).toEqual(["/bin/sh", "-c"]);
    expect(config.Entrypoint[2]).toMatch(/^exec node .*\/app\/node-flags/);

    const id = await mustDocker(dockerd, ["exec", CONTAINER, "id", "-u"]);
    expect(id.stdout.trim()).toBe("1000");
    const pid1 = await mustDocker(dockerd, ["exec", CONTAINER, "cat", "/proc/1/cmdline"]);
    expect(pid1.stdout.split("\0")[0]).toBe("node");

    const state = await containerState();
    expect(state.Health?.Status).toBe("healthy");
    expect(state.Health?.Log.at(-1)?.ExitCode).toBe(0);
  });

  it("serves a real docker pull through the container from the upstream", { timeout: 180_000 }, async () => {
    const pull = await dockerd.docker(["pull", PULLED]);
    expect(pull.code, explain("docker pull", pull, `\ndockerd log:\n${dockerd.output().slice(-3000)}`)).toBe(0);
    const inspect = await mustDocker(dockerd, [
      "image",
      "inspect",
      "--format",
      "{{.Id}} {{json .RepoDigests}}",
      PULLED,
    ]);
    expect(inspect.stdout.trim()).toBe(`${pushed.config.digest} ["${PULLED}@${pushed.digest}"]`);

    // The upstream served the manifest and every blob: the pull went through the container.
    await registry.sync();
    expect(
      registry.count({ method: "GET", kind: "manifests", repo: `library/${PULLED}`, status: 200 }),
    ).toBeGreaterThanOrEqual(1);
    for (const blob of pushed.blobs()) {
      expect(
        registry.count({ method: "GET", kind: "blobs", pathIncludes: blob.digest, status: 200 }),
        `upstream GETs of ${blob.digest}`,
      ).toBeGreaterThanOrEqual(1);
    }

    const run = await dockerd.docker(["run", "--rm", "--network", "none", PULLED]);
    expect(run.code, explain("docker run", run)).toBe(0);
    expect(run.stdout).toBe(`${marker}\n`);
  });

  it("shuts down gracefully on docker stop (SIGTERM), with exit code 0", { timeout: 60_000 }, async () => {
    const started = Date.now();
    await mustDocker(dockerd, ["stop", "--time", "30", CONTAINER]);
    const elapsed = Date.now() - started;
    const state = await containerState();
    const logs = await mustDocker(dockerd, ["logs", CONTAINER]);
    expect(state.ExitCode, logs.stdout.slice(-2000)).toBe(0);
    // Well before the 30 s after which docker would have sent SIGKILL.
    expect(elapsed).toBeLessThan(10_000);
    expect(logs.stdout).toMatch(/"signal":"SIGTERM".*"msg":"shutting down"/);
  });

  it(
    "keeps its cache in the /data volume: restarted with the upstream down, it still serves the image",
    { timeout: 180_000 },
    async () => {
      await registry.stop();
      await mustDocker(dockerd, ["start", CONTAINER]);
      await waitHealthy();

      // A second client with an empty store, so every manifest and blob has to come from the mirror.
      const mirrorHost = `127.0.0.1:${mirrorPort}`;
      const fresh = teardown.track(
        await startDockerd({ registryMirror: `http://${mirrorHost}`, insecureRegistries: [mirrorHost] }),
        "fresh client dockerd",
      );
      const pull = await fresh.docker(["pull", PULLED]);
      expect(pull.code, explain("docker pull (upstream down)", pull)).toBe(0);
      const inspect = await mustDocker(fresh, ["image", "inspect", "--format", "{{.Id}}", PULLED]);
      expect(inspect.stdout.trim()).toBe(pushed.config.digest);
      await fresh.stop();

      await mustDocker(dockerd, ["stop", "--time", "30", CONTAINER]);
      expect((await containerState()).ExitCode).toBe(0);
    },
  );
});
