/**
 * What this machine allows S4 and S5 before any of the mirror's own code runs: the same two requests (a manifest
 * of ~670 bytes from memory by tag, 1 MiB blobs from files), the same wrk load (32 connections, 2 threads), served
 * by node:http alone (one process and two), by Koa, by Koa doing what the mirror does around every request (an
 * access log line, a counter and a histogram), and by the bench's tuned nginx. Prints req/s and each server's CPU
 * time per request (its process and children, from /proc) and both as ratios to nginx. The servers are
 * bench/ceiling-server.ts; each its own process on 127.0.0.1, stopped by its PID. A few minutes.
 *
 * usage: node bench/ceiling.ts [--seconds 5] [--reps 3] [--connections 32] [--keep]
 */
import { randomBytes, createHash } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import { freePort } from "../test/harness/processes.ts";
import { load, type LoadResult } from "./measure.ts";
import { formatRatio, formatSummary, ratio, rotation, summarize } from "./stats.ts";
import { BenchProcess, NginxTarget, waitReady } from "./targets.ts";

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "5" },
    reps: { type: "string", default: "3" },
    connections: { type: "string", default: "32" },
    keep: { type: "boolean", default: false },
  },
});
const seconds = Number(args.seconds);
const reps = Number(args.reps);
const connections = Number(args.connections);
const REPO = "bench/app";
const BLOBS = 50;
const MiB = 1024 * 1024;

interface Server {
  name: string;
  url: string;
  process: BenchProcess;
}

/** The 1-minute load average: numbers taken on a busy machine say little (the bench prints it too). */
const load1 = () => loadavg()[0]!.toFixed(2);
const loadAtStart = load1();
const workDir = await mkdtemp(join(tmpdir(), "mirror-ceiling-"));
const servers: Server[] = [];
const nginx = new NginxTarget({
  workDir,
  port: await freePort(),
  upstreamStorage: join(workDir, "upstream"),
  tuned: true,
});
try {
  // 50 blobs of 1 MiB in distribution's layout (what NginxTarget serves), and a manifest naming one of them.
  const blobRoot = join(workDir, "upstream", "docker", "registry", "v2", "blobs", "sha256");
  const blobPaths: string[] = [];
  for (let i = 0; i < BLOBS; i++) {
    const bytes = randomBytes(MiB);
    const hex = createHash("sha256").update(bytes).digest("hex");
    await mkdir(join(blobRoot, hex.slice(0, 2), hex), { recursive: true });
    await writeFile(join(blobRoot, hex.slice(0, 2), hex, "data"), bytes);
    blobPaths.push(`/v2/${REPO}/blobs/sha256:${hex}`);
  }
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: `sha256:${"1".repeat(64)}`, size: 1469 },
      layers: [1, 2, 3].map((n) => ({
        mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
        digest: `sha256:${String(n).repeat(64)}`,
        size: n * MiB,
      })),
    }),
  );
  const manifestFile = join(workDir, "manifest.json");
  await writeFile(manifestFile, manifest);
  await nginx.addManifest(REPO, "large", manifest);
  await nginx.start();
  servers.push({ name: "nginx (sendfile off, 2 workers)", url: nginx.url, process: nginx.process! });

  const script = fileURLToPath(new URL("ceiling-server.ts", import.meta.url));
  for (const [kind, processes, name] of [
    ["node-http", 1, "node:http, 1 process"],
    ["node-http", 2, "node:http, 2 processes (node:cluster)"],
    ["koa", 1, "Koa, request id + close listener"],
    ["koa-logged", 1, "Koa + pino access line + 2 prom-client metrics"],
  ] as const) {
    const port = await freePort();
    const since = performance.now();
    const proc = BenchProcess.start(kind, process.execPath, [script, kind, String(port), String(processes)], {
      env: { PATH: process.env["PATH"] ?? "", MANIFEST_FILE: manifestFile, BLOB_DIR: blobRoot },
      cwd: workDir,
      logPath: join(workDir, `${kind}-${processes}.log`),
    });
    servers.push({ name, url: `http://127.0.0.1:${port}`, process: proc });
    await waitReady(`http://127.0.0.1:${port}/v2/${REPO}/manifests/large`, proc, since);
  }

  const scenarios = {
    "S4 manifest by tag": {
      paths: [`/v2/${REPO}/manifests/large`],
      headers: { Accept: "application/vnd.oci.image.manifest.v1+json" },
    },
    "S5 1 MiB blobs": { paths: blobPaths, headers: {} },
  };
  const results = new Map<string, { rps: number[]; cpu: number[] }>();
  for (const [scenario, { paths, headers }] of Object.entries(scenarios)) {
    const opts = (suffix: string, s: number) => ({
      connections,
      threads: 2,
      seconds: s,
      headers,
      scriptPath: join(workDir, `${scenario.slice(0, 2)}-${suffix}.lua`),
    });
    for (const server of servers) await load(server.url, paths, opts("warmup", 2)); // every path, and the JIT
    for (let rep = 0; rep < reps; rep++) {
      for (const server of rotation(servers, rep)) {
        await sleep(500);
        const before = await server.process.cpuSeconds();
        const r: LoadResult = await load(server.url, paths, opts("run", seconds));
        const cpu = ((await server.process.cpuSeconds()) - before) / r.requests;
        if (r.errors > 0) throw new Error(`${server.name}: ${r.errors} errors in ${scenario}`);
        const key = `${scenario}\u0000${server.name}`;
        const entry = results.get(key) ?? { rps: [], cpu: [] };
        entry.rps.push(r.requestsPerSecond);
        entry.cpu.push(cpu * 1e6);
        results.set(key, entry);
        console.error(
          `${scenario} rep ${rep + 1}/${reps} ${server.name}: ${r.requestsPerSecond.toFixed(0)} req/s, CPU ${(cpu * 1e6).toFixed(0)} µs a request`,
        );
      }
    }
  }

  console.log(
    `\n${connections} connections, wrk 2 threads, ${reps} × ${seconds} s per server; median (min–max); 1-minute load average ${loadAtStart} at the start, ${load1()} at the end\n`,
  );
  console.log("| scenario | server | req/s | ÷ nginx | CPU µs per request | ÷ nginx |");
  console.log("| --- | --- | --- | --- | --- | --- |");
  for (const scenario of Object.keys(scenarios)) {
    const of = (server: Server) => results.get(`${scenario}\u0000${server.name}`)!;
    const base = of(servers[0]!);
    for (const server of servers) {
      const rps = summarize(of(server).rps);
      const cpu = summarize(of(server).cpu);
      console.log(
        `| ${scenario} | ${server.name} | ${formatSummary(rps)} | ${formatRatio(ratio(rps, summarize(base.rps)))} | ${formatSummary(cpu)} | ${formatRatio(ratio(cpu, summarize(base.cpu)))} |`,
      );
    }
  }
} finally {
  for (const server of servers) await server.process.stop();
  await nginx.stop();
  if (!args.keep) await rm(workDir, { recursive: true, force: true });
}
