// Self-test of the private dockerd, and proof that images the harness builds are really runnable: push a
// busybox image to a plain registry, pull it straight from there (no mirror involved) and run it.
import { existsSync } from "node:fs";
import { readFile, readlink } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDockerd, type Dockerd } from "../harness/dockerd.ts";
import { buildImage, busyboxLayer, pushImage, type BuiltImage } from "../harness/image-builder.ts";
import { isAlive, Teardown } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

describe("startDockerd", () => {
  let registry: Registry;
  let dockerd: Dockerd;
  let image: BuiltImage;

  beforeAll(async () => {
    registry = teardown.track(await startRegistry());
    image = buildImage({
      layers: [busyboxLayer("docker")],
      format: "docker",
      cmd: ["/bin/sh", "-c", "echo hello-from-harness"],
    });
    await pushImage(registry.url, "library/hello", "1", image);
    dockerd = teardown.track(await startDockerd({ insecureRegistries: [registry.host] }));
  });

  it("runs in a private mount namespace whose resolv.conf names only 127.0.0.1", async () => {
    expect(dockerd.env["DOCKER_HOST"]).toBe(`unix://${dockerd.socket}`);
    expect(dockerd.socket.length).toBeLessThan(100);
    // The PID we hold is dockerd itself, in a mount namespace of its own.
    expect(await readlink(`/proc/${dockerd.pid}/ns/mnt`)).not.toBe(await readlink("/proc/self/ns/mnt"));
    const resolv = await readFile(`/proc/${dockerd.pid}/root/etc/resolv.conf`, "utf8");
    expect(resolv.trim()).toBe("nameserver 127.0.0.1");
    const cmdline = (await readFile(`/proc/${dockerd.pid}/cmdline`, "utf8")).split("\0");
    expect(cmdline[0]).toBe("dockerd");
    expect(cmdline).toContain("--bridge=none");
    const info = await dockerd.docker(["info", "--format", "{{.Driver}} {{.DockerRootDir}}"]);
    expect(info.code).toBe(0);
    expect(info.stdout.trim()).toBe(`vfs ${dockerd.dataRoot}`);
  });

  it("pulls a harness-built image straight from the registry and runs it", async () => {
    const ref = `${registry.host}/library/hello:1`;
    registry.clearRequests();
    const pull = await dockerd.docker(["pull", ref]);
    expect(pull.code, pull.stderr).toBe(0);
    expect(pull.stdout).toContain(image.digest);

    // The image dockerd stored is the one we built: its ID is our config digest.
    const inspect = await dockerd.docker(["image", "inspect", "--format", "{{.Id}} {{json .RepoDigests}}", ref]);
    expect(inspect.code, inspect.stderr).toBe(0);
    expect(inspect.stdout.trim()).toBe(`${image.config.digest} ["${registry.host}/library/hello@${image.digest}"]`);

    await registry.sync();
    expect(registry.count({ method: "GET", kind: "blobs" })).toBe(image.blobs().length);
    expect(registry.count({ method: "GET", kind: "manifests" })).toBeGreaterThanOrEqual(1);

    const run = await dockerd.docker(["run", "--rm", "--network", "none", ref]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toBe("hello-from-harness\n");
  });

  it("stop() ends dockerd and its containerd and deletes its files", async () => {
    const containerdPid = Number((await readFile(`${dockerd.dir}/e/containerd/containerd.pid`, "utf8")).trim());
    expect(await isAlive(containerdPid)).toBe(true);
    const t0 = Date.now();
    await dockerd.stop();
    const took = Date.now() - t0;
    expect(took).toBeLessThan(15_000);
    expect(await isAlive(dockerd.pid)).toBe(false);
    expect(await isAlive(containerdPid)).toBe(false);
    expect(existsSync(dockerd.dir)).toBe(false);
    await dockerd.stop(); // idempotent
  });
});
