// End-to-end: a real dockerd pulls a plain Docker Hub name through the mirror, from a real upstream
// registry standing in for Docker Hub, runs the image, and then pulls it again from a fresh daemon while
// the upstream is down, served from the mirror's cache alone.
//
// dockerd falls back to Docker Hub silently when a mirror fails; the harness's dockerd cannot reach it
// (loopback-only DNS), and the upstream's request log proves the pull went through the mirror.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDockerd, type Dockerd } from "../harness/dockerd.ts";
import { buildImage, busyboxLayer, pushImage, type BuiltImage } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { Teardown, type CommandResult } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

/** A plain Docker Hub name: dockerd maps it to docker.io/library/hello-mirror:latest and asks the mirror. */
const NAME = "hello-mirror";
const UPSTREAM_REPO = `library/${NAME}`;

/** Everything needed to understand a failed docker command, for assertion messages. */
function explain(what: string, result: CommandResult, dockerd: Dockerd, registry: Registry): string {
  const upstream = registry
    .requests()
    .map((r) => `${r.method} ${r.path} ${r.status}`)
    .join("\n");
  return [
    `${what} exited ${result.code}`,
    `stdout: ${result.stdout}`,
    `stderr: ${result.stderr}`,
    `upstream requests:\n${upstream}`,
    `dockerd log (tail):\n${dockerd.output().slice(-4000)}`,
  ].join("\n");
}

describe("dockerd pulling through the mirror", () => {
  let registry: Registry;
  let mirror: TestMirror;
  let image: BuiltImage;
  // Unique per run, so the output can only come from this run's image.
  const marker = `mirror-e2e-${randomUUID()}`;

  beforeAll(async () => {
    registry = teardown.track(await startRegistry());
    image = buildImage({
      layers: [busyboxLayer("docker")],
      format: "docker",
      cmd: ["/bin/sh", "-c", `echo ${marker}`],
    });
    await pushImage(registry.url, UPSTREAM_REPO, "latest", image);
    mirror = teardown.track(
      await startTestMirror({ upstreams: { "docker.io": { url: registry.url, default: true } } }),
      "mirror",
    );
    await registry.sync();
    registry.clearRequests(); // from here on, only what the mirror asks the upstream
  });

  it("pulls a Docker Hub name through the mirror and runs it", { timeout: 180_000 }, async () => {
    const dockerd = teardown.track(
      await startDockerd({ registryMirror: mirror.url, insecureRegistries: [mirror.host] }),
      "dockerd (cold pull)",
    );

    const pull = await dockerd.docker(["pull", NAME]);
    expect(pull.code, explain("docker pull", pull, dockerd, registry)).toBe(0);

    // What dockerd stored is exactly the image we pushed: ID = config digest, repo digest = manifest digest.
    const inspect = await dockerd.docker(["image", "inspect", "--format", "{{.Id}} {{json .RepoDigests}}", NAME]);
    expect(inspect.code, explain("docker image inspect", inspect, dockerd, registry)).toBe(0);
    expect(inspect.stdout.trim()).toBe(`${image.config.digest} ["${NAME}@${image.digest}"]`);

    // The upstream served the manifest and every blob: the pull went through the mirror, not elsewhere.
    await registry.sync();
    expect(registry.count({ method: "GET", kind: "manifests", repo: UPSTREAM_REPO, status: 200 })).toBeGreaterThanOrEqual(1);
    for (const blob of image.blobs()) {
      expect(
        registry.count({ method: "GET", kind: "blobs", pathIncludes: blob.digest, status: 200 }),
        `upstream GETs of ${blob.mediaType} ${blob.digest}`,
      ).toBeGreaterThanOrEqual(1);
    }

    const run = await dockerd.docker(["run", "--rm", "--network", "none", NAME]);
    expect(run.code, explain("docker run", run, dockerd, registry)).toBe(0);
    expect(run.stdout).toBe(`${marker}\n`);

    // Free the daemon's resources before the next test starts another one.
    await dockerd.stop();
  });

  it("serves a fresh daemon from its cache while the upstream is down", { timeout: 180_000 }, async () => {
    await registry.stop();
    await expect(fetch(`${registry.url}/v2/`), "the upstream should be unreachable").rejects.toThrow();

    // A fresh data root: this daemon has never seen the image, so every manifest and blob must come
    // from the mirror, which can only answer from its cache.
    const dockerd = teardown.track(
      await startDockerd({ registryMirror: mirror.url, insecureRegistries: [mirror.host] }),
      "dockerd (warm pull)",
    );

    const pull = await dockerd.docker(["pull", NAME]);
    expect(pull.code, explain("docker pull (upstream down)", pull, dockerd, registry)).toBe(0);

    const inspect = await dockerd.docker(["image", "inspect", "--format", "{{.Id}} {{json .RepoDigests}}", NAME]);
    expect(inspect.stdout.trim()).toBe(`${image.config.digest} ["${NAME}@${image.digest}"]`);

    const run = await dockerd.docker(["run", "--rm", "--network", "none", NAME]);
    expect(run.code, explain("docker run", run, dockerd, registry)).toBe(0);
    expect(run.stdout).toBe(`${marker}\n`);

    await dockerd.stop();
  });
});
