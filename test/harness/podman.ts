// podman and skopeo (Debian's 4.3 and 1.9, both on containers/image) as real registry clients, with
// configuration of their own: nothing is read from or written to the machine's containers setup.
//
// What they need on these machines (found by running them here):
//   - containers.conf: runc (crun fails on these cgroups), cgroupfs, a file events logger, no network
//     namespace setup (netns none), nofile/nproc limits below the hard limit;
//   - storage.conf: vfs under a private graph root and run root (no overlay mounts to leak);
//   - registries.conf: the `[[registry]]` mirror rules the test is about;
//   - policy.json (insecureAcceptAnything) at $HOME/.config/containers/, which containers/image prefers to
//     /etc/containers/policy.json, with HOME private to the instance.
// Every command runs in a loopback-only mount namespace (loopback-namespace.ts), because containers/image
// falls back to a registry's own location when its mirrors fail. The namespace also hides the machine-wide
// /var/lib/containers (blob-info cache) and /run/containers behind private directories.
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { prepareLoopbackNamespace, unmountUnder } from "./loopback-namespace.ts";
import { runCommand, type CommandResult } from "./processes.ts";

/** One `[[registry]]` of registries.conf: the name clients use, its own location, and mirrors tried first. */
export interface RegistryRule {
  /** What image names start with, e.g. "docker.io" or "ghcr.io". */
  prefix: string;
  /** The registry itself, used after every mirror failed, e.g. "registry-1.docker.io". */
  location: string;
  /**
   * Mirror locations, tried in order, all plain HTTP (`insecure = true`): a bare host:port, or one with a
   * path (`127.0.0.1:5000/ghcr.io`), which containers/image turns into a path prefix (/v2/ghcr.io/<repo>/...).
   */
  mirrors: string[];
}

export interface ContainersToolsOptions {
  registries: RegistryRule[];
}

export interface ContainersTools {
  readonly name: string;
  /** The private temp dir holding config, storage and HOME (deleted by stop()). */
  readonly dir: string;
  readonly registriesConf: string;
  /** Runs podman with the private configuration, in a loopback-only namespace (default timeout 120 s). */
  podman(args: string[], opts?: { timeoutMs?: number }): Promise<CommandResult>;
  /** Runs skopeo with the same registries.conf (passed as --registries-conf) and policy. */
  skopeo(args: string[], opts?: { timeoutMs?: number }): Promise<CommandResult>;
  /** Removes any container left behind (a failed test), then deletes all files. Idempotent. */
  stop(): Promise<void>;
}

const SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_CLI_TIMEOUT_MS = 120_000;

export async function prepareContainersTools(opts: ContainersToolsOptions): Promise<ContainersTools> {
  const dir = await mkdtemp("/tmp/hp-");
  const home = join(dir, "home");
  const paths = {
    containersConf: join(dir, "containers.conf"),
    storageConf: join(dir, "storage.conf"),
    registriesConf: join(dir, "registries.conf"),
    policy: join(home, ".config", "containers", "policy.json"),
    tmp: join(dir, "tmp"),
    graphRoot: join(dir, "storage"),
    runRoot: join(dir, "run"),
    varLib: join(dir, "var-lib-containers"),
    runContainers: join(dir, "run-containers"),
  };
  for (const d of [
    join(home, ".config", "containers"),
    paths.tmp,
    paths.graphRoot,
    paths.runRoot,
    paths.varLib,
    paths.runContainers,
  ]) {
    await mkdir(d, { recursive: true });
  }
  await writeFile(paths.containersConf, containersConf(dir, paths.tmp));
  await writeFile(paths.storageConf, storageConf(paths.graphRoot, paths.runRoot));
  await writeFile(paths.registriesConf, registriesConf(opts.registries));
  await writeFile(paths.policy, `${JSON.stringify({ default: [{ type: "insecureAcceptAnything" }] }, null, 2)}\n`);
  const namespace = await prepareLoopbackNamespace(dir, {
    binds: [
      { source: paths.varLib, target: "/var/lib/containers" },
      { source: paths.runContainers, target: "/run/containers" },
    ],
  });

  // A clean environment: no proxies, no credentials from the machine's HOME, no XDG_RUNTIME_DIR auth file.
  const env: Record<string, string> = {
    PATH: SYSTEM_PATH,
    HOME: home,
    TMPDIR: paths.tmp,
    CONTAINERS_CONF: paths.containersConf,
    CONTAINERS_STORAGE_CONF: paths.storageConf,
    CONTAINERS_REGISTRIES_CONF: paths.registriesConf,
  };
  const run = (cmd: string, args: string[], timeoutMs: number): Promise<CommandResult> => {
    const call = namespace.command(cmd, args);
    return runCommand(call.cmd, call.args, { env, cwd: dir, timeoutMs });
  };
  const name = `podman/skopeo ${dir}`;
  let stopping: Promise<void> | undefined;
  return {
    name,
    dir,
    registriesConf: paths.registriesConf,
    podman: (args, o = {}) => run("podman", args, o.timeoutMs ?? DEFAULT_CLI_TIMEOUT_MS),
    skopeo: (args, o = {}) =>
      run("skopeo", ["--registries-conf", paths.registriesConf, ...args], o.timeoutMs ?? DEFAULT_CLI_TIMEOUT_MS),
    stop() {
      stopping ??= (async () => {
        // Containers started with --rm are gone already; one left by a failed test still has a conmon.
        await run("podman", ["rm", "--all", "--force", "--time", "0"], 60_000).catch(() => undefined);
        await unmountUnder(dir);
        await rm(dir, { recursive: true, force: true });
      })();
      return stopping;
    },
  };
}

function containersConf(dir: string, tmp: string): string {
  return [
    "[containers]",
    'netns = "none"',
    'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]',
    "",
    "[engine]",
    'runtime = "runc"',
    'cgroup_manager = "cgroupfs"',
    'events_logger = "file"',
    `events_logfile_path = ${JSON.stringify(join(dir, "events.log"))}`,
    `tmp_dir = ${JSON.stringify(tmp)}`,
    // static_dir (libpod's database) and volume_path stay at their defaults under the private graph root: a
    // static_dir elsewhere is not passed to the `container cleanup` that conmon runs when a container exits,
    // which then cannot find it, and every `podman run --rm` waits 20 s for a cleanup that never comes.
    "",
    "[network]",
    `network_config_dir = ${JSON.stringify(join(dir, "networks"))}`,
    "",
  ].join("\n");
}

function storageConf(graphRoot: string, runRoot: string): string {
  return [
    "[storage]",
    'driver = "vfs"',
    `graphroot = ${JSON.stringify(graphRoot)}`,
    `runroot = ${JSON.stringify(runRoot)}`,
    "",
  ].join("\n");
}

/** registries.conf v2; no search registries, so a short name can never be sent anywhere by guesswork. */
export function registriesConf(rules: RegistryRule[]): string {
  const lines = ["unqualified-search-registries = []", ""];
  for (const rule of rules) {
    lines.push(
      "[[registry]]",
      `prefix = ${JSON.stringify(rule.prefix)}`,
      `location = ${JSON.stringify(rule.location)}`,
    );
    for (const mirror of rule.mirrors)
      lines.push("[[registry.mirror]]", `location = ${JSON.stringify(mirror)}`, "insecure = true");
    lines.push("");
  }
  return lines.join("\n");
}
