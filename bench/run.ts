/**
 * `npm run bench`: our mirror side by side with the reference registry's pull-through cache (distribution 2.8
 * in proxy mode) and with nginx serving the same files, on loopback, as ratios. See bench/README.md.
 *
 * Benchmarks print numbers; they assert nothing about timings. Every server listens on 127.0.0.1 only and is
 * stopped by its PID; every loop is bounded in count and time.
 */
import { cpus, loadavg, release, tmpdir, totalmem } from "node:os";
import { mkdtemp, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import { execFileSync, spawnSync } from "node:child_process";
import { freePort } from "../test/harness/processes.ts";
import { startRegistry, type Registry } from "../test/harness/registry.ts";
import { renderFleetTable, runFleet } from "./fleet.ts";
import { concurrentDownloads, download, load, upstreamBytesOf, type LoadResult } from "./measure.ts";
import { OCI_MANIFEST, pushBlobFile, pushManifest, writeRandomFile, type SeededBlob } from "./seed.ts";
import { formatRatio, formatSummary, ratio, rotation, summarize, type Summary } from "./stats.ts";
import { generateStore } from "./store-generator.ts";
import { QUIET_MS, SNAPSHOT_FILE } from "../src/storage/index-snapshot.ts";
import { MirrorTarget, NginxTarget, ProxyRegistryTarget, type RestartableTarget } from "./targets.ts";

const MiB = 1024 * 1024;
const REPO = "bench/app";
const benchRoot = resolve(dirname(fileURLToPath(import.meta.url)), "..");

const { values: args } = parseArgs({
  options: {
    reps: { type: "string", default: "5" },
    "load-reps": { type: "string", default: "5" },
    seconds: { type: "string", default: "10" },
    "big-mib": { type: "string", default: "1024" },
    "medium-mib": { type: "string", default: "100" },
    "small-count": { type: "string", default: "50" },
    clients: { type: "string", default: "16" },
    connections: { type: "string", default: "32" },
    "wrk-threads": { type: "string", default: "2" },
    "startup-blobs": { type: "string", default: "100000" },
    "startup-reps": { type: "string", default: "3" },
    only: { type: "string" },
    "mirror-node-arg": { type: "string", multiple: true, default: [] },
    "mirror-root": { type: "string" },
    compiled: { type: "boolean", default: false },
    "mirror-env": { type: "string", multiple: true, default: [] },
    "json-out": { type: "string" },
    keep: { type: "boolean", default: false },
    help: { type: "boolean", default: false },
  },
});

if (args.help) {
  console.log(`usage: npm run bench -- [options]
  --reps N            repetitions of S1–S3 (default 5)
  --load-reps N       repetitions of S4, S5 (default 5)
  --seconds N         duration of each S4/S5 run (default 10)
  --big-mib N         the "1 GiB" blob, in MiB (default 1024)
  --medium-mib N      the "100 MiB" blob (default 100)
  --small-count N     number of 1 MiB blobs (default 50)
  --clients N         S3 concurrent clients (default 16)
  --connections N     S4/S5 connections (default 32)
  --wrk-threads N     wrk threads (default 2)
  --startup-blobs N   cached blobs for the start-up scenario (default 100000)
  --startup-reps N    (default 3)
  --only S1,S2,...    run only these scenarios (S1 S2 S3 S4 S5 FLEET START)
  --mirror-node-arg A extra node argument for the mirror process, repeatable (e.g. --cpu-prof)
  --mirror-root DIR   run the mirror from another checkout (before/after comparisons)
  --mirror-env K=V    extra environment variable for the mirror process, repeatable
  --compiled          run the mirror as the container image does: tsc to JavaScript first (node dist/main.js)
                      instead of node src/main.ts with type stripping and a compile cache, as scripts/start.sh
                      (about 5 MiB less RSS). Either way with the flags of scripts/node-flags
  --json-out FILE     also write every measurement as JSON
  --keep              keep the work directory`);
  process.exit(0);
}

const int = (name: keyof typeof args) => {
  const n = Number(args[name]);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be a non-negative integer`);
  return n;
};
const reps = int("reps");
const loadReps = int("load-reps");
const seconds = int("seconds");
const bigSize = int("big-mib") * MiB;
const mediumSize = int("medium-mib") * MiB;
const smallCount = int("small-count");
const clients = int("clients");
const connections = int("connections");
const wrkThreads = int("wrk-threads");
const startupBlobs = int("startup-blobs");
const startupReps = int("startup-reps");
const only = args.only === undefined ? undefined : new Set(args.only.toUpperCase().split(","));
const runs = (s: string) => only === undefined || only.has(s);
const mirrorEnv = Object.fromEntries(
  args["mirror-env"].map((kv) => {
    const at = kv.indexOf("=");
    if (at < 1) throw new Error(`--mirror-env takes K=V, not ${kv}`);
    return [kv.slice(0, at), kv.slice(at + 1)];
  }),
);
const repoRoot = args["mirror-root"] === undefined ? benchRoot : resolve(args["mirror-root"]);

const results: Record<string, Record<string, number[]>> = {};
function record(scenario: string, key: string, value: number): void {
  ((results[scenario] ??= {})[key] ??= []).push(value);
}
const get = (scenario: string, key: string): Summary | undefined => summarize(results[scenario]?.[key] ?? []);
const loads: Record<string, number[]> = {};
/** Texts for the report (FLEET: why a distribution row is n/a). */
const notes: Record<string, string> = {};
function noteLoad(scenario: string): void {
  (loads[scenario] ??= []).push(loadavg()[0]!);
}

function progress(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)} load ${loadavg()[0]!.toFixed(2)}] ${msg}\n`);
}

async function main(): Promise<void> {
  const workDir = await mkdtemp(join(tmpdir(), "mirror-bench-"));
  const cleanup: Array<() => Promise<void>> = [];
  const loadAtStart = loadavg();
  progress(`work directory ${workDir}`);
  try {
    // --- the world -------------------------------------------------------------------------------------
    const upstream = await startRegistry({ rootDir: join(workDir, "upstream-storage") });
    cleanup.push(() => upstream.dispose());
    progress(
      `upstream ${upstream.url}; seeding ${int("big-mib")} MiB + ${Math.max(1, reps)} × ${int("medium-mib")} MiB + ${smallCount} × 1 MiB`,
    );
    const seedDir = join(workDir, "seed");
    await mkdir(seedDir);
    const big = await seed(upstream, join(seedDir, "big"), bigSize);
    // S3 takes a never-fetched 100 MiB blob in every repetition: cold for both caches without restarting them.
    const mediums: SeededBlob[] = [];
    for (let i = 0; i < Math.max(1, reps); i++)
      mediums.push(await seed(upstream, join(seedDir, `medium-${i}`), mediumSize));
    const medium = mediums[0]!;
    const small: SeededBlob[] = [];
    for (let i = 0; i < smallCount; i++) small.push(await seed(upstream, join(seedDir, `small-${i}`), MiB));
    const largeImage = await pushManifest(upstream.url, REPO, "large", [big, medium]);
    await pushManifest(upstream.url, REPO, "small", small);
    await rm(seedDir, { recursive: true, force: true }); // the upstream has its own copies; nginx serves those

    const entry = args.compiled ? await compile(repoRoot) : resolve(repoRoot, "src/main.ts");
    // As scripts/start.sh and the image run it: the flags of scripts/node-flags and, type-stripped, Node's compile
    // cache (warm from the first start on, as it is for start.sh from its second start).
    const nodeFlags = await readNodeFlags(repoRoot);
    const startEnv = args.compiled ? mirrorEnv : { NODE_COMPILE_CACHE: join(workDir, "compile-cache"), ...mirrorEnv };
    const mirror = new MirrorTarget({
      repoRoot,
      entry,
      workDir,
      port: await freePort(),
      upstreamUrl: upstream.url,
      nodeArgs: [...nodeFlags, ...args["mirror-node-arg"]],
      env: startEnv,
    });
    const proxy = new ProxyRegistryTarget({ workDir, port: await freePort(), upstreamUrl: upstream.url });
    const nginx = new NginxTarget({ workDir, port: await freePort(), upstreamStorage: upstream.rootDir });
    const nginxTuned = new NginxTarget({
      workDir,
      port: await freePort(),
      upstreamStorage: upstream.rootDir,
      tuned: true,
    });
    cleanup.push(
      () => mirror.stop(),
      () => proxy.stop(),
      () => nginx.stop(),
      () => nginxTuned.stop(),
    );
    for (const n of [nginx, nginxTuned]) await n.addManifest(REPO, "large", largeImage.bytes);
    await Promise.all([mirror.start(), proxy.start(), nginx.start(), nginxTuned.start()]);
    progress(
      `mirror ${mirror.url} (pid ${mirror.process!.pid}), distribution proxy ${proxy.url} (pid ${proxy.process!.pid}), nginx ${nginx.url} (pid ${nginx.process!.pid}), nginx tuned ${nginxTuned.url} (pid ${nginxTuned.process!.pid})`,
    );
    /** The servers S2, S4 and S5 compare: ours, the reference, and nginx twice (the faster is the baseline). */
    const warmTargets = { mirror: mirror.url, proxy: proxy.url, nginx: nginx.url, "nginx-tuned": nginxTuned.url };
    const warmOrder = ["mirror", "proxy", "nginx", "nginx-tuned"] as const;
    const warmProcess = (target: (typeof warmOrder)[number]) =>
      ({ mirror, proxy, nginx, "nginx-tuned": nginxTuned })[target].process!;

    const blobPath = (b: { digest: string }) => `/v2/${REPO}/blobs/${b.digest}`;
    const storedPath = {
      mirror: (b: { digest: string }) =>
        join(mirror.dataDir, "blobs", "sha256", b.digest.slice(7, 9), b.digest.slice(7)),
      proxy: (b: { digest: string }) =>
        join(
          workDir,
          "proxy-storage",
          "docker",
          "registry",
          "v2",
          "blobs",
          "sha256",
          b.digest.slice(7, 9),
          b.digest.slice(7),
          "data",
        ),
    };

    /**
     * After a cold transfer: waits (bounded) until the target has the blob stored (a proxy may go on fetching
     * after its client is served), then sums the bytes the upstream sent of this blob.
     */
    async function upstreamBytesAfter(target: "mirror" | "proxy" | "direct", blob: SeededBlob): Promise<number> {
      if (target !== "direct") await waitForFile(storedPath[target](blob), blob.size, 120_000);
      return upstreamBytesOf(upstream, blob.digest);
    }

    // --- S1: cold 1 GiB ----------------------------------------------------------------------------------
    if (runs("S1")) {
      for (let rep = 0; rep < reps; rep++) {
        for (const target of rotation(["mirror", "proxy", "direct"] as const, rep)) {
          noteLoad("S1");
          const server = target === "mirror" ? mirror : target === "proxy" ? proxy : undefined;
          if (server) {
            record("START", `${server.name}-empty-ms`, await server.restartCold());
            // Idle: a just-started process with an empty store, after a second to settle (no request yet).
            await sleep(1_000);
            record("MEM", `${target}-idle-MiB`, (await server.process!.memory()).current / MiB);
          }
          upstream.clearRequests();
          const url = `${server?.url ?? upstream.url}${blobPath(big)}`;
          const d = await download(url, { expectBytes: big.size });
          record("S1", `${target}-MBps`, d.bytesPerSecond / 1e6);
          record("S1", `${target}-ttfb-ms`, d.ttfb * 1000);
          record("S1", `${target}-upstream-x`, (await upstreamBytesAfter(target, big)) / big.size);
          if (server) record("MEM", `${target}-S1-MiB`, (await server.process!.memory()).peak / MiB);
          progress(
            `S1 rep ${rep + 1}/${reps} ${target}: ${(d.bytesPerSecond / 1e6).toFixed(0)} MB/s, TTFB ${(d.ttfb * 1000).toFixed(1)} ms`,
          );
        }
      }
    }

    // --- S2: warm 1 GiB ----------------------------------------------------------------------------------
    if (runs("S2")) {
      for (const base of Object.values(warmTargets))
        await download(`${base}${blobPath(big)}`, { expectBytes: big.size }); // warm
      await waitForFile(storedPath.proxy(big), big.size, 120_000);
      for (let rep = 0; rep < reps; rep++) {
        for (const target of rotation(warmOrder, rep)) {
          noteLoad("S2");
          const server = target === "mirror" ? mirror : target === "proxy" ? proxy : undefined;
          await server?.process!.resetPeak();
          const d = await download(`${warmTargets[target]}${blobPath(big)}`, { expectBytes: big.size });
          if (server) record("MEM", `${target}-S2-MiB`, (await server.process!.memory()).peak / MiB);
          record("S2", `${target}-MBps`, d.bytesPerSecond / 1e6);
          record("S2", `${target}-ttfb-ms`, d.ttfb * 1000);
          progress(
            `S2 rep ${rep + 1}/${reps} ${target}: ${(d.bytesPerSecond / 1e6).toFixed(0)} MB/s, TTFB ${(d.ttfb * 1000).toFixed(2)} ms`,
          );
        }
      }
    }

    // --- S3: 16 clients, cold 100 MiB ------------------------------------------------------------------
    if (runs("S3")) {
      // Fresh processes, so their peak RSS is this scenario's; each serves one request first, as a running mirror
      // has (S1 is the scenario that includes a just-started process).
      for (const server of [mirror, proxy] as RestartableTarget[]) {
        await server.restartCold();
        await download(`${server.url}${blobPath(small[0] ?? medium)}`, {});
      }
      for (let rep = 0; rep < reps; rep++) {
        const blob = mediums[rep]!;
        for (const target of rotation(["mirror", "proxy", "direct"] as const, rep)) {
          noteLoad("S3");
          const server: RestartableTarget | undefined =
            target === "mirror" ? mirror : target === "proxy" ? proxy : undefined;
          upstream.clearRequests();
          const { wall, downloads } = await concurrentDownloads(
            `${server?.url ?? upstream.url}${blobPath(blob)}`,
            clients,
            { expectBytes: blob.size },
          );
          const ttfbs = summarize(downloads.map((d) => d.ttfb * 1000))!;
          record("S3", `${target}-wall-s`, wall);
          record("S3", `${target}-ttfb-min-ms`, ttfbs.min);
          record("S3", `${target}-ttfb-median-ms`, ttfbs.median);
          record("S3", `${target}-ttfb-max-ms`, ttfbs.max);
          record("S3", `${target}-upstream-x`, (await upstreamBytesAfter(target, blob)) / blob.size);
          if (server) record("MEM", `${target}-S3-MiB`, (await server.process!.memory()).peak / MiB);
          progress(
            `S3 rep ${rep + 1}/${reps} ${target}: wall ${wall.toFixed(2)} s, TTFB median ${ttfbs.median.toFixed(1)} ms (max ${ttfbs.max.toFixed(1)})`,
          );
        }
      }
    }

    // --- S4, S5: many requests, warm -----------------------------------------------------------------------
    const manifestPaths = [`/v2/${REPO}/manifests/large`];
    const smallPaths = small.map(blobPath);
    const accept = { Accept: OCI_MANIFEST };
    const loadOpts = (name: string) => ({
      connections,
      threads: wrkThreads,
      seconds,
      scriptPath: join(workDir, `${name}.lua`),
    });
    async function loadScenario(name: "S4" | "S5", paths: string[], headers: Record<string, string>): Promise<void> {
      for (const server of [mirror, proxy]) await server.process!.resetPeak(); // this scenario's peak, warm-up included
      for (const base of Object.values(warmTargets)) {
        for (const p of paths) await download(`${base}${p}`, { headers }); // warm: every path once
        await load(base, paths, { ...loadOpts(`${name}-warmup`), seconds: 2, headers }); // and the JIT
      }
      for (let rep = 0; rep < loadReps; rep++) {
        for (const target of rotation(warmOrder, rep)) {
          noteLoad(name);
          const cpuBefore = await warmProcess(target).cpuSeconds();
          const r: LoadResult = await load(warmTargets[target], paths, { ...loadOpts(name), headers });
          const cpuPerRequest = ((await warmProcess(target).cpuSeconds()) - cpuBefore) / r.requests;
          if (r.requests > 0) record(name, `${target}-cpu-us`, cpuPerRequest * 1e6);
          record(name, `${target}-rps`, r.requestsPerSecond);
          record(name, `${target}-MBps`, r.bytesPerSecond / 1e6);
          record(name, `${target}-p50-ms`, r.p50ms);
          record(name, `${target}-p99-ms`, r.p99ms);
          record(name, `${target}-errors`, r.errors);
          progress(
            `${name} rep ${rep + 1}/${loadReps} ${target}: ${r.requestsPerSecond.toFixed(0)} req/s, p50 ${r.p50ms.toFixed(2)} ms, p99 ${r.p99ms.toFixed(2)} ms, CPU ${(cpuPerRequest * 1e6).toFixed(0)} µs a request, errors ${r.errors}`,
          );
        }
      }
      record("MEM", `mirror-${name}-MiB`, (await mirror.process!.memory()).peak / MiB);
      record("MEM", `proxy-${name}-MiB`, (await proxy.process!.memory()).peak / MiB);
    }
    if (runs("S4") || runs("S5")) {
      if (!runs("S1") && !runs("S2") && !runs("S3")) await mirror.restartCold();
      if (runs("S4")) await loadScenario("S4", manifestPaths, accept);
      if (runs("S5")) await loadScenario("S5", smallPaths, {});
    }
    await mirror.stop();
    await proxy.stop();

    // --- FLEET: three replicas on one S3 bucket and one Redis, next to distribution's s3 driver ------------
    if (runs("FLEET")) {
      await runFleet({
        workDir,
        upstream,
        repo: REPO,
        big,
        first: small[0] ?? medium,
        mediumSize,
        clients,
        reps: Math.max(1, reps),
        mirror: { repoRoot, entry, nodeArgs: [...nodeFlags, ...args["mirror-node-arg"]], env: startEnv },
        record: (key, value) => record("FLEET", key, value),
        note: (key, text) => {
          notes[key] = text;
        },
        noteLoad: () => noteLoad("FLEET"),
        progress,
        cleanup: (step) => cleanup.push(step),
      });
    }

    // --- start-up with many cached blobs -------------------------------------------------------------------
    if (runs("START") && startupBlobs > 0) {
      const dataDir = join(workDir, "startup-data");
      progress(`generating a store of ${startupBlobs} blobs`);
      await generateStore(dataDir, startupBlobs);
      // A store written the moment before is one no snapshot may vouch for (QUIET_MS): the store a mirror restarts
      // over was written earlier than that.
      await sleep(QUIET_MS + 1_000);
      const starter = new MirrorTarget({
        repoRoot,
        entry,
        workDir,
        port: await freePort(),
        upstreamUrl: upstream.url,
        nodeArgs: nodeFlags,
        env: startEnv,
        dataDir,
      });
      cleanup.push(() => starter.stop());
      // Each repetition starts twice: as after a crash (no index snapshot: every file is stat'ed), then as after the
      // clean stop of that first start (the snapshot it saved; src/storage/index-snapshot.ts).
      for (let rep = 0; rep < startupReps; rep++) {
        for (const kind of ["crash", "clean"] as const) {
          noteLoad("START");
          if (kind === "crash") await rm(join(dataDir, SNAPSHOT_FILE), { force: true });
          const ms = await starter.start();
          const scan = await starter.indexScan();
          await starter.stop();
          if (scan && scan.objects !== startupBlobs)
            throw new Error(`the mirror indexed ${scan.objects} objects, not ${startupBlobs}`);
          if (kind === "clean" && scan?.fromSnapshot !== startupBlobs)
            throw new Error(`after a clean stop the snapshot gave ${scan?.fromSnapshot} objects, not ${startupBlobs}`);
          record("START", `mirror-${kind}-ms`, ms);
          if (scan) record("START", `mirror-${kind}-scan-ms`, scan.scanMs);
          if (scan?.background) record("START", `mirror-${kind}-complete-ms`, scan.completeMs);
          progress(
            `start-up rep ${rep + 1}/${startupReps}, after a ${kind === "crash" ? "crash" : "clean stop"}: ready in ${ms.toFixed(0)} ms (index ${scan?.scanMs.toFixed(0) ?? "?"} ms${scan?.background ? `, scanned in the background, complete ${scan.completeMs.toFixed(0)} ms after the spawn` : ""})`,
          );
        }
      }
    }

    const loadAtEnd = loadavg();
    const report = renderReport({ loadAtStart, loadAtEnd });
    console.log(report);
    if (args["json-out"] !== undefined)
      await writeFile(
        args["json-out"],
        JSON.stringify({ machine: machine(), loadAtStart, loadAtEnd, loads, results }, null, 2),
      );
  } finally {
    for (const step of cleanup.reverse())
      await step().catch((err: unknown) => progress(`cleanup: ${(err as Error).message}`));
    if (!args.keep) await rm(workDir, { recursive: true, force: true });
    else progress(`kept ${workDir}`);
  }
}

/** Compiles src/ with the production tsconfig into <root>/.tmp/bench-dist (inside the checkout, so imports resolve). */
async function compile(root: string): Promise<string> {
  const outDir = join(root, ".tmp", "bench-dist");
  await rm(outDir, { recursive: true, force: true });
  progress(`compiling ${root}/src to ${outDir}`);
  execFileSync(
    process.execPath,
    [
      join(root, "node_modules", "typescript", "bin", "tsc"),
      "-p",
      join(root, "tsconfig.build.json"),
      "--outDir",
      outDir,
    ],
    { stdio: "inherit", timeout: 300_000 },
  );
  return join(outDir, "main.js");
}

/**
 * The Node/V8 flags of scripts/node-flags (one per line, `#` comments), the file start.sh and the image read; none
 * for a --mirror-root checkout from before that file.
 */
async function readNodeFlags(root: string): Promise<string[]> {
  const text = await readFile(join(root, "scripts/node-flags"), "utf8").catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return "";
    throw err;
  });
  return text
    .split("\n")
    .map((line) => line.replace(/#.*/, "").trim())
    .filter((line) => line !== "");
}

async function seed(upstream: Registry, path: string, size: number): Promise<SeededBlob> {
  const blob = await writeRandomFile(path, size);
  await pushBlobFile(upstream.url, REPO, blob);
  return blob;
}

async function waitForFile(path: string, size: number, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    const s = await stat(path).catch(() => undefined);
    if (s?.size === size) return;
    await sleep(50);
  }
  throw new Error(`${path} did not reach ${size} bytes within ${timeoutMs} ms`);
}

function machine(): Record<string, string> {
  const version = (cmd: string, a: string[]) => {
    const r = spawnSync(cmd, a, { encoding: "utf8", timeout: 5_000 });
    return (
      `${r.stdout ?? ""}\n${r.stderr ?? ""}`
        .split("\n")
        .find((l) => l.trim() !== "")
        ?.trim() ?? "?"
    );
  };
  return {
    cpu: `${cpus()[0]?.model ?? "?"} × ${cpus().length}`,
    memory: `${(totalmem() / 2 ** 30).toFixed(0)} GiB`,
    kernel: release(),
    node: process.version,
    distribution: version("docker-registry", ["--version"]),
    nginx: version("/usr/sbin/nginx", ["-v"]),
    wrk: version("wrk", ["-v"]),
  };
}

function renderReport(opts: { loadAtStart: number[]; loadAtEnd: number[] }): string {
  const m = machine();
  const s = (scenario: string, key: string, digits = 0) => formatSummary(get(scenario, key), digits);
  const r = (scenario: string, a: string, b: string) => formatRatio(ratio(get(scenario, a), get(scenario, b)));
  const loadOf = (scenario: string) => formatSummary(summarize(loads[scenario] ?? []), 2);
  const rows: string[][] = [];
  const row = (...cells: string[]) => rows.push(cells);
  /** A load scenario's CPU time per request (bench/targets.ts, cpuSeconds), with `baseline`'s as the divisor. */
  const cpuRow = (scenario: "S4" | "S5", baseline: "nginx" | "nginx-tuned") =>
    row(
      `${scenario} server CPU per request µs (all threads; nginx: its workers)`,
      s(scenario, "mirror-cpu-us"),
      s(scenario, "proxy-cpu-us"),
      `${nginxLabel(baseline)} ${s(scenario, `${baseline}-cpu-us`)}`,
      r(scenario, "mirror-cpu-us", `${baseline}-cpu-us`),
      r(scenario, "proxy-cpu-us", `${baseline}-cpu-us`),
      "",
    );
  /** The median of one measurement, or undefined. */
  const med = (scenario: string, key: string) => get(scenario, key)?.median;
  /** " — met" / " — missed" after a target, judged on medians; nothing when a median is missing. */
  const verdict = (ok: boolean | undefined) => (ok === undefined ? "" : ok ? " — met" : " — missed");
  const atMost = (v: number | undefined, limit: number | undefined) =>
    v === undefined || limit === undefined ? undefined : v <= limit;
  const atLeast = (v: number | undefined, limit: number | undefined) =>
    v === undefined || limit === undefined ? undefined : v >= limit;
  const times = (a: number | undefined, k: number) => (a === undefined ? undefined : a * k);
  /**
   * Which nginx is the baseline of a warm scenario: the one with the better median of `key` (issue 22: measure
   * Debian's `sendfile on` and the tuned `sendfile off`, keep the faster).
   */
  const nginxFor = (scenario: string, key: string, higherIsBetter: boolean): "nginx" | "nginx-tuned" => {
    const plain = med(scenario, `nginx-${key}`);
    const tuned = med(scenario, `nginx-tuned-${key}`);
    if (tuned === undefined) return "nginx";
    if (plain === undefined) return "nginx-tuned";
    return (higherIsBetter ? tuned > plain : tuned < plain) ? "nginx-tuned" : "nginx";
  };
  const nginxLabel = (n: "nginx" | "nginx-tuned") => (n === "nginx" ? "nginx (sendfile on)" : "nginx (sendfile off)");
  if (results["S1"]) {
    const proxyRatio = ratio(get("S1", "proxy-MBps"), get("S1", "direct-MBps"));
    row(
      "S1 cold 1 GiB: throughput MB/s",
      s("S1", "mirror-MBps"),
      s("S1", "proxy-MBps"),
      `direct ${s("S1", "direct-MBps")}`,
      r("S1", "mirror-MBps", "direct-MBps"),
      r("S1", "proxy-MBps", "direct-MBps"),
      `≥ proxy (${formatRatio(proxyRatio)} direct)${verdict(atLeast(med("S1", "mirror-MBps"), med("S1", "proxy-MBps")))}; ` +
        `stretch ≥ 0.6× direct${verdict(atLeast(med("S1", "mirror-MBps"), times(med("S1", "direct-MBps"), 0.6)))}`,
    );
    row(
      "S1 cold 1 GiB: TTFB ms",
      s("S1", "mirror-ttfb-ms", 1),
      s("S1", "proxy-ttfb-ms", 1),
      `direct ${s("S1", "direct-ttfb-ms", 1)}`,
      r("S1", "mirror-ttfb-ms", "direct-ttfb-ms"),
      r("S1", "proxy-ttfb-ms", "direct-ttfb-ms"),
      `≤ 3× direct${verdict(atMost(med("S1", "mirror-ttfb-ms"), times(med("S1", "direct-ttfb-ms"), 3)))}`,
    );
    row(
      "S1 cold 1 GiB: upstream bytes ÷ blob",
      s("S1", "mirror-upstream-x", 2),
      s("S1", "proxy-upstream-x", 2),
      `direct ${s("S1", "direct-upstream-x", 2)}`,
      "",
      "",
      `exactly 1×${verdict(med("S1", "mirror-upstream-x") === undefined ? undefined : Math.abs(med("S1", "mirror-upstream-x")! - 1) < 0.005)}`,
    );
  }
  if (results["S2"]) {
    const n = nginxFor("S2", "MBps", true);
    row(
      "S2 warm 1 GiB: throughput MB/s",
      s("S2", "mirror-MBps"),
      s("S2", "proxy-MBps"),
      `${nginxLabel(n)} ${s("S2", `${n}-MBps`)}; the other ${s("S2", `${n === "nginx" ? "nginx-tuned" : "nginx"}-MBps`)}`,
      r("S2", "mirror-MBps", `${n}-MBps`),
      r("S2", "proxy-MBps", `${n}-MBps`),
      `≥ 0.95× nginx${verdict(atLeast(med("S2", "mirror-MBps"), times(med("S2", `${n}-MBps`), 0.95)))}`,
    );
    row(
      "S2 warm 1 GiB: TTFB ms",
      s("S2", "mirror-ttfb-ms", 2),
      s("S2", "proxy-ttfb-ms", 2),
      `${nginxLabel(n)} ${s("S2", `${n}-ttfb-ms`, 2)}`,
      r("S2", "mirror-ttfb-ms", `${n}-ttfb-ms`),
      r("S2", "proxy-ttfb-ms", `${n}-ttfb-ms`),
      "",
    );
  }
  if (results["S3"]) {
    // Issue 22's "no worse than today": wall 1.25× and median TTFB 0.96× of 16 direct clients when it was filed.
    row(
      `S3 ${clients} clients cold 100 MiB: wall s`,
      s("S3", "mirror-wall-s", 2),
      s("S3", "proxy-wall-s", 2),
      `direct ${s("S3", "direct-wall-s", 2)}`,
      r("S3", "mirror-wall-s", "direct-wall-s"),
      r("S3", "proxy-wall-s", "direct-wall-s"),
      `≤ 1.25× direct${verdict(atMost(med("S3", "mirror-wall-s"), times(med("S3", "direct-wall-s"), 1.25)))}`,
    );
    row(
      "S3 per-client TTFB min ms",
      s("S3", "mirror-ttfb-min-ms", 1),
      s("S3", "proxy-ttfb-min-ms", 1),
      `direct ${s("S3", "direct-ttfb-min-ms", 1)}`,
      r("S3", "mirror-ttfb-min-ms", "direct-ttfb-min-ms"),
      r("S3", "proxy-ttfb-min-ms", "direct-ttfb-min-ms"),
      "",
    );
    row(
      "S3 per-client TTFB median ms",
      s("S3", "mirror-ttfb-median-ms", 1),
      s("S3", "proxy-ttfb-median-ms", 1),
      `direct ${s("S3", "direct-ttfb-median-ms", 1)}`,
      r("S3", "mirror-ttfb-median-ms", "direct-ttfb-median-ms"),
      r("S3", "proxy-ttfb-median-ms", "direct-ttfb-median-ms"),
      `≤ 0.96× direct${verdict(atMost(med("S3", "mirror-ttfb-median-ms"), times(med("S3", "direct-ttfb-median-ms"), 0.96)))}`,
    );
    row(
      "S3 per-client TTFB max ms",
      s("S3", "mirror-ttfb-max-ms", 1),
      s("S3", "proxy-ttfb-max-ms", 1),
      `direct ${s("S3", "direct-ttfb-max-ms", 1)}`,
      r("S3", "mirror-ttfb-max-ms", "direct-ttfb-max-ms"),
      r("S3", "proxy-ttfb-max-ms", "direct-ttfb-max-ms"),
      "",
    );
    row(
      "S3 upstream bytes ÷ blob",
      s("S3", "mirror-upstream-x", 2),
      s("S3", "proxy-upstream-x", 2),
      `direct ${s("S3", "direct-upstream-x", 2)}`,
      "",
      "",
      `exactly 1×${verdict(med("S3", "mirror-upstream-x") === undefined ? undefined : Math.abs(med("S3", "mirror-upstream-x")! - 1) < 0.005)}`,
    );
  }
  if (results["S4"]) {
    const n = nginxFor("S4", "rps", true);
    row(
      `S4 warm manifest by tag, ${connections} conns: req/s`,
      s("S4", "mirror-rps"),
      s("S4", "proxy-rps"),
      `${nginxLabel(n)} ${s("S4", `${n}-rps`)}`,
      r("S4", "mirror-rps", `${n}-rps`),
      r("S4", "proxy-rps", `${n}-rps`),
      `≥ 0.3× nginx${verdict(atLeast(med("S4", "mirror-rps"), times(med("S4", `${n}-rps`), 0.3)))}`,
    );
    row(
      "S4 p50 / p99 ms",
      `${s("S4", "mirror-p50-ms", 2)} / ${s("S4", "mirror-p99-ms", 2)}`,
      `${s("S4", "proxy-p50-ms", 1)} / ${s("S4", "proxy-p99-ms", 1)}`,
      `${nginxLabel(n)} ${s("S4", `${n}-p50-ms`, 2)} / ${s("S4", `${n}-p99-ms`, 2)}`,
      "",
      "",
      "",
    );
    cpuRow("S4", n);
  }
  if (results["S5"]) {
    const n = nginxFor("S5", "rps", true);
    row(
      `S5 warm 1 MiB blobs, ${connections} conns: req/s`,
      s("S5", "mirror-rps"),
      s("S5", "proxy-rps"),
      `${nginxLabel(n)} ${s("S5", `${n}-rps`)}`,
      r("S5", "mirror-rps", `${n}-rps`),
      r("S5", "proxy-rps", `${n}-rps`),
      `≥ 0.8× nginx${verdict(atLeast(med("S5", "mirror-rps"), times(med("S5", `${n}-rps`), 0.8)))}`,
    );
    row(
      "S5 MB/s",
      s("S5", "mirror-MBps"),
      s("S5", "proxy-MBps"),
      `${nginxLabel(n)} ${s("S5", `${n}-MBps`)}`,
      "",
      "",
      "",
    );
    row(
      "S5 p50 / p99 ms",
      `${s("S5", "mirror-p50-ms", 1)} / ${s("S5", "mirror-p99-ms", 1)}`,
      `${s("S5", "proxy-p50-ms", 1)} / ${s("S5", "proxy-p99-ms", 1)}`,
      `${nginxLabel(n)} ${s("S5", `${n}-p50-ms`, 1)} / ${s("S5", `${n}-p99-ms`, 1)}`,
      "",
      "",
      "",
    );
    cpuRow("S5", n);
  }
  if (results["MEM"]) {
    const peak = (scenario: string, what: string) => {
      if (get("MEM", `mirror-${scenario}-MiB`) === undefined) return;
      const limit = scenario === "S5" ? med("MEM", `proxy-${scenario}-MiB`) : 100;
      row(
        `Peak RSS MiB, ${scenario} (${what})`,
        s("MEM", `mirror-${scenario}-MiB`),
        s("MEM", `proxy-${scenario}-MiB`),
        "",
        "",
        "",
        `${scenario === "S5" ? "≤ proxy" : "≤ 100 MiB"}${verdict(atMost(med("MEM", `mirror-${scenario}-MiB`), limit))}`,
      );
    };
    if (get("MEM", "mirror-idle-MiB") !== undefined)
      row(
        "RSS MiB, idle (just started, empty store)",
        s("MEM", "mirror-idle-MiB"),
        s("MEM", "proxy-idle-MiB"),
        "",
        "",
        "",
        `≤ 60 MiB${verdict(atMost(med("MEM", "mirror-idle-MiB"), 60))}`,
      );
    peak("S1", "1 GiB cold");
    peak("S2", "1 GiB warm");
    peak("S3", `${clients} clients cold`);
    peak("S4", "manifests");
    peak("S5", "1 MiB blobs");
  }
  if (results["START"]) {
    row(
      `Start-up, ${startupBlobs} cached blobs, after a clean stop (index snapshot): ready ms`,
      s("START", "mirror-clean-ms"),
      "",
      "",
      "",
      "",
      `≤ 1500 ms${verdict(atMost(med("START", "mirror-clean-ms"), 1500))}`,
    );
    row(
      "Start-up after a clean stop: index from the snapshot, ms",
      s("START", "mirror-clean-scan-ms"),
      "",
      "",
      "",
      "",
      "",
    );
    row(
      `Start-up, ${startupBlobs} cached blobs, after a crash (index scanned in the background): ready ms`,
      s("START", "mirror-crash-ms"),
      "",
      "",
      "",
      "",
      `≤ 1500 ms${verdict(atMost(med("START", "mirror-crash-ms"), 1500))}`,
    );
    row(
      "Start-up after a crash: index complete, ms after the spawn (mirror's log)",
      s("START", "mirror-crash-complete-ms"),
      "",
      "",
      "",
      "",
      "",
    );
    row("Start-up after a crash: index scan ms (mirror's log)", s("START", "mirror-crash-scan-ms"), "", "", "", "", "");
    row(
      "Start-up, empty store: ready ms",
      s("START", "mirror-empty-ms"),
      s("START", "distribution-proxy-empty-ms"),
      "",
      "",
      "",
      `≤ 250 ms${verdict(atMost(med("START", "mirror-empty-ms"), 250))}`,
    );
  }
  const header = ["scenario", "mirror", "distribution proxy", "baseline", "mirror ratio", "proxy ratio", "target"];
  const table = [header, header.map(() => "---"), ...rows].map((cells) => `| ${cells.join(" | ")} |`).join("\n");
  return [
    "",
    `Machine: ${m.cpu}, ${m.memory} RAM, Linux ${m.kernel}; Node ${m.node}; ${m.distribution}; ${m.nginx}; ${m.wrk}`,
    `Load average (1/5/15 min) at start ${opts.loadAtStart.map((x) => x.toFixed(2)).join(" / ")}, at end ${opts.loadAtEnd.map((x) => x.toFixed(2)).join(" / ")}; ` +
      `1-min load per scenario (median, min–max): ${Object.keys(loads)
        .map((k) => `${k} ${loadOf(k)}`)
        .join(", ")}`,
    `Mirror run as ${args["mirror-env"].length > 0 ? `${args["mirror-env"].join(" ")} ` : ""}${args.compiled ? "compiled JavaScript (node dist/main.js, as in the container image)" : "node src/main.ts (type stripping)"}. Repetitions: S1–S3 ${reps}, S4/S5 ${loadReps} × ${seconds} s (wrk ${wrkThreads} threads), start-up ${startupReps}. Values: median (min–max). Ratios: mirror or proxy median ÷ baseline median.`,
    "",
    ...(rows.length > 0 ? [table, ""] : []), // none with --only FLEET
    ...(results["FLEET"]
      ? [
          renderFleetTable((key) => get("FLEET", key), notes, {
            clients,
            mediumMiB: int("medium-mib"),
            bigMiB: int("big-mib"),
          }),
          "",
        ]
      : []),
  ].join("\n");
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
