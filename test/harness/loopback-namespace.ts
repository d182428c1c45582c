// A private mount namespace whose name resolution cannot leave loopback, for real registry clients.
//
// dockerd, containerd, podman and skopeo all fall back to the real registry (registry-1.docker.io, ghcr.io)
// when a mirror fails, silently for some of them. A test must never turn that fallback into traffic off this
// machine, so every client the harness runs is started through `unshare --mount --propagation private`, and
// inside that namespace:
//   - /etc/resolv.conf names only 127.0.0.1 (nothing listens on port 53 there: lookups fail at once);
//   - /etc/hosts maps the well-known registry hosts to 127.0.0.1, so even a client that resolves through
//     /etc/hosts alone connects to loopback (where nothing listens on 443) and fails at once;
//   - optional private directories are bind-mounted over machine-wide state directories (podman's
//     /var/lib/containers cache, /run/containers), so tests neither read nor write the host's.
// The bind mounts exist only inside the namespace; the host's files are never touched. `unshare` without
// --fork execs, and so does the entry script, so the PID a caller spawns IS the client's PID.
import { readFile, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { runCommand } from "./processes.ts";

/** Registry hosts a client may fall back to: all of them resolve to 127.0.0.1 inside the namespace. */
export const REGISTRY_HOSTNAMES: readonly string[] = [
  "docker.io",
  "index.docker.io",
  "registry-1.docker.io",
  "auth.docker.io",
  "registry.docker.io",
  "production.cloudflare.docker.com",
  "ghcr.io",
  "pkg-containers.githubusercontent.com",
  "quay.io",
  "registry.k8s.io",
  "gcr.io",
];

export interface BindMount {
  /** A directory of ours (must exist). */
  source: string;
  /** The path it hides inside the namespace; created (empty, on the host) when missing. */
  target: string;
}

export interface LoopbackNamespace {
  /** `unshare` plus the arguments that run `cmd args` inside a fresh namespace of this kind. */
  command(cmd: string, args: string[]): { cmd: string; args: string[] };
  /** The resolv.conf and hosts files the namespace shows (for self-tests and error messages). */
  readonly resolvConf: string;
  readonly hosts: string;
}

/**
 * Writes resolv.conf, hosts and an entry script into `dir` (the caller's temp dir, deleted by the caller).
 * Each command() call starts its own namespace: the client and everything it spawns share it, and it
 * vanishes with them.
 */
export async function prepareLoopbackNamespace(
  dir: string,
  opts: { binds?: BindMount[] } = {},
): Promise<LoopbackNamespace> {
  const resolvConf = join(dir, "resolv.conf");
  const hosts = join(dir, "hosts");
  const script = join(dir, "enter-namespace.sh");
  await writeFile(resolvConf, "nameserver 127.0.0.1\n");
  await writeFile(hosts, `127.0.0.1 localhost ${hostname()}\n127.0.0.1 ${REGISTRY_HOSTNAMES.join(" ")}\n`);
  const binds = opts.binds ?? [];
  await writeFile(
    script,
    [
      "set -e",
      `mount --bind ${shellQuote(resolvConf)} /etc/resolv.conf`,
      `mount --bind ${shellQuote(hosts)} /etc/hosts`,
      ...binds.flatMap((b) => [
        `mkdir -p ${shellQuote(b.target)}`,
        `mount --bind ${shellQuote(b.source)} ${shellQuote(b.target)}`,
      ]),
      'exec "$@"',
      "",
    ].join("\n"),
  );
  return {
    resolvConf,
    hosts,
    command: (cmd, args) => ({
      cmd: "unshare",
      args: ["--mount", "--propagation", "private", "sh", script, cmd, ...args],
    }),
  };
}

/**
 * Unmounts anything mounted under `dir` in our own namespace, deepest first, before it is deleted. Clients'
 * mounts live in their private namespaces and vanish with them, so normally there is nothing here; this
 * guards against one started some other way, since rm -rf through a live bind mount deletes the mounted files.
 */
export async function unmountUnder(dir: string): Promise<void> {
  const mountInfo = await readFile("/proc/self/mountinfo", "utf8");
  const mountPoints = mountInfo
    .split("\n")
    .map((line) => line.split(" ")[4])
    // mountinfo escapes spaces etc. as octal; our paths have none, but decode to be exact.
    .map((mp) => mp?.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8))))
    .filter((mp): mp is string => mp !== undefined && (mp === dir || mp.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
  for (const mp of mountPoints) {
    await runCommand("umount", ["--lazy", mp], { timeoutMs: 10_000 });
  }
}

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}
