// A private dockerd (Debian's docker.io, 20.10) as a real registry client for end-to-end tests.
//
// Each instance gets its own data root, exec root, socket and CLI config under one short temp dir, no
// bridge network and no iptables changes, so it coexists with anything else on the machine. It runs in a
// private mount namespace whose /etc/resolv.conf names only 127.0.0.1 and whose /etc/hosts maps the registry
// hosts to 127.0.0.1 (loopback-namespace.ts): when a mirror fails, dockerd silently falls back to
// registry-1.docker.io, and that fallback must not be able to leave loopback.
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { prepareLoopbackNamespace, unmountUnder } from "./loopback-namespace.ts";
import { runCommand, startProcess, stopPid, waitFor, type CommandResult, type ManagedProcess } from "./processes.ts";

export interface DockerdOptions {
  /** A bare origin, e.g. http://127.0.0.1:PORT (dockerd rejects mirror URLs with a path). */
  registryMirror?: string;
  /** host:port entries that may be spoken to over plain HTTP (the mirror's, a test registry's). */
  insecureRegistries?: string[];
  /** More dockerd flags, appended last. */
  extraArgs?: string[];
  /**
   * Keep the machine's name resolution instead of the loopback-only namespace: only for a daemon that runs
   * `docker build` (the Dockerfile's `npm ci` fetches from the npm registry) and never pulls through a mirror.
   */
  hostDns?: boolean;
  /** Default vfs. */
  storageDriver?: "vfs" | "overlay2";
}

export interface Dockerd {
  readonly name: string;
  /** Path of the API socket. */
  readonly socket: string;
  /** Environment for a docker CLI talking to this daemon: DOCKER_HOST=unix://..., plus a private DOCKER_CONFIG. */
  readonly env: Record<string, string>;
  readonly pid: number;
  /** The private temp dir holding everything below (deleted by stop()). */
  readonly dir: string;
  readonly dataRoot: string;
  /** Runs the docker CLI against this daemon (default timeout 120 s; a timeout rejects), `env` added to its environment. */
  docker(args: string[], opts?: { timeoutMs?: number; env?: Record<string, string> }): Promise<CommandResult>;
  /** Recent dockerd output (its log), for error messages. */
  output(): string;
  /** Stops dockerd (and the containerd it started), then deletes all its files. Idempotent. */
  stop(): Promise<void>;
}

const SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const STARTUP_TIMEOUT_MS = 60_000;
const DEFAULT_CLI_TIMEOUT_MS = 120_000;
/** dockerd waits --shutdown-timeout for containers, then cleans up; give it that and some. */
const STOP_TIMEOUT_MS = 20_000;

/**
 * The CLI that matches the daemon. /usr/local/bin/docker on these machines is a newer CLI (28.x) that
 * negotiates down; Debian's own /usr/bin/docker (20.10) is the daemon's twin, so prefer it.
 */
function dockerCli(): string {
  return existsSync("/usr/bin/docker") ? "/usr/bin/docker" : "docker";
}

/**
 * dockerd (20.10) gives the containerd it starts a fixed time to come up, not configurable; on a machine busy with
 * other tests, starting containerd alone can take longer (seen in CI: its first log line 15 s after its start), and
 * dockerd then exits with this message. That failure, and only that one, is worth one more try.
 */
const CONTAINERD_START_TIMEOUT = /failed to start containerd: timeout waiting for containerd to start/;

export async function startDockerd(opts: DockerdOptions = {}): Promise<Dockerd> {
  try {
    return await startDockerdOnce(opts);
  } catch (err) {
    if (!CONTAINERD_START_TIMEOUT.test(err instanceof Error ? err.message : String(err))) throw err;
    return startDockerdOnce(opts);
  }
}

async function startDockerdOnce(opts: DockerdOptions): Promise<Dockerd> {
  // /tmp directly and a short prefix: unix socket paths are limited to ~107 bytes, and containerd puts
  // its sockets a few levels below the exec root.
  const dir = await mkdtemp("/tmp/hd-");
  const dataRoot = join(dir, "d");
  const execRoot = join(dir, "e");
  const pidFile = join(dir, "p");
  const socket = join(dir, "s");
  const cliConfig = join(dir, "cli");
  await mkdir(cliConfig);

  const dockerdArgs = [
    "--bridge=none",
    "--iptables=false",
    "--ip6tables=false",
    `--storage-driver=${opts.storageDriver ?? "vfs"}`,
    `--data-root=${dataRoot}`,
    `--exec-root=${execRoot}`,
    `--pidfile=${pidFile}`,
    `--host=unix://${socket}`,
    // Default 15 s: a test that leaves a container behind should not slow teardown that much.
    "--shutdown-timeout=5",
    ...(opts.registryMirror === undefined ? [] : [`--registry-mirror=${opts.registryMirror}`]),
    ...(opts.insecureRegistries ?? []).map((r) => `--insecure-registry=${r}`),
    ...(opts.extraArgs ?? []),
  ];
  // unshare (without --fork) and `exec` keep one PID throughout, so the PID we spawn IS dockerd's: stop()
  // signals dockerd itself. The bind mounts exist only inside the new namespace; the host's files are untouched.
  // With hostDns, a private mount namespace all the same: the mounts dockerd makes under its exec root
  // disappear with it instead of lingering in ours.
  const name = `${opts.hostDns === true ? "build dockerd" : "dockerd"} ${dir}`;
  const launch =
    opts.hostDns === true
      ? { cmd: "unshare", args: ["--mount", "--propagation", "private", "dockerd", ...dockerdArgs] }
      : (await prepareLoopbackNamespace(dir)).command("dockerd", dockerdArgs);
  // A clean environment: an inherited HTTP(S)_PROXY would send registry traffic somewhere else.
  const proc: ManagedProcess = startProcess(launch.cmd, launch.args, {
    name,
    env: { PATH: SYSTEM_PATH, HOME: dir },
    cwd: dir,
    stopTimeoutMs: STOP_TIMEOUT_MS,
  });

  const env: Record<string, string> = {
    PATH: SYSTEM_PATH,
    HOME: dir,
    DOCKER_HOST: `unix://${socket}`,
    // Private CLI config: no credentials or contexts from the machine's ~/.docker leak into tests.
    DOCKER_CONFIG: cliConfig,
  };
  const docker = (
    args: string[],
    o: { timeoutMs?: number; env?: Record<string, string> } = {},
  ): Promise<CommandResult> =>
    runCommand(dockerCli(), args, { env: { ...env, ...o.env }, timeoutMs: o.timeoutMs ?? DEFAULT_CLI_TIMEOUT_MS });

  let containerdPid: number | undefined;
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      await proc.stop();
      // dockerd stops the containerd it started when it shuts down cleanly; after a SIGKILL that
      // containerd would live on as an orphan, so stop it by the PID dockerd recorded for it.
      if (containerdPid !== undefined) await stopPid(containerdPid, `containerd of ${name}`);
      await unmountUnder(dir);
      await rm(dir, { recursive: true, force: true });
    })();
    return stopping;
  };

  try {
    await waitFor(async () => (await docker(["version"], { timeoutMs: 10_000 })).code === 0, {
      timeoutMs: STARTUP_TIMEOUT_MS,
      what: `${name} to answer "docker version"`,
      intervalMs: 250,
      whileRunning: proc,
    });
    containerdPid = await readPid(join(execRoot, "containerd", "containerd.pid"));
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }

  return {
    name,
    socket,
    env,
    pid: proc.pid,
    dir,
    dataRoot,
    docker,
    output: () => proc.output(),
    stop,
  };
}

async function readPid(path: string): Promise<number | undefined> {
  try {
    const pid = Number.parseInt((await readFile(path, "utf8")).trim(), 10);
    return Number.isInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}
