// The upstream registry for integration tests: Debian's `docker-registry` (CNCF distribution 2.8) on a
// free loopback port with filesystem storage in a temp dir. Its JSON log is parsed so tests can count
// the requests that actually reached the upstream ("exactly one GET of this blob").
import { mkdtemp, rm, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, startProcess, waitFor, type ManagedProcess } from "./processes.ts";

/** What a request was for, from its path. */
export type RequestKind = "base" | "manifests" | "blobs" | "uploads" | "tags" | "catalog" | "other";

/** One completed request, as distribution logged it ("response completed" / "response completed with error"). */
export interface UpstreamRequest {
  method: string;
  /** The request URI as sent, query string included (e.g. "/v2/library/x/blobs/sha256:..."). */
  path: string;
  status: number;
  kind: RequestKind;
  /** Repository name from the path ("library/x"), when the path names one. */
  repo?: string;
  /** Response body bytes the registry wrote: less than the blob size when the client disconnected early. */
  written: number;
  /**
   * When the request arrived, in epoch milliseconds (fractional), computed as log time minus the logged
   * duration. Log lines come out in COMPLETION order, and not even reliably that (see requests()); this
   * gives the order in which requests were made.
   */
  startedAt: number;
}

export interface RequestFilter {
  method?: string;
  kind?: RequestKind;
  pathIncludes?: string;
  status?: number;
  repo?: string;
}

export interface Registry {
  readonly name: string;
  /** http://127.0.0.1:PORT */
  readonly url: string;
  /** 127.0.0.1:PORT */
  readonly host: string;
  readonly port: number;
  /** Filesystem storage root; survives stop()/start(). */
  readonly rootDir: string;
  /** Stops the registry process; storage and the request log are kept. */
  stop(): Promise<void>;
  /** Starts it again on the same port with the same storage; a no-op if it is running. */
  start(): Promise<void>;
  /** stop() and delete the temp dirs this harness created (not a caller-supplied rootDir). */
  dispose(): Promise<void>;
  /**
   * Requests completed so far (since the last clearRequests), in the order they ARRIVED (by startedAt).
   * distribution serves blobs with sendfile and logs afterwards, so a client can finish a blob GET and
   * send its next request before the blob's log line exists: raw log order would misplace it.
   */
  requests(): UpstreamRequest[];
  clearRequests(): void;
  count(filter: RequestFilter): number;
  /**
   * Waits until the log has caught up with the requests whose responses clients have already received;
   * call it before count()/requests() that must include a request that just finished. distribution logs
   * a request only after its response went out, so this sends a marker request, waits for the marker's
   * log line, then for the log to stay quiet briefly (a blob's line can trail a later request's line).
   * Requires the registry to be running.
   */
  sync(): Promise<void>;
  /** Recent registry output, for error messages. */
  output(): string;
}

const STARTUP_TIMEOUT_MS = 20_000;
const SYNC_TIMEOUT_MS = 5_000;
/** Query marker of the harness's own sync requests, which are kept out of requests(). */
const SYNC_MARKER = "harness-sync=";
/** sync(): how long the log must stay quiet after the marker, and the most it waits for that. */
const SYNC_QUIET_MS = 50;
const SYNC_QUIET_MAX_MS = 1_000;

export async function startRegistry(opts: { rootDir?: string } = {}): Promise<Registry> {
  const workDir = await mkdtemp(join(tmpdir(), "harness-registry-"));
  const rootDir = opts.rootDir ?? join(workDir, "storage");
  await mkdir(rootDir, { recursive: true });
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const url = `http://${host}`;
  const configPath = join(workDir, "config.yml");
  await writeFile(configPath, registryConfig(host, rootDir));

  let log: UpstreamRequest[] = [];
  let lastLineAt = 0;
  const syncSeen = new Set<string>();
  let syncCounter = 0;
  let proc: ManagedProcess | undefined;
  // Output of earlier runs, so an error after a restart still shows why the first run ended.
  let previousOutput = "";

  const onLine = (line: string): void => {
    const entry = parseLogLine(line);
    if (entry === undefined) return;
    lastLineAt = Date.now();
    const syncAt = entry.path.indexOf(SYNC_MARKER);
    if (syncAt !== -1) {
      syncSeen.add(entry.path.slice(syncAt + SYNC_MARKER.length));
      return;
    }
    // Insert by arrival time; lines almost always come in order, so this scans from the end briefly.
    let at = log.length;
    while (at > 0 && (log[at - 1]?.startedAt ?? 0) > entry.startedAt) at--;
    log.splice(at, 0, entry);
  };

  const start = async (): Promise<void> => {
    if (proc?.running()) return;
    if (proc !== undefined) previousOutput = (previousOutput + proc.output()).slice(-64 * 1024);
    // distribution reads EVERY REGISTRY_* variable as configuration (REGISTRY_AUTH_FILE meant for skopeo
    // breaks it), so it gets a clean environment rather than ours.
    const started = startProcess("docker-registry", ["serve", configPath], {
      name: `docker-registry ${host}`,
      env: { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME: workDir },
      cwd: workDir,
      onLine,
    });
    proc = started;
    try {
      await waitFor(async () => (await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(2_000) })).status === 200, {
        timeoutMs: STARTUP_TIMEOUT_MS,
        what: `docker-registry to answer GET ${url}/v2/ with 200`,
        whileRunning: started,
      });
    } catch (err) {
      await started.stop();
      throw err;
    }
  };

  const stop = async (): Promise<void> => {
    await proc?.stop();
  };

  const requests = (): UpstreamRequest[] => [...log];

  const registry: Registry = {
    name: `docker-registry ${host}`,
    url,
    host,
    port,
    rootDir,
    start,
    stop,
    async dispose() {
      await stop();
      await rm(workDir, { recursive: true, force: true });
    },
    requests,
    clearRequests: () => {
      log = [];
    },
    count: (filter) => requests().filter((r) => matches(r, filter)).length,
    async sync() {
      const id = `${process.pid}-${++syncCounter}`;
      const res = await fetch(`${url}/v2/?${SYNC_MARKER}${id}`, { signal: AbortSignal.timeout(SYNC_TIMEOUT_MS) });
      await res.arrayBuffer();
      await waitFor(async () => syncSeen.has(id), { timeoutMs: SYNC_TIMEOUT_MS, what: `registry log line of sync request ${id}`, intervalMs: 10 });
      syncSeen.delete(id);
      const quietUntil = Date.now() + SYNC_QUIET_MAX_MS;
      while (Date.now() - lastLineAt < SYNC_QUIET_MS && Date.now() < quietUntil) {
        await new Promise((resolve) => setTimeout(resolve, SYNC_QUIET_MS / 5));
      }
    },
    output: () => previousOutput + (proc?.output() ?? ""),
  };

  try {
    await start();
  } catch (err) {
    await rm(workDir, { recursive: true, force: true });
    throw err;
  }
  return registry;
}

/**
 * distribution 2.8 with `formatter: json` prints one JSON object per line; each finished request is one
 * line whose msg is "response completed" (or "response completed with error" for 4xx/5xx) carrying
 * http.request.method, http.request.uri and http.response.status. The separate Apache-style access log
 * is switched off so that each request appears exactly once.
 */
function registryConfig(host: string, rootDir: string): string {
  return [
    "version: 0.1",
    "log:",
    "  level: info",
    "  formatter: json",
    "  accesslog:",
    "    disabled: true",
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${JSON.stringify(rootDir)}`,
    "  delete:",
    "    enabled: true",
    // No descriptor cache: a test that deletes or damages a blob on disk must see the registry notice.
    "  cache:",
    "    blobdescriptor: ''",
    "http:",
    `  addr: ${host}`,
    // A fixed secret keeps upload URLs valid across stop()/start().
    "  secret: harness-registry-secret",
    "",
  ].join("\n");
}

/** Parses one log line into a request record, or undefined for anything that is not a finished request. */
export function parseLogLine(line: string): UpstreamRequest | undefined {
  if (!line.startsWith("{")) return undefined;
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const msg = entry["msg"];
  const method = entry["http.request.method"];
  const uri = entry["http.request.uri"];
  const status = entry["http.response.status"];
  if (typeof msg !== "string" || !msg.startsWith("response completed")) return undefined;
  if (typeof method !== "string" || typeof uri !== "string" || typeof status !== "number") return undefined;
  const written = entry["http.response.written"];
  const time = entry["time"];
  const duration = entry["http.response.duration"];
  const finishedAt = typeof time === "string" ? parseTime(time) : Number.NaN;
  const tookMs = typeof duration === "string" ? parseGoDuration(duration) : 0;
  return {
    method,
    path: uri,
    status,
    written: typeof written === "number" ? written : 0,
    startedAt: Number.isFinite(finishedAt) ? finishedAt - tookMs : Date.now(),
    ...classify(uri),
  };
}

/** RFC 3339 with nanoseconds ("2026-11-23T18:43:48.876988511Z") to epoch ms, keeping the fraction. */
function parseTime(time: string): number {
  const m = /^(.*T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.exec(time);
  if (m === null) return Date.parse(time);
  const [, seconds = "", fraction = "", zone = ""] = m;
  return Date.parse(`${seconds}${zone}`) + (fraction === "" ? 0 : Number(fraction) * 1000);
}

/** Go's time.Duration.String() format ("4.956718ms", "1.005795752s", "850µs", "1m2.5s") to milliseconds. */
export function parseGoDuration(text: string): number {
  const unitMs: Record<string, number> = { ns: 1e-6, us: 1e-3, "µs": 1e-3, "μs": 1e-3, ms: 1, s: 1e3, m: 60e3, h: 3600e3 };
  let total = 0;
  for (const [, value = "0", unit = ""] of text.matchAll(/([\d.]+)(ns|us|µs|μs|ms|s|m|h)/g)) {
    total += Number(value) * (unitMs[unit] ?? 0);
  }
  return total;
}

/** Works out kind and repository from a /v2/ path. */
function classify(uri: string): { kind: RequestKind; repo?: string } {
  const path = uri.split("?", 1)[0] ?? uri;
  if (path === "/v2/" || path === "/v2") return { kind: "base" };
  if (path === "/v2/_catalog") return { kind: "catalog" };
  const m = /^\/v2\/(.+?)\/(manifests|blobs|tags)\/(.*)$/.exec(path);
  if (m === null) return { kind: "other" };
  const [, repo = "", section = "", rest = ""] = m;
  if (section === "blobs" && rest.startsWith("uploads")) return { kind: "uploads", repo };
  return { kind: section as "manifests" | "blobs" | "tags", repo };
}

function matches(r: UpstreamRequest, f: RequestFilter): boolean {
  return (
    (f.method === undefined || r.method === f.method.toUpperCase()) &&
    (f.kind === undefined || r.kind === f.kind) &&
    (f.pathIncludes === undefined || r.path.includes(f.pathIncludes)) &&
    (f.status === undefined || r.status === f.status) &&
    (f.repo === undefined || r.repo === f.repo)
  );
}
