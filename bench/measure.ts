/**
 * The clients: curl for single downloads (time to first byte and throughput as curl itself measures them, with
 * the body going to /dev/null, so the client costs little CPU and no JavaScript), and wrk for the
 * many-small-requests scenarios. Every run is bounded in time.
 */
import { spawn } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import type { Registry } from "../test/harness/registry.ts";

export interface Download {
  status: number;
  bytes: number;
  /** Seconds from the start of the request (connect included) to the first body byte. */
  ttfb: number;
  /** Seconds for the whole transfer. */
  total: number;
  /** Body bytes per second over the whole transfer, as curl reports it. */
  bytesPerSecond: number;
}

function run(
  cmd: string,
  args: string[],
  timeoutMs: number,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => out.push(c));
    child.stderr.on("data", (c: Buffer) => err.push(c));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({
        code: code ?? -1,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      });
    });
  });
}

/** One GET with curl, body discarded. Throws unless the answer is 200 with `expectBytes` bytes (when given). */
export async function download(
  url: string,
  opts: { expectBytes?: number; timeoutMs?: number; headers?: Record<string, string> } = {},
): Promise<Download> {
  const timeoutMs = opts.timeoutMs ?? 300_000;
  const { code, stdout, stderr } = await run(
    "curl",
    [
      "-sS",
      "-o",
      "/dev/null",
      ...Object.entries(opts.headers ?? {}).flatMap(([k, v]) => ["-H", `${k}: ${v}`]),
      "--max-time",
      String(Math.ceil(timeoutMs / 1000)),
      "-w",
      "%{http_code} %{size_download} %{time_starttransfer} %{time_total} %{speed_download}",
      url,
    ],
    timeoutMs + 5_000,
  );
  const [status = 0, bytes = 0, ttfb = 0, total = 0, speed = 0] = stdout.trim().split(/\s+/).map(Number);
  if (code !== 0 || status !== 200 || (opts.expectBytes !== undefined && bytes !== opts.expectBytes)) {
    throw new Error(
      `GET ${url}: curl exit ${code}, HTTP ${status}, ${bytes} bytes${opts.expectBytes !== undefined ? ` (expected ${opts.expectBytes})` : ""}: ${stderr.trim()}`,
    );
  }
  return { status, bytes, ttfb, total, bytesPerSecond: speed };
}

/** `clients` simultaneous downloads of `url`; wall time is from launching the first to the last one ending. */
export async function concurrentDownloads(
  url: string,
  clients: number,
  opts: { expectBytes?: number; timeoutMs?: number } = {},
): Promise<{ wall: number; downloads: Download[] }> {
  const started = performance.now();
  const downloads = await Promise.all(Array.from({ length: clients }, () => download(url, opts)));
  return { wall: (performance.now() - started) / 1000, downloads };
}

export interface LoadResult {
  requestsPerSecond: number;
  bytesPerSecond: number;
  p50ms: number;
  p99ms: number;
  requests: number;
  /** Non-2xx/3xx answers and socket errors; a run with any is reported, not silently averaged. */
  errors: number;
}

/**
 * wrk for `seconds` with `connections` connections, cycling through `paths` (one Lua-scripted request list).
 * The Lua script also prints the latency percentiles in microseconds, which are parsed here.
 */
export async function load(
  baseUrl: string,
  paths: string[],
  opts: { connections: number; threads: number; seconds: number; headers?: Record<string, string>; scriptPath: string },
): Promise<LoadResult> {
  const lua = `
local paths = { ${paths.map((p) => JSON.stringify(p)).join(", ")} }
local headers = { ${Object.entries(opts.headers ?? {})
    .map(([k, v]) => `[${JSON.stringify(k)}] = ${JSON.stringify(v)}`)
    .join(", ")} }
local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], headers)
end
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format("BENCH %d %d %d %d %d %d\\n", summary.requests, summary.bytes, summary.duration, latency:percentile(50), latency:percentile(99), errors))
end
`;
  await writeFile(opts.scriptPath, lua);
  const { code, stdout, stderr } = await run(
    "wrk",
    [
      "-t",
      String(opts.threads),
      "-c",
      String(opts.connections),
      "-d",
      `${opts.seconds}s`,
      "--timeout",
      "10s",
      "-s",
      opts.scriptPath,
      baseUrl,
    ],
    (opts.seconds + 30) * 1000,
  );
  const line = /^BENCH (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$/m.exec(stdout);
  if (code !== 0 || line === null) throw new Error(`wrk exit ${code}: ${stdout}\n${stderr}`);
  const [requests, bytes, durationUs, p50, p99, errors] = line.slice(1).map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const seconds = durationUs / 1e6;
  return {
    requestsPerSecond: requests / seconds,
    bytesPerSecond: bytes / seconds,
    p50ms: p50 / 1000,
    p99ms: p99 / 1000,
    requests,
    errors,
  };
}

/**
 * The bytes the upstream sent of one blob (GETs of its digest only: a proxy may still be finishing its own upstream
 * GETs of another blob), summed from its log once the sum has stopped growing (bounded: 20 polls 200 ms apart).
 */
export async function upstreamBytesOf(upstream: Registry, digest: string): Promise<number> {
  let last = -1;
  for (let i = 0; i < 20; i++) {
    await upstream.sync();
    const sum = upstream
      .requests()
      .filter((r) => r.method === "GET" && r.kind === "blobs" && r.path.split("?")[0]!.endsWith(`/${digest}`))
      .reduce((n, r) => n + r.written, 0);
    if (sum === last) return sum;
    last = sum;
    await sleep(200);
  }
  return last;
}
