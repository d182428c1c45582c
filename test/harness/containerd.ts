// A private containerd (Debian's 1.6) and its `ctr` CLI as a real registry client for end-to-end tests.
//
// Each instance has its own root, state, gRPC socket and plugin dir under one short temp dir, the CRI plugin
// and the snapshotters that cannot work here disabled, so it coexists with anything else on the machine
// (dockerd's own containerd included). The daemon and every `ctr` call run in a loopback-only mount namespace
// (loopback-namespace.ts): `ctr image pull --hosts-dir` falls back to the registry's `server` when the mirror
// fails, and that fallback must not leave loopback. `ctr image pull` resolves and fetches in the ctr process
// itself, so it is the ctr calls that matter most; the daemon is wrapped too, for its shims.
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { prepareLoopbackNamespace, unmountUnder } from "./loopback-namespace.ts";
import { runCommand, startProcess, stopPid, waitFor, type CommandResult, type ManagedProcess } from "./processes.ts";

/**
 * `native` copies each layer into a plain directory: nothing is mounted, so nothing can outlive a test.
 * `overlayfs` also works on this machine's ext4 root.
 */
export type Snapshotter = "native" | "overlayfs";

export interface ContainerdOptions {
  snapshotter?: Snapshotter;
}

export interface Containerd {
  readonly name: string;
  readonly socket: string;
  readonly pid: number;
  /** The private temp dir holding everything (deleted by stop()). */
  readonly dir: string;
  readonly snapshotter: Snapshotter;
  /** Runs `ctr -a SOCKET args...` in a loopback-only namespace (default timeout 120 s; a timeout rejects). */
  ctr(args: string[], opts?: { timeoutMs?: number }): Promise<CommandResult>;
  /** Recent containerd output (its log), for error messages. */
  output(): string;
  /** Stops containerd and any shim it left running, then deletes all its files. Idempotent. */
  stop(): Promise<void>;
}

const SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const STARTUP_TIMEOUT_MS = 30_000;
const DEFAULT_CLI_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 10_000;

/** Plugins that would fail or reach outside the temp dir here: CRI (wants CNI), and unusable snapshotters. */
const DISABLED_PLUGINS = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
];

export async function startContainerd(opts: ContainerdOptions = {}): Promise<Containerd> {
  const snapshotter = opts.snapshotter ?? "native";
  // /tmp directly and a short prefix: unix socket paths are limited to ~107 bytes.
  const dir = await mkdtemp("/tmp/hc-");
  const socket = join(dir, "c.sock");
  const configPath = join(dir, "config.toml");
  await mkdir(join(dir, "opt"));
  await mkdir(join(dir, "run"));
  await writeFile(configPath, containerdConfig(dir, socket));
  // /run/containerd is machine-wide: shim sockets, runc's state (container IDs would collide with another
  // instance's), and the FIFOs ctr creates for a container's stdio, which the shim must find by path. A
  // private directory over it, the same one for containerd and every ctr call, keeps all of that ours.
  const namespace = await prepareLoopbackNamespace(dir, {
    binds: [{ source: join(dir, "run"), target: "/run/containerd" }],
  });

  const name = `containerd ${dir}`;
  const launch = namespace.command("containerd", ["--config", configPath]);
  // A clean environment: an inherited HTTP(S)_PROXY would send registry traffic somewhere else.
  const env = { PATH: SYSTEM_PATH, HOME: dir };
  const proc: ManagedProcess = startProcess(launch.cmd, launch.args, {
    name,
    env,
    cwd: dir,
    stopTimeoutMs: STOP_TIMEOUT_MS,
  });

  const ctrEnv = { ...env, CONTAINERD_SNAPSHOTTER: snapshotter };
  const ctr = (args: string[], o: { timeoutMs?: number } = {}): Promise<CommandResult> => {
    const call = namespace.command("ctr", ["--address", socket, ...args]);
    return runCommand(call.cmd, call.args, { env: ctrEnv, cwd: dir, timeoutMs: o.timeoutMs ?? DEFAULT_CLI_TIMEOUT_MS });
  };

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      // Containers outlive their shim as well as containerd: kill any a failed test left running while
      // containerd can still name them (`ctr run --rm` leaves none behind).
      if (proc.running()) await killTasks(ctr).catch(() => undefined);
      await proc.stop();
      // Shims outlive containerd by design (containers keep running across daemon restarts); stop the
      // ones ours started, found by the socket address they were given.
      for (const pid of await shimPidsOf(socket)) await stopPid(pid, `containerd shim ${pid} of ${name}`);
      await unmountUnder(dir);
      await rm(dir, { recursive: true, force: true });
    })();
    return stopping;
  };

  try {
    await waitFor(async () => (await ctr(["version"], { timeoutMs: 10_000 })).code === 0, {
      timeoutMs: STARTUP_TIMEOUT_MS,
      what: `${name} to answer "ctr version"`,
      intervalMs: 200,
      whileRunning: proc,
    });
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }

  return { name, socket, pid: proc.pid, dir, snapshotter, ctr, output: () => proc.output(), stop };
}

/**
 * `DIR/<registry>/hosts.toml` for `ctr image pull --hosts-dir DIR`: the registry's own `server` (where
 * containerd falls back to) and each mirror as a host with pull and resolve. containerd then sends every
 * request to the mirror with `?ns=<registry>`.
 */
export async function writeHostsToml(
  hostsDir: string,
  registry: string,
  opts: { server: string; mirrors: string[] },
): Promise<void> {
  const lines = [`server = ${JSON.stringify(opts.server)}`, ""];
  for (const mirror of opts.mirrors) {
    lines.push(`[host.${JSON.stringify(mirror)}]`, `  capabilities = ["pull", "resolve"]`, "");
  }
  await mkdir(join(hostsDir, registry), { recursive: true });
  await writeFile(join(hostsDir, registry, "hosts.toml"), lines.join("\n"));
}

/** Version 2 config with everything private to `dir`; no debug or metrics listeners. */
function containerdConfig(dir: string, socket: string): string {
  return [
    "version = 2",
    `root = ${JSON.stringify(join(dir, "root"))}`,
    `state = ${JSON.stringify(join(dir, "state"))}`,
    `disabled_plugins = ${JSON.stringify(DISABLED_PLUGINS)}`,
    "",
    "[grpc]",
    `  address = ${JSON.stringify(socket)}`,
    "[ttrpc]",
    `  address = ${JSON.stringify(`${socket}.ttrpc`)}`,
    "[debug]",
    '  address = ""',
    "[metrics]",
    '  address = ""',
    "",
    // Default /opt/containerd is machine-wide.
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${JSON.stringify(join(dir, "opt"))}`,
    "",
  ].join("\n");
}

/** SIGKILLs every task (running container) and deletes it; bounded by the CLI timeouts. */
async function killTasks(
  ctr: (args: string[], opts?: { timeoutMs?: number }) => Promise<CommandResult>,
): Promise<void> {
  const listing = await ctr(["task", "ls", "--quiet"], { timeoutMs: 10_000 });
  for (const id of listing.stdout.split("\n").filter((l) => l.trim() !== "")) {
    await ctr(["task", "kill", "--signal", "SIGKILL", id], { timeoutMs: 10_000 });
    await ctr(["task", "delete", "--force", id], { timeoutMs: 10_000 });
  }
}

/** PIDs of containerd-shim processes started for the containerd listening on `socket`. */
async function shimPidsOf(socket: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let cmdline: string[];
    try {
      cmdline = (await readFile(`/proc/${entry}/cmdline`, "utf8")).split("\0");
    } catch {
      continue; // gone meanwhile
    }
    const address = cmdline.indexOf("-address");
    if ((cmdline[0] ?? "").includes("containerd-shim") && address !== -1 && cmdline[address + 1] === socket)
      pids.push(Number(entry));
  }
  return pids;
}
