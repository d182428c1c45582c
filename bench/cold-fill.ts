/**
 * The cold path alone, for per-stage work on S1 (issue 22): one download through the real fill coordinator and
 * filesystem store (undici request → fill → temp file, hash worker → a reader following it → node:http → curl),
 * with nothing else of the mirror around it, and what it cost: the mirror process's CPU time per thread
 * (/proc/self/task: the main thread, the hash worker, libuv's threadpool, V8's GC helpers), its collections,
 * curl's throughput and time to first byte, and whether the blob was committed.
 *
 *   node --max-semi-space-size=4 bench/cold-fill.ts [--mib 512] [--reps 3] [--root <another checkout>]
 *
 * `--root` loads the fill and store from another checkout (a clone at main, say) for interleaved before/after
 * runs; CPU per thread is the number to compare on a shared machine, where throughput mostly measures the load.
 * The upstream is a separate Node process serving a file of random bytes; everything listens on 127.0.0.1 and
 * is stopped at the end. Bounded: each download has a 120 s limit.
 */
import { spawn } from "node:child_process";
import { createHash, randomFillSync } from "node:crypto";
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { PerformanceObserver } from "node:perf_hooks";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    mib: { type: "string", default: "512" },
    reps: { type: "string", default: "3" },
    root: { type: "string", default: resolve(import.meta.dirname, "..") },
  },
});
const mib = Number(values.mib);
const reps = Number(values.reps);
const root = resolve(values.root);

// The tool's own dependencies from this checkout; the fill and the store from `root` (its imports resolve there).
const require = createRequire(import.meta.url);
const { request } = require("undici") as typeof import("undici");
const pino = require("pino") as typeof import("pino").default;
const { BlobStore } = (await import(
  join(root, "src/storage/blob-store.ts")
)) as typeof import("../src/storage/blob-store.ts");
const { BufferPool } = (await import(
  join(root, "src/storage/file-range-stream.ts")
)) as typeof import("../src/storage/file-range-stream.ts");
const { ReceivePacer } = (await import(
  join(root, "src/fill/receive-pacer.ts")
)) as typeof import("../src/fill/receive-pacer.ts");
const { FillCoordinator } = (await import(
  join(root, "src/fill/fill-coordinator.ts")
)) as typeof import("../src/fill/fill-coordinator.ts");
// The heap policy the mirror applies at start (main.ts), from the same checkout when it has one: without it this
// process's collections are not the mirror's (bench/README.md, "The warm read from S3").
try {
  const { applyHeapPolicy } = (await import(
    join(root, "src/heap-policy.ts")
  )) as typeof import("../src/heap-policy.ts");
  applyHeapPolicy();
} catch (err) {
  if ((err as NodeJS.ErrnoException).code !== "ERR_MODULE_NOT_FOUND") throw err;
  process.stderr.write(`cold-fill: ${root} has no src/heap-policy.ts: V8's default heap policy\n`);
}

const UPSTREAM = `
import { createServer } from "node:http";
import { createReadStream, statSync } from "node:fs";
const path = process.argv[1];
const size = statSync(path).size;
createServer((req, res) => {
  res.writeHead(200, { "content-length": String(size) });
  createReadStream(path, { highWaterMark: 1 << 20 }).pipe(res);
}).listen(0, "127.0.0.1", function () { process.stdout.write(this.address().port + "\\n"); });
`;

/** CPU milliseconds per thread name of this process, from /proc (clock ticks of 10 ms). */
function threadCpu(): Map<string, number> {
  const cpu = new Map<string, number>();
  for (const task of readdirSync("/proc/self/task")) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/self/task/${task}/stat`, "utf8");
    } catch {
      continue; // the thread ended
    }
    const close = stat.lastIndexOf(")");
    const fields = stat.slice(close + 2).split(" ");
    cpu.set(`${task} ${stat.slice(stat.indexOf("(") + 1, close)}`, (Number(fields[11]) + Number(fields[12])) * 10);
  }
  return cpu;
}

function curl(url: string): Promise<{ speed: number; ttfb: number; bytes: number }> {
  return new Promise((done, fail) => {
    const child = spawn("curl", [
      "-s",
      "-m",
      "120",
      "-o",
      "/dev/null",
      "-w",
      "%{speed_download} %{time_starttransfer} %{size_download}",
      url,
    ]);
    const out: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => out.push(c));
    child.on("error", fail);
    child.on("close", () => {
      const [speed, ttfb, bytes] = Buffer.concat(out).toString().split(" ").map(Number);
      done({ speed: speed ?? 0, ttfb: ttfb ?? 0, bytes: bytes ?? 0 });
    });
  });
}

const work = mkdtempSync(join(tmpdir(), "cold-fill-"));
const blobPath = join(work, "blob");
const size = mib * 1024 * 1024;
const hash = createHash("sha256");
const fd = openSync(blobPath, "w");
// One buffer refilled: a blob's worth of garbage (or the blob held whole) here would skew the GC counts below.
const piece = Buffer.allocUnsafe(1024 * 1024);
for (let at = 0; at < size; at += piece.length) {
  randomFillSync(piece);
  hash.update(piece);
  writeSync(fd, piece);
}
closeSync(fd);
const digest = `sha256:${hash.digest("hex")}`;

const upstream = spawn(process.execPath, ["--input-type=module", "-e", UPSTREAM, blobPath], {
  stdio: ["ignore", "pipe", "inherit"],
});
const upstreamPort = await new Promise<number>((done) =>
  upstream.stdout.once("data", (c: Buffer) => done(Number(String(c).trim()))),
);

let fullGcs = 0;
let minorGcs = 0;
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    // perf_hooks' NODE_PERFORMANCE_GC_* kinds: 1 a scavenge, 4 a mark-compact (others: incremental marking, callbacks).
    const kind = (entry as unknown as { detail?: { kind?: number } }).detail?.kind;
    if (kind === 1) minorGcs++;
    else if (kind === 4) fullGcs++;
  }
}).observe({ entryTypes: ["gc"] });
const pacer = new ReceivePacer();

try {
  for (let rep = 1; rep <= reps; rep++) {
    const storeDir = join(work, `store-${rep}`);
    const store = new BlobStore(storeDir);
    await store.init();
    const fills = new FillCoordinator({
      store,
      buffers: new BufferPool(),
      pacer,
      timeoutMs: 120_000,
      log: pino({ level: "silent" }),
    });
    const server: Server = createServer((req, res) => {
      const fill = fills.start(digest, { upstream: "bench", repo: "bench" }, async (signal) => {
        const response = await request(`http://127.0.0.1:${upstreamPort}/blob`, { signal });
        return { size: Number(response.headers["content-length"]), body: response.body };
      });
      fill.ready.then(
        () => {
          res.writeHead(200, { "content-length": String(fill.size) });
          fill.createReader(0, undefined).pipe(res);
        },
        () => res.destroy(),
      );
    });
    await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
    const { port } = server.address() as { port: number };
    fullGcs = minorGcs = 0;
    const before = threadCpu();
    const got = await curl(`http://127.0.0.1:${port}/`);
    const after = threadCpu();
    await new Promise((done) => setTimeout(done, 200)); // the commit follows the last byte closely
    const perThread: Record<string, number> = {};
    for (const [key, ms] of after) {
      const spent = ms - (before.get(key) ?? 0);
      const name = key.slice(key.indexOf(" ") + 1);
      if (spent > 0) perThread[name] = (perThread[name] ?? 0) + spent;
    }
    const cpuMs = Object.values(perThread).reduce((a, b) => a + b, 0);
    console.log(
      JSON.stringify({
        rep,
        MBps: Math.round(got.speed / 1e6),
        ttfbMs: Math.round(got.ttfb * 10_000) / 10,
        complete: got.bytes === size,
        committed: (await store.size(digest)) === size,
        cpuMs,
        cpuMsPerThread: perThread,
        fullGcs,
        minorGcs,
      }),
    );
    server.close();
    rmSync(storeDir, { recursive: true, force: true });
  }
} finally {
  upstream.kill();
  rmSync(work, { recursive: true, force: true });
}
process.exit(0); // the hash worker's idle timer and undici's pool would keep the process a while
