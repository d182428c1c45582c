// Where the harness runs the services the tests talk to (Redis, the upstream registry): as host processes
// (the default; Debian's redis-server and docker-registry) or, with TEST_SERVICES=containers, as
// containers started through testcontainers from the locally built images of service-images.ts.
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
import { mkdtemp, rm } from "node:fs/promises";
import { buildStorageDriver } from "./base-image.ts";
import { startDockerd, type Dockerd } from "./dockerd.ts";
import { serviceImageNames, type ServiceImage } from "./service-images.ts";
import { startProcess, type ManagedProcess, type StartProcessOptions } from "./processes.ts";

export type ServiceMode = "host" | "containers";

export function serviceMode(): ServiceMode {
  const mode = process.env.TEST_SERVICES ?? "host";
  if (mode !== "host" && mode !== "containers")
    throw new Error(`TEST_SERVICES must be "host" or "containers", not ${JSON.stringify(mode)}`);
  return mode;
}

/**
 * A private dockerd for the service containers (dockerd.ts: no bridge, no iptables, loopback-only name
 * resolution), on overlay2 where the kernel allows it (vfs copies the whole image for every container).
 */
export async function startServicesDockerd(): Promise<Dockerd> {
  const probe = await mkdtemp("/tmp/hs-probe-");
  try {
    return await startDockerd({ storageDriver: await buildStorageDriver(probe) });
  } finally {
    await rm(probe, { recursive: true, force: true });
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
  /** A container is started once this line appears in its log (testcontainers' readiness wait). */
  readyLog: RegExp;
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
  const image = (await serviceImageNames())[spec.image];
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
    container = await definition
      .withNetworkMode("host")
      .withCommand(spec.args)
      .withBindMounts([...new Set(spec.paths)].map((p) => ({ source: p, target: p, mode: "rw" as const })))
      .withWorkingDir(spec.cwd ?? "/")
      .withEnvironment(spec.env ?? {})
      .withLogConsumer((stream: Readable) => {
        stream.on("data", onData);
        stream.on("end", () => {
          if (partial !== "") spec.onLine?.(partial);
          partial = "";
        });
      })
      .withWaitStrategy(Wait.forLogMessage(spec.readyLog))
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
