/**
 * Warm-up sets against a real upstream registry: a set on a short schedule fills the cache and reports the image
 * that does not exist (admin API results, metrics), runs again on its schedule, pins what it fetched when asked
 * to, runs now through the admin API and the CLI, and a set read from a file follows the file, keeping its last
 * good list while the file is invalid.
 */
import { mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WarmupSetStatus } from "../../src/cache/warmup.ts";
import {
  buildImage,
  buildIndex,
  pushImage,
  pushIndex,
  randomLayer,
  type BuiltImage,
} from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { runCommand, Teardown, waitFor } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { fetchRaw } from "./client.ts";
import { parsePrometheusText, valueOf } from "./prometheus-text.ts";

const TOKEN = "admin-token-for-warmup-tests";
const teardown = new Teardown();
afterAll(() => teardown.run());
let upstream: Registry;
let mirror: TestMirror;
let dir: string;
let tool: BuiltImage;
let app: BuiltImage;
let other: BuiltImage;

beforeAll(async () => {
  upstream = teardown.track(await startRegistry());
  dir = await mkdtemp(join(tmpdir(), "warmup-"));
  teardown.add("warm-up files", () => rm(dir, { recursive: true, force: true }));
  tool = buildImage({ format: "oci", layers: [randomLayer(120_000)], labels: { n: "tool" } });
  await pushImage(upstream.url, "library/tool", "1.0", tool);
  // A two-platform index of which the set asks for one platform only.
  const amd = buildImage({ format: "oci", architecture: "amd64", layers: [randomLayer(90_000)] });
  const arm = buildImage({ format: "oci", architecture: "arm64", layers: [randomLayer(80_000)] });
  await pushIndex(upstream.url, "team/app", "2", buildIndex([amd, arm]));
  app = amd;
  other = arm;
  const pinned = buildImage({ format: "oci", layers: [randomLayer(50_000)], labels: { n: "pinned" } });
  await pushImage(upstream.url, "library/kept", "3", pinned);
  // A ConfigMap as Kubernetes mounts it: the file is a symlink through `..data`, swapped to update it.
  await writeConfigMap(["docker.io/library/tool:1.0"]);
  mirror = teardown.track(
    await startTestMirror({
      upstreams: { "docker.io": { url: upstream.url, default: true } },
      extra: {
        admin: { token: TOKEN },
        warmup: [
          {
            name: "base",
            every: "1s",
            firstRunAfter: "100ms",
            images: ["docker.io/library/tool:1.0", "team/app:2", "docker.io/library/missing:1"],
            platforms: ["linux/amd64"],
          },
          { name: "kept", every: "1h", firstRunAfter: "100ms", images: ["library/kept:3"], pin: true },
          { name: "fromfile", every: "1h", firstRunAfter: "1h", file: join(dir, "warmup.txt") },
        ],
      },
    }),
  );
});

let generation = 0;
/** Writes the list as a new `..data` directory and swaps the symlink to it, as the kubelet does. */
async function writeConfigMap(lines: string[]): Promise<void> {
  generation++;
  const data = join(dir, `..gen${generation}`);
  await mkdir(data);
  await writeFile(join(data, "warmup.txt"), `# warm-up list\n${lines.join("\n")}\n`);
  await symlink(`..gen${generation}`, join(dir, "..data_tmp"));
  await rename(join(dir, "..data_tmp"), join(dir, "..data"));
  if (generation === 1) await symlink("..data/warmup.txt", join(dir, "warmup.txt"));
}

const admin = (method: "GET" | "POST", path: string) =>
  fetchRaw(`${mirror.url}/admin/v1/${path}`, { method, headers: { authorization: `Bearer ${TOKEN}` } });

async function set(name: string): Promise<WarmupSetStatus> {
  const res = await admin("GET", `warmup/${name}`);
  expect(res.status).toBe(200);
  return JSON.parse(res.body.toString("utf8")) as WarmupSetStatus;
}

async function metrics() {
  return parsePrometheusText((await fetchRaw(`${mirror.url}/metrics`)).body.toString("utf8"));
}

describe("warm-up sets", () => {
  it("fill the cache on their schedule and report the image that failed, per image, in the admin API and metrics", async () => {
    await waitFor(async () => (await set("base")).lastRun !== null, { timeoutMs: 20_000, what: "the first run" });
    const run = (await set("base")).lastRun!;
    expect(run.trigger).toBe("schedule");
    expect(run.ok).toBe(2);
    expect(run.failed).toBe(1);
    const byRef = new Map(run.images.map((i) => [i.reference, i]));
    expect(byRef.get("docker.io/library/tool:1.0")).toMatchObject({
      result: "ok",
      digest: tool.digest,
      blobs: 2,
      bytes: tool.blobs().reduce((n, b) => n + b.bytes.length, 0),
    });
    expect(byRef.get("docker.io/team/app:2")).toMatchObject({ result: "ok", blobs: 2 });
    expect(byRef.get("docker.io/library/missing:1")).toMatchObject({ result: "failed", bytes: 0 });
    expect(byRef.get("docker.io/library/missing:1")!.reason).toMatch(/MANIFEST_UNKNOWN|manifest unknown|not found/i);
    // The cache holds every blob of the selected platform, and nothing of the other.
    for (const blob of [...tool.blobs(), ...app.blobs()])
      expect(await mirror.mirror.blobStore.size(blob.digest)).toBe(blob.bytes.length);
    for (const blob of other.layers) expect(await mirror.mirror.blobStore.size(blob.digest)).toBeUndefined();
    // And a client pull is now a hit.
    const pulled = await fetchRaw(`${mirror.url}/v2/library/tool/blobs/${tool.layers[0]!.digest}`);
    expect(pulled.status).toBe(200);
    expect(pulled.headers["x-mirror-cache"]).toBe("hit");

    const m = await metrics();
    expect(valueOf(m, "mirror_warmup_images", { set: "base", result: "ok" })).toBe(2);
    expect(valueOf(m, "mirror_warmup_images", { set: "base", result: "failed" })).toBe(1);
    expect(valueOf(m, "mirror_warmup_last_run_timestamp_seconds", { set: "base" })).toBeGreaterThan(
      Date.parse(run.startedAt) / 1000 - 1,
    );
  });

  it("run again `every` after the last run ended", async () => {
    const first = (await set("base")).lastRun!;
    await waitFor(async () => ((await set("base")).lastRun?.run ?? 0) === first.run + 1, {
      timeoutMs: 20_000,
      what: "the next scheduled run",
    });
    const again = (await set("base")).lastRun!;
    expect(again.trigger).toBe("schedule");
    // Runs of a set never overlap: the next one starts after the one before it ended.
    expect(Date.parse(again.startedAt)).toBeGreaterThanOrEqual(Date.parse(first.finishedAt!));
    expect(again).toMatchObject({ ok: 2, failed: 1 });
  });

  it("pin what they fetched with pin: true (pins.json, as mirror import --pin)", async () => {
    await waitFor(async () => (await set("kept")).lastRun !== null, { timeoutMs: 20_000, what: "the kept run" });
    const run = (await set("kept")).lastRun!;
    expect(run.images).toEqual([expect.objectContaining({ reference: "docker.io/library/kept:3", pinned: true })]);
    const pins = JSON.parse(await readFile(join(mirror.dataDir, "pins.json"), "utf8")) as {
      pins: Array<{ reference: string; digest: string }>;
    };
    expect(pins.pins).toContainEqual(
      expect.objectContaining({ reference: "docker.io/library/kept:3", digest: run.images[0]!.digest }),
    );
    // A set without pin: true pins nothing.
    expect(pins.pins.map((p) => p.reference)).not.toContain("docker.io/library/tool:1.0");
  });

  it("run now through the admin API, and list every set; an unknown set is 404", async () => {
    const started = await admin("POST", "warmup/fromfile");
    expect(started.status).toBe(202);
    const { run } = JSON.parse(started.body.toString("utf8")) as { run: number; started: boolean };
    await waitFor(async () => ((await set("fromfile")).lastRun?.run ?? 0) >= run, {
      timeoutMs: 20_000,
      what: "the admin run",
    });
    expect((await set("fromfile")).lastRun).toMatchObject({ trigger: "admin", ok: 1, failed: 0 });
    const all = JSON.parse((await admin("GET", "warmup")).body.toString("utf8")) as { sets: WarmupSetStatus[] };
    expect(all.sets.map((s) => s.name)).toEqual(["base", "kept", "fromfile"]);
    expect((await admin("POST", "warmup/nosuch")).status).toBe(404);
    expect((await admin("GET", "warmup/nosuch")).status).toBe(404);
    const noToken = await fetchRaw(`${mirror.url}/admin/v1/warmup/base`, { method: "POST" });
    expect(noToken.status).toBe(401);
  });

  it("follow their file, and keep the last good list while it is invalid (admin API, metric)", async () => {
    await writeConfigMap(["docker.io/library/tool:1.0", "docker.io/library/kept:3"]);
    await waitFor(async () => (await set("fromfile")).references.length === 2, {
      timeoutMs: 15_000,
      what: "the file re-read",
    });
    await writeConfigMap(["docker.io/library/tool:1.0", "Not A Reference!!"]);
    await waitFor(async () => (await set("fromfile")).listProblem !== null, {
      timeoutMs: 15_000,
      what: "the invalid file noticed",
    });
    const s = await set("fromfile");
    expect(s.listProblem).toMatch(/line 3/);
    expect(s.references).toEqual(["docker.io/library/tool:1.0", "docker.io/library/kept:3"]);
    expect(valueOf(await metrics(), "mirror_warmup_list_invalid", { set: "fromfile" })).toBe(1);
    await writeConfigMap(["docker.io/library/kept:3"]);
    await waitFor(async () => (await set("fromfile")).listProblem === null, {
      timeoutMs: 15_000,
      what: "the file valid again",
    });
    expect((await set("fromfile")).references).toEqual(["docker.io/library/kept:3"]);
    expect(valueOf(await metrics(), "mirror_warmup_list_invalid", { set: "fromfile" })).toBe(0);
  });

  it("have a CLI that runs a set now and prints each image's result (exit 1 when one failed)", async () => {
    const cli = (name: string) =>
      runCommand(process.execPath, ["src/main.ts", "warmup", name, "--url", mirror.url, "--token", TOKEN], {
        timeoutMs: 30_000,
      });
    const good = await cli("kept");
    expect(good.code, good.stderr).toBe(0);
    expect(good.stderr).toMatch(/^ok {6}docker\.io\/library\/kept:3 sha256:[0-9a-f]{64} 2 blobs, \d+ bytes, pinned$/m);
    const bad = await cli("base");
    expect(bad.code, bad.stderr).toBe(1);
    expect(bad.stderr).toMatch(/^failed {2}docker\.io\/library\/missing:1: /m);
    expect(bad.stderr).toMatch(/set base: 2 ok, 1 failed/);
    const unknown = await cli("nosuch");
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/404/);
  });
});
