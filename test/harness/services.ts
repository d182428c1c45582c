// Where the harness runs the services the tests talk to (Redis, the upstream registry, the S3 server's Ceph
// daemons and tools): as host processes (the default; Debian's redis-server, docker-registry and Ceph packages)
// or, with TEST_SERVICES=containers, as containers started through testcontainers from the images of
// service-images.ts (built locally, or the pinned official ones with TEST_IMAGES=official).
// (Not MIRROR_TEST_SERVICES: the mirror reads every MIRROR_* variable as configuration and refuses unknown
// ones, which would break every CLI run the tests make with the inherited environment.)
//
// Containers use the host's network (`--network host`: the private dockerd of the tests runs with
// --bridge=none, and the services must listen on 127.0.0.1 as the host processes do), so ports, URLs and
// readiness checks are the same in both modes. Files the service reads or writes (its config, storage, the
// token server's certificate) are bind-mounted at the same paths. The Docker engine is whatever DOCKER_HOST
// names; `vitest` starts a private dockerd for the run when none is named (test/global-setup.ts).
import { Readable } from "node:stream";
import { GenericContainer, getContainerRuntimeClient, Wait, type StartedTestContainer } from "testcontainers";
import { readFileSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { buildStorageDriver, cacheDir } from "./base-image.ts";
import { unmountUnder } from "./loopback-namespace.ts";
import { startDockerd, type Dockerd } from "./dockerd.ts";
import { imageCommand, serviceImageRef, type ServiceImage } from "./service-images.ts";
import {
  runCommand,
  startProcess,
  stopPid,
  type CommandResult,
  type ManagedProcess,
  type StartProcessOptions,
} from "./processes.ts";

export type ServiceMode = "host" | "containers";

export function serviceMode(): ServiceMode {
  const mode = process.env.TEST_SERVICES ?? "host";
  if (mode !== "host" && mode !== "containers")
    throw new Error(`TEST_SERVICES must be "host" or "containers", not ${JSON.stringify(mode)}`);
  return mode;
}

/**
 * A private dockerd for the service containers (dockerd.ts: no bridge, no iptables, loopback-only name
 * resolution unless `hostDns`, which pulling official images needs), on overlay2 where the kernel allows it (vfs
 * copies the whole image for every container).
 */
export async function startServicesDockerd(opts: { hostDns?: boolean } = {}): Promise<Dockerd> {
  const probe = await mkdtemp("/tmp/hs-probe-");
  try {
    return await startDockerd({ storageDriver: await buildStorageDriver(probe), hostDns: opts.hostDns });
  } finally {
    await rm(probe, { recursive: true, force: true });
  }
}

/**
 * A run's private dockerd is recorded in a file of the cache (its PID, its directory, and the PID and start time
 * of the run's process), so that one a run could not stop (vitest skips its global teardown on SIGINT; a run can
 * be SIGKILLed) is stopped by the next run: only when the process that started it is gone, and only when the PID
 * still runs dockerd with that directory, so neither a concurrent run's dockerd nor a reused PID is touched.
 */
function runRecordsDir(): string {
  return join(cacheDir(), "run-dockerd");
}

/** The kernel's start time of `pid` (field 22 of /proc/PID/stat), to tell a process from a later one with its PID. */
function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses: count from the last ")".
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

function commandLineHas(pid: number, text: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(text);
  } catch {
    return false;
  }
}

function readFileOr(path: string, fallback: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return fallback;
  }
}

interface RunRecord {
  ownerPid: number;
  ownerStart: string;
  dockerdPid: number;
  dir: string;
}

/** Records the run's dockerd; returns the function that forgets it once it is stopped. */
export async function recordRunDockerd(dockerd: Dockerd): Promise<() => Promise<void>> {
  const dir = runRecordsDir();
  await mkdir(dir, { recursive: true });
  const file = join(dir, `${process.pid}-${dockerd.pid}.json`);
  const record: RunRecord = {
    ownerPid: process.pid,
    ownerStart: processStartTime(process.pid) ?? "",
    dockerdPid: dockerd.pid,
    dir: dockerd.dir,
  };
  await writeFile(file, `${JSON.stringify(record)}\n`);
  return () => rm(file, { force: true });
}

/** Stops the dockerds of earlier runs whose process is gone (recordRunDockerd), and deletes their directories. */
export async function reapAbandonedDockerds(log: (line: string) => void): Promise<void> {
  const dir = runRecordsDir();
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch {
    return;
  }
  for (const entry of entries.filter((e) => e.endsWith(".json"))) {
    const file = join(dir, entry);
    let record: RunRecord;
    try {
      record = JSON.parse(await readFile(file, "utf8")) as RunRecord;
    } catch {
      await rm(file, { force: true });
      continue;
    }
    if (processStartTime(record.ownerPid) === record.ownerStart) continue; // that run is still going
    log(`stopping the dockerd an interrupted run left behind (pid ${record.dockerdPid}, ${record.dir})`);
    // dockerd stops its containers and its containerd when it shuts down; the containerd by the PID file dockerd
    // keeps under its exec root, in case dockerd itself was killed.
    const containerdPid = Number.parseInt(readFileOr(join(record.dir, "e", "containerd", "containerd.pid"), ""), 10);
    if (commandLineHas(record.dockerdPid, record.dir))
      await stopPid(record.dockerdPid, `abandoned dockerd ${record.dir}`, 30_000);
    if (Number.isInteger(containerdPid) && commandLineHas(containerdPid, record.dir))
      await stopPid(containerdPid, `abandoned containerd of ${record.dir}`);
    // Only a directory startDockerd made (mkdtemp("/tmp/hd-")).
    if (/^\/tmp\/hd-[A-Za-z0-9]+$/.test(record.dir)) {
      await unmountUnder(record.dir);
      await rm(record.dir, { recursive: true, force: true });
    }
    await rm(file, { force: true });
  }
}

/**
 * Points this process's testcontainers at `dockerd`: its socket, 127.0.0.1 as the containers' host (there is
 * no bridge network to find a gateway on), no reaper (Ryuk's image cannot be pulled here; the harness stops
 * every container it starts).
 */
export function useDockerd(dockerd: Dockerd): void {
  Object.assign(process.env, {
    DOCKER_HOST: dockerd.env.DOCKER_HOST,
    DOCKER_CONFIG: dockerd.env.DOCKER_CONFIG,
    TESTCONTAINERS_HOST_OVERRIDE: "127.0.0.1",
    TESTCONTAINERS_RYUK_DISABLED: "true",
  });
}

/** A service's process: a host process or a container; signal() reaches its main process either way. */
export interface ServiceProcess extends ManagedProcess {
  /** SIGKILL (a crash), SIGSTOP / SIGCONT (a hung server). Resolves once the signal was sent. */
  signal(signal: "SIGKILL" | "SIGSTOP" | "SIGCONT"): Promise<void>;
}

export interface ServiceSpec extends StartProcessOptions {
  image: ServiceImage;
  /** The command, as on the host (its first word is the image's entrypoint). */
  cmd: string;
  args: string[];
  /** Host paths the service needs (mounted read-write at the same path in a container). */
  paths: string[];
  /**
   * A container is started once this line appears in its log (testcontainers' readiness wait). Without it, once
   * the container runs: the caller then waits for the service itself (the Ceph daemons log to files).
   */
  readyLog?: RegExp;
  /**
   * Run the container with Docker's init as PID 1, for a server that installs no SIGTERM handler (as PID 1 it
   * would ignore `docker stop`'s SIGTERM and be killed only after the timeout). Not for one that is sent
   * SIGSTOP: that would stop the init, not the server.
   */
  init?: boolean;
}

/** GenericContainer with `docker run --init`, which testcontainers has no method for. */
class ServiceContainer extends GenericContainer {
  withInit(): this {
    this.hostConfig.Init = true;
    return this;
  }
}

const CONTAINER_STARTUP_TIMEOUT_MS = 60_000;
const OUTPUT_TAIL_CHARS = 64 * 1024;

export async function startService(spec: ServiceSpec): Promise<ServiceProcess> {
  if (serviceMode() === "host") {
    const proc = startProcess(spec.cmd, spec.args, spec);
    return {
      ...proc,
      async signal(signal) {
        // Our own child, still running: its PID cannot have been reused.
        if (proc.running()) process.kill(proc.pid, signal);
      },
    };
  }
  return startContainer(spec);
}

async function startContainer(spec: ServiceSpec): Promise<ServiceProcess> {
  const image = await serviceImageRef(spec.image);
  let tail = "";
  let partial = "";
  const onData = (chunk: Buffer | string): void => {
    const text = chunk.toString();
    tail = (tail + text).slice(-OUTPUT_TAIL_CHARS);
    const lines = (partial + text).split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) spec.onLine?.(line.replace(/\r$/, ""));
  };
  let container: StartedTestContainer;
  try {
    const definition = new ServiceContainer(image);
    if (spec.init === true) definition.withInit();
    if (spec.readyLog !== undefined) definition.withWaitStrategy(Wait.forLogMessage(spec.readyLog));
    container = await definition
      .withEntrypoint([imageCommand(spec.image, spec.cmd)])
      .withNetworkMode("host")
      .withCommand(spec.args)
      .withBindMounts([...new Set(spec.paths)].map((p) => ({ source: p, target: p, mode: "rw" as const })))
      .withWorkingDir(spec.cwd ?? "/")
      .withEnvironment(containerEnv(spec.env ?? {}))
      .withLogConsumer((stream: Readable) => {
        stream.on("data", onData);
        stream.on("end", () => {
          if (partial !== "") spec.onLine?.(partial);
          partial = "";
        });
      })
      .withStartupTimeout(CONTAINER_STARTUP_TIMEOUT_MS)
      .start();
  } catch (err) {
    throw new Error(`${spec.name}: the ${image} container did not start: ${String(err)}\n--- its output ---\n${tail}`, {
      cause: err,
    });
  }
  const client = await getContainerRuntimeClient();
  const handle = client.container.getById(container.getId());
  const pid = (await handle.inspect()).State.Pid;
  let hasExited = false;
  const exited = handle.wait().then(
    (r: { StatusCode: number }) => {
      hasExited = true;
      return r.StatusCode;
    },
    () => {
      hasExited = true;
      return null;
    },
  );
  let stopping: Promise<void> | undefined;
  return {
    name: `${spec.name} (container ${container.getId().slice(0, 12)})`,
    pid,
    output: () => tail,
    exited,
    running: () => !hasExited,
    stop() {
      // docker stop: SIGTERM, then SIGKILL after the timeout; then the container is removed.
      stopping ??= container.stop({ timeout: spec.stopTimeoutMs ?? 10_000, remove: true }).then(() => {
        hasExited = true;
      });
      return stopping;
    },
    async signal(signal) {
      if (hasExited) return;
      await handle.kill({ signal });
      if (signal === "SIGKILL") await exited;
    },
  };
}

/** Short-lived commands of a service's image (a cluster's admin tools): run on the host or in the image. */
export interface ServiceTools {
  /** Runs `cmd args` to completion; a timeout rejects, as runCommand's does. */
  run(cmd: string, args: string[], timeoutMs: number): Promise<CommandResult>;
  /** Removes the tools' container (host mode: nothing to do). Idempotent. */
  stop(): Promise<void>;
}

export interface ServiceToolsSpec {
  image: ServiceImage;
  name: string;
  /** The commands' complete environment on the host; in a container, added to the image's. */
  env: Record<string, string>;
  /** Host paths the commands read or write (mounted read-write at the same path in a container). */
  paths: string[];
}

/**
 * Host mode: each command is a host process. Containers: one idle container of the image (host network, the
 * paths mounted, `docker run --init` so that `docker stop` ends it at once) in which each command is a
 * `docker exec`: a fraction of a second each instead of a container per command.
 */
export async function startServiceTools(spec: ServiceToolsSpec): Promise<ServiceTools> {
  if (serviceMode() === "host") {
    return {
      run: (cmd, args, timeoutMs) => runCommand(cmd, args, { env: spec.env, timeoutMs }),
      stop: async () => undefined,
    };
  }
  const image = await serviceImageRef(spec.image);
  let container: StartedTestContainer;
  try {
    container = await new ServiceContainer(image)
      .withInit()
      .withEntrypoint(["sleep"])
      .withCommand(["infinity"])
      .withNetworkMode("host")
      .withBindMounts([...new Set(spec.paths)].map((p) => ({ source: p, target: p, mode: "rw" as const })))
      .withEnvironment(containerEnv(spec.env))
      .withStartupTimeout(CONTAINER_STARTUP_TIMEOUT_MS)
      .start();
  } catch (err) {
    throw new Error(`${spec.name}: the ${image} tools container did not start: ${String(err)}`, { cause: err });
  }
  let stopping: Promise<void> | undefined;
  return {
    async run(cmd, args, timeoutMs) {
      const line = `${cmd} ${args.join(" ")}`;
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${line} (in ${spec.name}'s container) timed out after ${timeoutMs} ms`)),
          timeoutMs,
        );
      });
      try {
        const result = await Promise.race([container.exec([imageCommand(spec.image, cmd), ...args]), timeout]);
        return { code: result.exitCode, stdout: result.stdout, stderr: result.stderr };
      } finally {
        clearTimeout(timer);
      }
    },
    stop() {
      stopping ??= container.stop({ timeout: 5_000, remove: true }).then(() => undefined);
      return stopping;
    },
  };
}

/**
 * What of a host-mode environment a container needs: the variables the caller set, not the host's PATH, HOME
 * and the like (the image has its own).
 */
function containerEnv(env: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(env)) if (process.env[key] !== value) out[key] = value;
  return out;
}
