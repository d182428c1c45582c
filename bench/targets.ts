/**
 * The servers the bench measures, each its own process on 127.0.0.1, each stopped by its own PID:
 *  - our mirror (`node src/main.ts --config FILE`), so its RSS can be read from /proc and a restart is real;
 *  - distribution (Debian's docker-registry 2.8) in proxy mode against the same upstream, with its own storage;
 *  - nginx serving the upstream's blob files (and copies of the manifests) statically.
 * Their output goes to log files in the work directory, not through pipes: a server logging every request must
 * not be slowed by (or slow down) the bench process reading it.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { openSync, closeSync } from "node:fs";
import { mkdir, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

const CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const READY_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 30_000;

/** A child process whose output goes to a file; stop() is SIGTERM, a bounded wait, then SIGKILL, by its PID. */
export class BenchProcess {
  readonly name: string;
  readonly pid: number;
  readonly logPath: string;
  readonly exited: Promise<number | null>;
  private readonly child: ChildProcess;
  private done = false;

  private constructor(name: string, child: ChildProcess, logPath: string) {
    this.name = name;
    this.child = child;
    this.pid = child.pid!;
    this.logPath = logPath;
    this.exited = new Promise((resolveExit) => {
      child.once("exit", (code) => {
        this.done = true;
        resolveExit(code);
      });
    });
  }

  static start(
    name: string,
    cmd: string,
    args: string[],
    opts: { env: Record<string, string>; cwd: string; logPath: string },
  ): BenchProcess {
    const fd = openSync(opts.logPath, "a");
    try {
      const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ["ignore", fd, fd] });
      if (child.pid === undefined) {
        child.once("error", () => undefined);
        throw new Error(`${name}: could not start ${cmd}`);
      }
      return new BenchProcess(name, child, opts.logPath);
    } finally {
      closeSync(fd); // the child has its own copy
    }
  }

  get running(): boolean {
    return !this.done;
  }

  async stop(): Promise<void> {
    if (this.done) return;
    this.child.kill("SIGTERM");
    if (await settlesWithin(this.exited, STOP_TIMEOUT_MS)) return;
    this.child.kill("SIGKILL");
    await settlesWithin(this.exited, 5_000);
  }

  /**
   * Resets the peak resident set size (VmHWM) to the current one (`5` into /proc/<pid>/clear_refs), so that a
   * scenario's peak is its own, not one from an earlier scenario of the same process.
   */
  async resetPeak(): Promise<void> {
    await writeFile(`/proc/${this.pid}/clear_refs`, "5");
  }

  /** Peak and current resident set size in bytes, from /proc/<pid>/status (VmHWM, VmRSS). */
  async memory(): Promise<{ peak: number; current: number }> {
    const status = await readFile(`/proc/${this.pid}/status`, "utf8");
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? Number.NaN) * 1024;
    return { peak: kb("VmHWM"), current: kb("VmRSS") };
  }

  /**
   * CPU time used so far, in seconds: user + system time of the process (all its threads) and of its children
   * alive now (nginx's workers), from /proc/<pid>/stat. A difference of two readings around a load run, divided
   * by the requests served, is what each request cost the server. It depends less than requests per second on
   * how the 2 cores were shared with the load generator, but still moved ~20 % between runs an hour apart here.
   */
  async cpuSeconds(): Promise<number> {
    let ticks = 0;
    for (const pid of [this.pid, ...(await childPids(this.pid))]) ticks += await cpuTicks(pid);
    return ticks / CLOCK_TICKS_PER_SECOND;
  }

  async log(): Promise<string> {
    return readFile(this.logPath, "utf8").catch(() => "");
  }
}

/** The kernel's USER_HZ, which /proc/<pid>/stat counts in: 100 on Linux for every architecture Node runs on. */
const CLOCK_TICKS_PER_SECOND = 100;

/** Fields after the command name (which is in parentheses and may hold spaces) of /proc/<pid>/stat. */
async function statFields(pid: number): Promise<string[] | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => undefined);
  return stat?.slice(stat.lastIndexOf(")") + 2).split(" ");
}

/** utime + stime of `pid` (fields 14 and 15 of /proc/<pid>/stat), 0 for a process that has gone. */
async function cpuTicks(pid: number): Promise<number> {
  const fields = await statFields(pid);
  return fields === undefined ? 0 : Number(fields[11]) + Number(fields[12]);
}

/** The processes whose parent is `pid` (field 4 of their /proc/<pid>/stat). */
async function childPids(pid: number): Promise<number[]> {
  const children: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = await statFields(Number(entry));
    if (fields !== undefined && Number(fields[1]) === pid) children.push(Number(entry));
  }
  return children;
}

async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  const abort = new AbortController();
  try {
    return await Promise.race([p.then(() => true), sleep(ms, false, { signal: abort.signal }).catch(() => false)]);
  } finally {
    abort.abort();
  }
}

/** Polls `url` until it answers 200; returns the milliseconds from `since` until then. */
export async function waitReady(url: string, proc: BenchProcess, since: number, intervalMs = 10): Promise<number> {
  const deadline = since + READY_TIMEOUT_MS;
  for (;;) {
    if (!proc.running)
      throw new Error(`${proc.name} exited while starting; log: ${proc.logPath}\n${(await proc.log()).slice(-4000)}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
      await res.arrayBuffer();
      if (res.status === 200) return performance.now() - since;
    } catch {
      // not listening yet
    }
    if (performance.now() > deadline)
      throw new Error(`${proc.name} not ready at ${url} after ${READY_TIMEOUT_MS} ms; log: ${proc.logPath}`);
    await sleep(intervalMs);
  }
}

/** A server target whose cache can be cleared by stopping it, deleting its storage and starting it again. */
export interface RestartableTarget {
  readonly name: string;
  readonly url: string;
  readonly process: BenchProcess | undefined;
  /** Starts the server; resolves once it answers (with the time that took, in ms). */
  start(): Promise<number>;
  stop(): Promise<void>;
  /** stop, delete the cache, start. */
  restartCold(): Promise<number>;
}

export interface MirrorTargetOptions {
  repoRoot: string;
  /** The script node runs: src/main.ts, or a compiled main.js. */
  entry: string;
  workDir: string;
  port: number;
  upstreamUrl: string;
  /** Extra arguments for node before the script (e.g. --cpu-prof). */
  nodeArgs: string[];
  /** Extra environment variables (the mirror otherwise gets a clean PATH/HOME environment). */
  env?: Record<string, string>;
  dataDir?: string;
  logLevel?: string;
  /** `storage.s3` (FLEET): the blobs in a bucket; `dataDir` then holds temp files only. */
  storageS3?: Record<string, unknown>;
  /** Further top-level configuration keys (FLEET: `redis`, `cluster`), each written as one JSON line. */
  extraConfig?: Record<string, unknown>;
}

export class MirrorTarget implements RestartableTarget {
  readonly name = "mirror";
  readonly url: string;
  readonly dataDir: string;
  process: BenchProcess | undefined;
  private readonly opts: MirrorTargetOptions;
  private readonly configPath: string;
  private starts = 0;
  /** Date.now() when the current run's process was spawned. */
  private spawnedAt = 0;

  constructor(opts: MirrorTargetOptions) {
    this.opts = opts;
    this.url = `http://127.0.0.1:${opts.port}`;
    this.dataDir = opts.dataDir ?? join(opts.workDir, "mirror-data");
    this.configPath = join(opts.workDir, `mirror-${opts.port}.yaml`);
  }

  async start(): Promise<number> {
    await mkdir(this.dataDir, { recursive: true });
    await writeFile(
      this.configPath,
      [
        `listen: "127.0.0.1:${this.opts.port}"`,
        this.opts.storageS3 === undefined
          ? `storage: { path: ${JSON.stringify(this.dataDir)} }`
          : `storage: ${JSON.stringify({ path: this.dataDir, s3: this.opts.storageS3 })}`,
        `log: { level: ${this.opts.logLevel ?? "info"} }`,
        ...Object.entries(this.opts.extraConfig ?? {}).map(([k, v]) => `${k}: ${JSON.stringify(v)}`),
        "upstreams:",
        "  bench-upstream:", // not a first path component of REPO, or it would pick this upstream by prefix
        `    url: ${JSON.stringify(this.opts.upstreamUrl)}`,
        "    default: true",
        "    tagTtl: 1h",
        "",
      ].join("\n"),
    );
    const since = performance.now();
    this.spawnedAt = Date.now();
    this.process = BenchProcess.start(
      "mirror",
      process.execPath,
      [...this.opts.nodeArgs, this.opts.entry, "--config", this.configPath],
      {
        cwd: this.opts.repoRoot,
        env: { PATH: CLEAN_PATH, HOME: this.opts.workDir, NODE_ENV: "production", ...this.opts.env },
        logPath: join(this.opts.workDir, `mirror-${this.opts.port}-${++this.starts}.log`),
      },
    );
    return waitReady(`${this.url}/readyz`, this.process, since);
  }

  async stop(): Promise<void> {
    await this.process?.stop();
  }

  async restartCold(): Promise<number> {
    await this.stop();
    await rm(this.dataDir, { recursive: true, force: true });
    return this.start();
  }

  /**
   * The "cache index rebuilt" line of the current run's log: the mirror's own scan time, and when the index was
   * complete (ms since the process was spawned). After a crash a large store is scanned in the background while
   * the mirror already serves (src/storage/store-scan.ts): that line comes after ready, so it is waited for.
   */
  async indexScan(): Promise<
    { objects: number; scanMs: number; fromSnapshot: number; background: boolean; completeMs: number } | undefined
  > {
    const deadline = performance.now() + READY_TIMEOUT_MS;
    for (;;) {
      const log = (await this.process?.log()) ?? "";
      for (const line of log.split("\n")) {
        if (!line.includes("cache index rebuilt")) continue;
        try {
          const entry = JSON.parse(line) as {
            time?: number;
            objects?: number;
            scanMs?: number;
            snapshot?: { objects?: number };
            worker?: unknown;
          };
          if (typeof entry.scanMs === "number")
            return {
              objects: entry.objects ?? 0,
              scanMs: entry.scanMs,
              fromSnapshot: entry.snapshot?.objects ?? 0,
              background: entry.worker !== undefined,
              completeMs: (entry.time ?? Number.NaN) - this.spawnedAt,
            };
        } catch {
          // not JSON
        }
      }
      if (!this.process?.running || performance.now() > deadline) return undefined;
      await sleep(20);
    }
  }
}

/**
 * distribution's `s3` storage driver (FLEET): an S3-compatible endpoint over plain HTTP, path-style addressing.
 * `redirect.disable`: distribution otherwise answers blob GETs with a 307 to a presigned URL on the object store,
 * and the bench measures what the registry itself serves.
 */
export interface DistributionS3 {
  endpoint: string;
  region: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** Key prefix inside the bucket (distribution's `rootdirectory`). */
  rootDirectory: string;
}

/** The `storage:` block of a distribution configuration: its filesystem driver, or the `s3` driver. */
export function distributionStorageYaml(opts: { filesystemRoot: string } | { s3: DistributionS3 }): string[] {
  const common = ["  delete:", "    enabled: true", "  cache:", "    blobdescriptor: inmemory"];
  if ("filesystemRoot" in opts)
    return ["storage:", "  filesystem:", `    rootdirectory: ${JSON.stringify(opts.filesystemRoot)}`, ...common];
  const s3 = opts.s3;
  return [
    "storage:",
    "  s3:",
    `    accesskey: ${JSON.stringify(s3.accessKeyId)}`,
    `    secretkey: ${JSON.stringify(s3.secretAccessKey)}`,
    `    region: ${JSON.stringify(s3.region)}`,
    `    regionendpoint: ${JSON.stringify(s3.endpoint)}`,
    "    forcepathstyle: true", // 2.8 forces path style whenever regionendpoint is set; later versions read this
    `    bucket: ${JSON.stringify(s3.bucket)}`,
    `    secure: ${s3.endpoint.startsWith("https:") ? "true" : "false"}`,
    "    v4auth: true",
    `    rootdirectory: ${JSON.stringify(s3.rootDirectory)}`,
    "  redirect:",
    "    disable: true",
    ...common,
  ];
}

/** Debian's docker-registry (distribution 2.8) as a pull-through cache: `proxy: remoteurl`. */
export class ProxyRegistryTarget implements RestartableTarget {
  readonly name: string;
  readonly url: string;
  process: BenchProcess | undefined;
  private readonly workDir: string;
  private readonly storageDir: string;
  private readonly configPath: string;
  private readonly upstreamUrl: string;
  private readonly port: number;
  private readonly id: string;
  private readonly s3: DistributionS3 | undefined;
  private starts = 0;

  /**
   * `id` names this instance's files when several run at once (FLEET); `s3` puts its storage in a bucket instead
   * of a directory (restartCold then clears only its local directory: the FLEET scenario takes cold blobs).
   */
  constructor(opts: { workDir: string; port: number; upstreamUrl: string; id?: string; s3?: DistributionS3 }) {
    this.port = opts.port;
    this.id = opts.id ?? "";
    this.s3 = opts.s3;
    this.name = `distribution-proxy${this.id === "" ? "" : `-${this.id}`}`;
    this.url = `http://127.0.0.1:${opts.port}`;
    this.workDir = opts.workDir;
    this.upstreamUrl = opts.upstreamUrl;
    const suffix = this.id === "" ? "" : `-${this.id}`;
    this.storageDir = join(opts.workDir, `proxy-storage${suffix}`);
    this.configPath = join(opts.workDir, `proxy-config${suffix}.yml`);
  }

  async start(): Promise<number> {
    await mkdir(this.storageDir, { recursive: true });
    await writeFile(
      this.configPath,
      [
        "version: 0.1",
        "log:",
        "  level: info",
        "  formatter: json",
        ...distributionStorageYaml(this.s3 ? { s3: this.s3 } : { filesystemRoot: this.storageDir }),
        "http:",
        `  addr: 127.0.0.1:${this.port}`,
        "  secret: bench-proxy-secret",
        "proxy:",
        `  remoteurl: ${JSON.stringify(this.upstreamUrl)}`,
        "",
      ].join("\n"),
    );
    const since = performance.now();
    // distribution reads every REGISTRY_* variable as configuration: a clean environment, not ours.
    this.process = BenchProcess.start(this.name, "docker-registry", ["serve", this.configPath], {
      cwd: this.workDir,
      env: { PATH: CLEAN_PATH, HOME: this.workDir },
      logPath: join(this.workDir, `proxy${this.id === "" ? "" : `-${this.id}`}-${++this.starts}.log`),
    });
    return waitReady(`${this.url}/v2/`, this.process, since);
  }

  async stop(): Promise<void> {
    await this.process?.stop();
  }

  async restartCold(): Promise<number> {
    await this.stop();
    await rm(this.storageDir, { recursive: true, force: true });
    return this.start();
  }
}

/**
 * nginx as a foreground process with its own prefix, config, pid file and error log, on 127.0.0.1 only. Blob
 * URLs map onto the upstream registry's own data files; manifest URLs onto copies written by the bench.
 */
export class NginxTarget {
  readonly name: "nginx" | "nginx-tuned";
  readonly url: string;
  process: BenchProcess | undefined;
  private readonly prefix: string;
  private readonly port: number;
  private readonly blobRoot: string;
  readonly manifestRoot: string;

  /**
   * `tuned`: `sendfile off` with `output_buffers 2 1m` instead of Debian's `sendfile on` + `tcp_nopush on`. On this
   * kind of VM's loopback the tuned one sends one large file faster (~2.5–2.8 GB/s against ~1.5–1.7 GB/s); the bench
   * runs both and takes the faster as each scenario's baseline.
   */
  private readonly tuned: boolean;

  constructor(opts: { workDir: string; port: number; upstreamStorage: string; tuned?: boolean }) {
    this.tuned = opts.tuned ?? false;
    this.name = this.tuned ? "nginx-tuned" : "nginx";
    this.port = opts.port;
    this.url = `http://127.0.0.1:${opts.port}`;
    this.prefix = join(opts.workDir, this.name);
    this.blobRoot = join(opts.upstreamStorage, "docker", "registry", "v2", "blobs", "sha256");
    this.manifestRoot = join(this.prefix, "manifests");
  }

  /** Makes `GET /v2/<repo>/manifests/<tag>` answer these bytes. */
  async addManifest(repo: string, tag: string, bytes: Buffer): Promise<void> {
    await mkdir(join(this.manifestRoot, repo), { recursive: true });
    await writeFile(join(this.manifestRoot, repo, tag), bytes);
  }

  async start(): Promise<number> {
    await mkdir(join(this.prefix, "logs"), { recursive: true });
    await mkdir(join(this.prefix, "tmp"), { recursive: true });
    await mkdir(this.manifestRoot, { recursive: true });
    const conf = join(this.prefix, "nginx.conf");
    await writeFile(
      conf,
      `# ${this.tuned ? "Tuned for one large file on loopback (sendfile off, 2 × 1 MiB output buffers)" : "Debian's defaults where they matter (worker_processes auto, sendfile, tcp_nopush)"}, loopback only.
daemon off;
worker_processes auto;
${process.getuid?.() === 0 ? "user root; # the work directory is private (mkdtemp): workers must read it as we do" : ""}
pid ${this.prefix}/nginx.pid;
error_log ${this.prefix}/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log ${this.prefix}/logs/access.log;
  client_body_temp_path ${this.prefix}/tmp/body;
  proxy_temp_path ${this.prefix}/tmp/proxy;
  fastcgi_temp_path ${this.prefix}/tmp/fastcgi;
  uwsgi_temp_path ${this.prefix}/tmp/uwsgi;
  scgi_temp_path ${this.prefix}/tmp/scgi;
  ${this.tuned ? "sendfile off;\n  output_buffers 2 1m;" : "sendfile on;\n  tcp_nopush on;"}
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:${this.port};
    location ~ "^/v2/.+/blobs/sha256:(([0-9a-f]{2})[0-9a-f]{62})$" {
      default_type application/octet-stream;
      alias ${this.blobRoot}/$2/$1/data;
    }
    location ~ "^/v2/(.+)/manifests/([A-Za-z0-9_][A-Za-z0-9._-]*)$" {
      default_type application/vnd.oci.image.manifest.v1+json;
      alias ${this.manifestRoot}/$1/$2;
    }
    location = /v2/ { default_type application/json; return 200 "{}"; }
  }
}
`,
    );
    const since = performance.now();
    this.process = BenchProcess.start("nginx", "/usr/sbin/nginx", ["-p", this.prefix, "-c", conf], {
      cwd: this.prefix,
      env: { PATH: CLEAN_PATH },
      logPath: join(this.prefix, "logs", "stdout.log"),
    });
    return waitReady(`${this.url}/v2/`, this.process, since);
  }

  async stop(): Promise<void> {
    await this.process?.stop();
  }
}
