// The chart's containerd-hosts DaemonSet, minus Kubernetes: the script and the config file are taken from
// the rendered chart, run with the environment the rendered DaemonSet gives them (only the paths and the
// Service address swapped for this machine's), and a real containerd (`ctr image pull --hosts-dir`) then
// pulls an image through a real mirror using the hosts.toml files the script wrote.
import { randomUUID } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse as parseToml } from "smol-toml";
import type { IDaemonSet } from "kubernetes-models/apps/v1";
import type { IConfigMap } from "kubernetes-models/v1";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startContainerd, type Containerd } from "../harness/containerd.ts";
import { buildImage, busyboxLayer, pushImage, randomLayer, type BuiltImage } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { runCommand, Teardown } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { renderChart } from "./helm.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
const CHART = join(ROOT, "helm");
const teardown = new Teardown();
afterAll(() => teardown.run());

/** A hosts.toml as containerd reads it. */
interface HostsToml {
  server: string;
  host: Record<string, { capabilities: string[] }>;
}

const NAME = `hosts-toml-${randomUUID().slice(0, 8)}`;
const FOREIGN = '# an administrator\'s own file\nserver = "https://ghcr.io"\n';

let registry: Registry;
let mirror: TestMirror;
let containerd: Containerd;
let image: BuiltImage;
let work: string;
let certsDir: string;
let runScript: () => Promise<{ code: number; stdout: string; stderr: string }>;
/** The DaemonSet's environment for this machine, rendered from the example values plus `values`. */
let daemonSetEnv: (values?: Record<string, unknown>) => Record<string, string>;
let script: string;

beforeAll(async () => {
  registry = teardown.track(await startRegistry());
  image = buildImage({ layers: [busyboxLayer("oci")], format: "oci" });
  await pushImage(registry.url, `library/${NAME}`, "latest", image);
  // The registry's own host name is an alias too: containerd sends it as ?ns= when pulling `<host>/<repo>`.
  mirror = teardown.track(await startTestMirror({ upstreams: { "docker.io": { url: registry.url, default: true, aliases: ["registry-1.docker.io", registry.host] } } }), "mirror");
  containerd = teardown.track(await startContainerd());

  const example = join(CHART, "examples", "containerd-nodes.yaml");
  const render = (values: Record<string, unknown>) => renderChart(CHART, { values: [example, values], release: { name: "mirror", namespace: "registry" } });
  const chart = render({});
  const configData = (name: string, key: string): string => {
    const configMap = chart.manifests.find((m) => m.object.kind === "ConfigMap" && (m.object as unknown as IConfigMap).metadata?.name === name)?.object as unknown as IConfigMap | undefined;
    return configMap?.data?.[key] ?? "";
  };

  work = await mkdtemp(join(tmpdir(), "containerd-hosts-"));
  teardown.add("work dir", () => rm(work, { recursive: true, force: true }));
  certsDir = join(work, "certs.d");
  script = join(work, "containerd-hosts.mjs");
  const config = join(work, "config.yaml");
  await writeFile(script, configData("mirror-registry-mirror-containerd-hosts", "containerd-hosts.mjs"));
  await writeFile(config, configData("mirror-registry-mirror", "config.yaml"));
  // An administrator's hosts.toml for a registry the chart would also write: it must survive.
  await mkdir(join(certsDir, "ghcr.io"), { recursive: true });
  await writeFile(join(certsDir, "ghcr.io", "hosts.toml"), FOREIGN);

  daemonSetEnv = (values = {}) => {
    const daemonSet = render(values).manifests.find((m) => m.object.kind === "DaemonSet")?.object as unknown as IDaemonSet;
    const writer = daemonSet.spec!.template.spec!.containers[0]!;
    return {
      ...Object.fromEntries((writer.env ?? []).map((e) => [e.name, e.value ?? ""])),
      HOSTS_TOML_CONFIG: config,
      HOSTS_TOML_CERTS_DIR: certsDir,
      // The Service's address as the pod would look it up; here the mirror on loopback.
      HOSTS_TOML_SERVICE_HOST: "127.0.0.1",
      HOSTS_TOML_SERVICE_PORT: String(mirror.port),
      // The mirror's config loader from the sources (the image has the compiled one at the default path).
      HOSTS_TOML_LOADER: join(ROOT, "src", "config", "load.ts"),
      PATH: process.env.PATH ?? "",
    };
  };
  const env = daemonSetEnv();
  runScript = () => runCommand(process.execPath, [script, "--once"], { env, cwd: work, timeoutMs: 30_000 });
});

describe("the containerd-hosts DaemonSet's script", () => {
  it("writes a hosts.toml per chosen registry, sending containerd to the mirror and falling back to the upstream", async () => {
    const run = await runScript();
    expect(run.code, run.stdout + run.stderr).toBe(0);
    const written = parseToml(await readFile(join(certsDir, "docker.io", "hosts.toml"), "utf8")) as unknown as HostsToml;
    expect(written.server).toBe("https://registry-1.docker.io");
    expect(written.host).toEqual({ [`http://127.0.0.1:${mirror.port}`]: { capabilities: ["pull", "resolve"] } });
    // containerdHosts.registries is [docker.io, ghcr.io]: no file for the alias registry-1.docker.io.
    await expect(stat(join(certsDir, "registry-1.docker.io"))).rejects.toThrow();
    // ghcr.io is chosen too, but its file is someone else's: untouched, and said so.
    expect(await readFile(join(certsDir, "ghcr.io", "hosts.toml"), "utf8")).toBe(FOREIGN);
    expect(run.stdout).toMatch(/ghcr\.io\/hosts\.toml: exists and was not written by this chart; left alone/);
  });

  it("leaves unchanged files alone on the next round", async () => {
    const path = join(certsDir, "docker.io", "hosts.toml");
    const before = await stat(path);
    const run = await runScript();
    expect(run.code, run.stdout + run.stderr).toBe(0);
    expect(run.stdout).not.toContain("docker.io/hosts.toml: written");
    expect((await stat(path)).mtimeMs).toBe(before.mtimeMs);
  });

  it("makes a real containerd pull through the mirror", { timeout: 120_000 }, async () => {
    await registry.sync();
    registry.clearRequests();
    const pull = await containerd.ctr(["image", "pull", "--hosts-dir", certsDir, `docker.io/library/${NAME}:latest`]);
    expect(pull.code, `${pull.stdout}\n${pull.stderr}\n${containerd.output().slice(-2000)}`).toBe(0);
    const images = await containerd.ctr(["image", "list", "--quiet"]);
    expect(images.stdout).toContain(`docker.io/library/${NAME}:latest`);
    // Only the mirror talks to this registry: the blobs reached containerd through it.
    await registry.sync();
    for (const blob of image.blobs()) {
      expect(registry.count({ method: "GET", kind: "blobs", pathIncludes: blob.digest, status: 200 }), blob.digest).toBe(1);
    }
  });

  it("deletes its file for a registry that leaves the config: containerd then pulls from the registry, not the mirror", { timeout: 180_000 }, async () => {
    const dir = join(work, "leaving.d");
    const config = join(work, "leaving.yaml");
    const env = { ...daemonSetEnv(), HOSTS_TOML_CONFIG: config, HOSTS_TOML_CERTS_DIR: dir, HOSTS_TOML_REGISTRIES: "" };
    const round = async (yaml: string) => {
      await writeFile(config, yaml);
      const run = await runCommand(process.execPath, [script, "--once"], { env, cwd: work, timeoutMs: 30_000 });
      expect(run.code, run.stdout + run.stderr).toBe(0);
      return run.stdout;
    };
    const before = buildImage({ layers: [randomLayer(20_000)], format: "oci" });
    const after = buildImage({ layers: [randomLayer(20_000)], format: "oci" });
    await pushImage(registry.url, `team/${NAME}`, "before", before);
    await pushImage(registry.url, `team/${NAME}`, "after", after);
    await round(`upstreams:\n  "${registry.host}":\n    url: ${registry.url}\n  quay.io:\n    url: https://quay.io\n`);
    const pulled = await containerd.ctr(["image", "pull", "--plain-http", "--hosts-dir", dir, `${registry.host}/team/${NAME}:before`]);
    expect(pulled.code, pulled.stderr).toBe(0);
    expect(await mirror.mirror.blobStore.size(before.layers[0]!.digest), "pulled through the mirror").toBe(before.layers[0]!.bytes.length);

    const out = await round("upstreams:\n  quay.io:\n    url: https://quay.io\n");
    expect(out).toContain(`${registry.host}/hosts.toml: removed`);
    expect((await readdir(dir)).sort()).toEqual(["quay.io"]);
    await registry.sync();
    registry.clearRequests();
    const direct = await containerd.ctr(["image", "pull", "--plain-http", "--hosts-dir", dir, `${registry.host}/team/${NAME}:after`]);
    expect(direct.code, direct.stderr).toBe(0);
    expect(await mirror.mirror.blobStore.size(after.layers[0]!.digest), "the mirror saw the pull").toBeUndefined();
    await registry.sync();
    expect(registry.count({ method: "GET", kind: "blobs", pathIncludes: after.layers[0]!.digest, status: 200 })).toBe(1);
  });

  it("with removeFiles, deletes every file of its own and nothing else: the clean-up before turning it off or uninstalling", async () => {
    const dir = join(work, "cleanup.d");
    const ours = { ...daemonSetEnv(), HOSTS_TOML_CERTS_DIR: dir, HOSTS_TOML_REGISTRIES: "" };
    const written = await runCommand(process.execPath, [script, "--once"], { env: ours, cwd: work, timeoutMs: 30_000 });
    expect(written.code, written.stdout + written.stderr).toBe(0);
    // What the nodes hold: this release's files (one beside a CA certificate), another release's, an
    // administrator's, and one written before files carried an owner line.
    const marker = (await readFile(join(dir, "docker.io", "hosts.toml"), "utf8")).split("\n")[0]!;
    await writeFile(join(dir, "ghcr.io", "ca.crt"), "a certificate\n");
    const other = `${marker}\n# owner: other-namespace/other-mirror\nserver = "https://quay.io"\n`;
    await mkdir(join(dir, "quay.io"));
    await writeFile(join(dir, "quay.io", "hosts.toml"), other);
    await mkdir(join(dir, "gcr.io"));
    await writeFile(join(dir, "gcr.io", "hosts.toml"), FOREIGN);
    await mkdir(join(dir, "old.example"));
    await writeFile(join(dir, "old.example", "hosts.toml"), `${marker}\nserver = "https://old.example"\n`);

    const env = daemonSetEnv({ containerdHosts: { removeFiles: true } });
    expect(env.HOSTS_TOML_REMOVE_ALL).toBe("true");
    const run = await runCommand(process.execPath, [script, "--once"], { env: { ...env, HOSTS_TOML_CERTS_DIR: dir }, cwd: work, timeoutMs: 30_000 });
    expect(run.code, run.stdout + run.stderr).toBe(0);
    expect((await readdir(dir)).sort()).toEqual(["gcr.io", "ghcr.io", "quay.io"]);
    expect(await readdir(join(dir, "ghcr.io"))).toEqual(["ca.crt"]);
    expect(await readFile(join(dir, "quay.io", "hosts.toml"), "utf8")).toBe(other);
    expect(await readFile(join(dir, "gcr.io", "hosts.toml"), "utf8")).toBe(FOREIGN);
  });

  it("refuses a refresh period that is no whole number of seconds at start, instead of looping or ending", async () => {
    for (const refresh of ["0", "1m", "2147484"]) {
      const env = { ...daemonSetEnv(), HOSTS_TOML_REFRESH_SECONDS: refresh, HOSTS_TOML_CERTS_DIR: join(work, "refresh.d") };
      // No --once: a daemon. A period it accepted would keep it running into the timeout (which rejects).
      const run = await runCommand(process.execPath, [script], { env, cwd: work, timeoutMs: 10_000 });
      expect(run.code, refresh).toBe(1);
      expect((JSON.parse(run.stdout) as { msg: string }).msg).toBe(
        `failed: HOSTS_TOML_REFRESH_SECONDS="${refresh}": expected whole seconds from 1 to 2147483 (--once does one round and exits)`,
      );
      await expect(stat(join(work, "refresh.d")), "nothing written").rejects.toThrow();
    }
  });
});

