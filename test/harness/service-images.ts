// Images for the services the tests run in containers (TEST_SERVICES=containers, see services.ts),
// built locally because these machines cannot pull from Docker Hub:
//
//   - one Debian bookworm root filesystem from `debootstrap --variant=minbase --include=redis-server,
//     docker-registry`, from the Debian mirror apt already uses here: the same packages (Redis 7, CNCF
//     distribution 2.8) the host-process mode runs, so both modes test against the same servers;
//   - trimmed as debian:bookworm-slim is (no docs, man pages, locales, apt lists);
//   - `docker import`ed twice, with the entrypoint of each service: SERVICE_IMAGES.redis runs redis-server,
//     SERVICE_IMAGES.registry runs `docker-registry`. They share the one layer.
//
// The rootfs tarball is cached like the Dockerfile test's base image (base-image.ts: /var/cache/
// registry-mirror-test, or $REGISTRY_MIRROR_TEST_CACHE) under a name keyed by its recipe, and the images are
// tagged with that key: a Docker engine that already has them (a persistent one, or the run's own after the
// first import) skips the import.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { cacheDir, debianMirror } from "./base-image.ts";
import { runCommand, type CommandResult } from "./processes.ts";

const SUITE = "bookworm";
const PACKAGES = ["redis-server", "docker-registry"];
/** Bump when the recipe changes in a way the other key fields do not capture. */
const RECIPE_VERSION = 1;
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

export type ServiceImage = "redis" | "registry";

/** The recipe's cache key: the images' tag. */
async function recipe(): Promise<{ recipe: Record<string, unknown>; key: string }> {
  const r = {
    recipeVersion: RECIPE_VERSION,
    suite: SUITE,
    variant: "minbase",
    packages: PACKAGES,
    mirror: await debianMirror(),
    slimRemove: SLIM_REMOVE,
  };
  return { recipe: r, key: createHash("sha256").update(JSON.stringify(r)).digest("hex").slice(0, 16) };
}

/** The image names for this recipe, e.g. registry-mirror-test/redis:0123456789abcdef. */
export async function serviceImageNames(): Promise<Record<ServiceImage, string>> {
  const { key } = await recipe();
  return { redis: `registry-mirror-test/redis:${key}`, registry: `registry-mirror-test/registry:${key}` };
}

export interface ServiceImagesResult {
  images: Record<ServiceImage, string>;
  /** What this call did, with how long it took: for the log of a first run. */
  steps: Array<{ step: "debootstrap" | "import" | "cached"; ms: number }>;
}

/**
 * Makes sure the Docker engine `docker` talks to has both images, building the rootfs first when the cache
 * has none for this recipe (about a minute here) and importing it when the engine lacks the tags.
 */
export async function ensureServiceImages(
  docker: (args: string[], timeoutMs: number) => Promise<CommandResult>,
  log: (line: string) => void = () => undefined,
): Promise<ServiceImagesResult> {
  const { recipe: r, key } = await recipe();
  const images = await serviceImageNames();
  const steps: ServiceImagesResult["steps"] = [];
  const present = async (image: string): Promise<boolean> =>
    (await docker(["image", "inspect", image], 30_000)).code === 0;
  if ((await present(images.redis)) && (await present(images.registry)))
    return { images, steps: [{ step: "cached", ms: 0 }] };

  const dir = join(cacheDir(), "service-images");
  const tarball = join(dir, `services-${SUITE}-${key}.tar`);
  if (!existsSync(tarball)) {
    const started = Date.now();
    log(
      `debootstrap --variant=minbase --include=${PACKAGES.join(",")} ${SUITE} (first run on this machine; cached afterwards)`,
    );
    await buildRootfs(dir, tarball, r);
    steps.push({ step: "debootstrap", ms: Date.now() - started });
  }
  const started = Date.now();
  const entrypoints: Record<ServiceImage, string> = { redis: '["redis-server"]', registry: '["docker-registry"]' };
  for (const [service, image] of Object.entries(images) as Array<[ServiceImage, string]>) {
    if (await present(image)) continue;
    const changes = [`ENV PATH=${SYSTEM_PATH}`, `ENTRYPOINT ${entrypoints[service]}`];
    const result = await docker(["import", ...changes.flatMap((c) => ["--change", c]), tarball, image], 5 * 60_000);
    if (result.code !== 0) throw new Error(`docker import ${image} failed (${result.code}): ${result.stderr}`);
  }
  steps.push({ step: "import", ms: Date.now() - started });
  return { images, steps };
}

async function buildRootfs(dir: string, tarball: string, r: Record<string, unknown>): Promise<void> {
  await mkdir(dir, { recursive: true });
  // Work next to the final path, so the closing rename is atomic and a half-built rootfs is never found.
  const work = await mkdtemp(join(dir, "build-"));
  try {
    const rootfs = join(work, "rootfs");
    await mustRun(
      "debootstrap",
      ["--variant=minbase", `--include=${PACKAGES.join(",")}`, SUITE, rootfs, String(r.mirror)],
      DEBOOTSTRAP_TIMEOUT_MS,
    );
    for (const path of SLIM_REMOVE) {
      await rm(join(rootfs, path), { recursive: true, force: true });
      await mkdir(join(rootfs, path), { recursive: true });
    }
    await writeFile(join(rootfs, "etc/machine-id"), "");
    // Prove the servers run on this rootfs before caching it.
    for (const [cmd, args, expect] of [
      ["/usr/bin/redis-server", ["--version"], /Redis server v=7\./],
      ["/usr/bin/docker-registry", ["--version"], /distribution 2\./],
    ] as const) {
      const check = await mustRun("chroot", [rootfs, cmd, ...args], 60_000);
      if (!expect.test(check.stdout + check.stderr))
        throw new Error(`${cmd} ${args.join(" ")} in the service rootfs printed ${check.stdout}${check.stderr}`);
    }
    const partial = join(work, "rootfs.tar");
    await mustRun("tar", ["--numeric-owner", "-C", rootfs, "-cf", partial, "."], 10 * 60_000);
    await rename(partial, tarball);
    await writeFile(`${tarball}.json`, `${JSON.stringify(r, null, 2)}\n`);
    // Older recipes' tarballs are dead weight.
    for (const entry of await readdir(dir)) {
      if (entry.startsWith("services-") && entry.endsWith(".tar") && join(dir, entry) !== tarball) {
        await rm(join(dir, entry), { force: true });
        await rm(join(dir, `${entry}.json`), { force: true });
      }
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
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
