/**
 * The README's "first trial, without internet", run as written: its `sh quick-start` block is read from the
 * README and each of its commands runs for real, in a temp directory of its own, with only the ports (and the
 * path of scripts/start.sh) replaced: the config heredoc, `bash scripts/start.sh --config trial.yaml` as a
 * process, the readiness wait with curl, skopeo copying into an OCI layout, and `docker pull` by a private
 * dockerd. The "local registry" is Debian's docker-registry holding library/busybox:latest. The cache works:
 * the upstream is asked for each blob once, however many clients pulled.
 */
import { readFileSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDockerd } from "../harness/dockerd.ts";
import { buildImage, busyboxLayer, pushImage, type BuiltImage } from "../harness/image-builder.ts";
import { freePort, runCommand, startProcess, Teardown } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";

const README = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
const START_SCRIPT = resolve("scripts/start.sh");
/** The addresses the README uses, replaced by free ones here. */
const DOC_REGISTRY = "127.0.0.1:5001";
const DOC_MIRROR = "127.0.0.1:5000";

/** The README's quick-start commands: the heredoc (up to its EOF line) as one, then one per line. */
function quickStartCommands(): string[] {
  const block = /^```sh quick-start\n([\s\S]*?)^```/m.exec(README)?.[1];
  if (block === undefined) throw new Error("README.md has no ```sh quick-start block");
  const lines = block.split("\n").filter((l) => l.trim() !== "");
  const commands: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const heredoc = /<<'?(\w+)'?$/.exec(lines[i]!);
    if (heredoc) {
      const end = lines.indexOf(heredoc[1]!, i + 1);
      commands.push(lines.slice(i, end + 1).join("\n"));
      i = end;
    } else {
      commands.push(lines[i]!);
    }
  }
  return commands;
}

const teardown = new Teardown();
afterAll(() => teardown.run());

let registry: Registry;
let image: BuiltImage;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "quick-start-"));
  teardown.add("work dir", () => rm(work, { recursive: true, force: true }));
  registry = teardown.track(await startRegistry());
  image = buildImage({ layers: [busyboxLayer("docker")], format: "docker", cmd: ["/bin/true"] });
  await pushImage(registry.url, "library/busybox", "latest", image);
});

describe("README quick start", () => {
  it("is a five-line config, the start script, a readiness wait, a skopeo pull and a docker pull", () => {
    const commands = quickStartCommands();
    expect(commands).toHaveLength(5);
    expect(commands[0]!.split("\n").slice(1, -1)).toHaveLength(4); // the config: four lines, within five of heredoc
    expect(commands[0]).toContain(`url: "http://${DOC_REGISTRY}"`);
    expect(commands[0]).toContain("libraryPrefix: library");
    expect(commands[1]).toMatch(/^bash scripts\/start\.sh --config trial\.yaml &$/);
    expect(commands[3]).toMatch(/^skopeo copy /);
    expect(commands[4]).toMatch(/^docker pull /);
  });

  it("runs as written against a local registry: skopeo and docker pull through the mirror", { timeout: 240_000 }, async () => {
    const mirrorHost = `127.0.0.1:${await freePort()}`;
    const local = (command: string) =>
      command
        .replaceAll(DOC_REGISTRY, registry.host)
        .replaceAll(DOC_MIRROR, mirrorHost)
        .replaceAll("bash scripts/start.sh", `bash ${START_SCRIPT}`);
    // Node 24 (this test's) first on PATH, as ensure-node.sh would put it: nothing to install.
    // start.sh's compile cache under the test's directory, not the user's ~/.cache.
    const env = {
      ...process.env,
      PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ""}`,
      XDG_CACHE_HOME: join(work, ".cache"),
      NODE_COMPILE_CACHE: "",
    } as Record<string, string>;
    const [config, start, wait, skopeo, docker] = quickStartCommands().map(local) as [
      string,
      string,
      string,
      string,
      string,
    ];

    const wrote = await runCommand("bash", ["-c", config], { cwd: work, env, timeoutMs: 10_000 });
    expect(wrote.code, wrote.stderr).toBe(0);

    // `bash scripts/start.sh … &`: a process of its own here, stopped by its PID (start.sh execs node).
    const mirror = startProcess("bash", ["-c", `exec ${start.replace(/\s*&$/, "")}`], {
      name: "mirror (README)",
      cwd: work,
      env,
    });
    teardown.add("mirror (README)", () => mirror.stop());

    const ready = await runCommand("bash", ["-c", wait], { cwd: work, env, timeoutMs: 60_000 });
    expect(ready.code, `${ready.stderr}\n${mirror.output()}`).toBe(0);
    expect(JSON.parse(ready.stdout)).toMatchObject({ status: "ready" });

    const copied = await runCommand("bash", ["-c", skopeo], { cwd: work, env, timeoutMs: 120_000 });
    expect(copied.code, `${copied.stderr}\n${mirror.output()}`).toBe(0);
    const layout = JSON.parse(await readFile(join(work, "busybox-oci", "index.json"), "utf8")) as {
      manifests: Array<{ annotations?: Record<string, string> }>;
    };
    expect(layout.manifests.map((m) => m.annotations?.["org.opencontainers.image.ref.name"])).toEqual(["latest"]);

    const dockerd = teardown.track(await startDockerd(), "dockerd");
    const args = docker.split(/\s+/).slice(1);
    const pulled = await dockerd.docker(args, { timeoutMs: 120_000 });
    expect(pulled.code, `${pulled.stdout}${pulled.stderr}\n${mirror.output()}`).toBe(0);
    const id = await dockerd.docker(["image", "inspect", "--format", "{{.Id}}", `${mirrorHost}/busybox:latest`]);
    expect(id.stdout.trim()).toBe(image.config.digest);
    await dockerd.stop();

    // The data directory is the trial's own, where the config says, beside it.
    expect((await readFile(join(work, "trial.yaml"), "utf8")).includes("./trial-data")).toBe(true);
    await mirror.stop();
    // Its traffic totals, saved at shutdown: docker's pull was answered from what skopeo's had cached.
    const totals = JSON.parse(await readFile(join(work, "trial-data", "traffic.json"), "utf8")) as {
      requests: { hit: number; miss: number };
    };
    expect(totals.requests.hit).toBeGreaterThan(0);
    expect(totals.requests.miss).toBeGreaterThan(0);

    // Two clients pulled; the upstream sent each blob once.
    await registry.sync();
    for (const blob of image.blobs())
      expect(registry.count({ method: "GET", kind: "blobs", pathIncludes: blob.digest, status: 200 }), blob.digest).toBe(1);
  });
});
