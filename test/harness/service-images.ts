// Images for the services the tests run in containers (TEST_SERVICES=containers, see services.ts), built
// locally by default (TEST_IMAGES=local) because these machines cannot pull from Docker Hub:
//
//   - Debian bookworm root filesystems from `debootstrap --variant=minbase --include=...`, from the Debian
//     mirror apt already uses here, with the same packages the host-process mode runs, so both modes test
//     against the same servers: one with redis-server and docker-registry (Redis 7, CNCF distribution 2.8),
//     one with Ceph's ceph-mon, ceph-osd, radosgw and ceph-common (Pacific 16.2: the S3 server of s3.ts). Two
//     rootfs rather than one: Ceph's packages (Python, the RADOS libraries) are ten times the other two, and
//     every Redis or registry container would carry them;
//   - trimmed as debian:bookworm-slim is (no docs, man pages, locales, apt lists);
//   - `docker import`ed once per image: the redis and registry images share the first rootfs's layer (with
//     the entrypoint of each service), the ceph image runs whichever daemon or tool the container names.
//
// Each rootfs tarball is cached like the Dockerfile test's base image (base-image.ts: /var/cache/
// registry-mirror-test, or $REGISTRY_MIRROR_TEST_CACHE) under a name keyed by its recipe, and the images are
// tagged with that key: a Docker engine that already has them (a persistent one, or the run's own after the
// first import) skips the import.
//
// TEST_IMAGES=official uses the upstream projects' images instead, pinned by digest in OFFICIAL_IMAGES below
// and pulled by the engine (which then needs to reach their registries).
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { cacheDir, debianMirror } from "./base-image.ts";
import { runCommand, type CommandResult } from "./processes.ts";

const SUITE = "bookworm";
/** Bump when a recipe changes in a way the other key fields do not capture. */
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

export type ServiceImage = "redis" | "registry" | "ceph";
export const SERVICE_IMAGES: readonly ServiceImage[] = ["redis", "registry", "ceph"];

interface Rootfs {
  /** The tarball's name prefix in the cache. */
  name: string;
  packages: string[];
  /** The images imported from it, each with its entrypoint (none: the container names its command). */
  images: Partial<Record<ServiceImage, string[] | null>>;
  /** Commands that must run in the rootfs, and what they must print, before it is cached. */
  checks: Array<{ cmd: string; args: string[]; expect: RegExp }>;
}

const ROOTFS: Rootfs[] = [
  {
    name: "services",
    packages: ["redis-server", "docker-registry"],
    images: { redis: ["redis-server"], registry: ["docker-registry"] },
    checks: [
      { cmd: "/usr/bin/redis-server", args: ["--version"], expect: /Redis server v=7\./ },
      { cmd: "/usr/bin/docker-registry", args: ["--version"], expect: /distribution 2\./ },
    ],
  },
  {
    name: "ceph",
    packages: ["ceph-mon", "ceph-osd", "radosgw", "ceph-common"],
    images: { ceph: null },
    checks: [
      { cmd: "/usr/bin/radosgw", args: ["--version"], expect: /ceph version 16\./ },
      { cmd: "/usr/bin/ceph-mon", args: ["--version"], expect: /ceph version 16\./ },
    ],
  },
];

/**
 * The upstream projects' images (TEST_IMAGES=official), each pinned by the digest of its multi-platform index,
 * and the commands whose names differ from the Debian packages'. The digests are those docker-library/repo-info
 * recorded (redis:7.4-bookworm: Redis 7.4.11; registry:2 when it was distribution 2.8.1); they could not be
 * checked against the registries from the machine they were written on. Ceph publishes no such record: its
 * digest is left to fill in (`docker buildx imagetools inspect quay.io/ceph/ceph:v16`), and until then
 * official mode refuses to start the S3 server rather than pull a moving tag.
 */
export const OFFICIAL_IMAGES: Record<
  ServiceImage,
  { ref: string; digest: string | null; commands: Record<string, string> }
> = {
  redis: {
    ref: "docker.io/library/redis:7.4-bookworm",
    digest: "sha256:91d0f7e8c748ec7a4c2b4fb2c4f84edab794dd91d01e095e38dc906db9d684ab",
    commands: {},
  },
  registry: {
    ref: "docker.io/library/registry:2",
    digest: "sha256:ce14a6258f37702ff3cd92232a6f5b81ace542d9f1631966999e9f7c1ee6ddba",
    commands: { "docker-registry": "/bin/registry" },
  },
  ceph: {
    // Pacific, as Debian bookworm's packages; the image holds every daemon and tool s3.ts runs.
    ref: "quay.io/ceph/ceph:v16",
    digest: null, // TO FILL: the index digest of quay.io/ceph/ceph:v16
    commands: {},
  },
};

export type ImageSource = "local" | "official";

export function imageSource(): ImageSource {
  const source = process.env.TEST_IMAGES ?? "local";
  if (source !== "local" && source !== "official")
    throw new Error(`TEST_IMAGES must be "local" or "official", not ${JSON.stringify(source)}`);
  return source;
}

/** The command to run in `image` for what is `cmd` on the host (official images name some differently). */
export function imageCommand(image: ServiceImage, cmd: string): string {
  return imageSource() === "official" ? (OFFICIAL_IMAGES[image].commands[cmd] ?? cmd) : cmd;
}

function officialRef(image: ServiceImage): string {
  const { ref, digest } = OFFICIAL_IMAGES[image];
  if (digest === null)
    throw new Error(
      `TEST_IMAGES=official: no digest is pinned for ${ref} yet (OFFICIAL_IMAGES in test/harness/service-images.ts)`,
    );
  return `${ref}@${digest}`;
}

/** A rootfs's recipe and its cache key: the tag of its images. */
async function recipe(rootfs: Rootfs): Promise<{ recipe: Record<string, unknown>; key: string }> {
  // The first rootfs's recipe keeps the fields it was keyed by before the Ceph one existed.
  const r = {
    recipeVersion: RECIPE_VERSION,
    suite: SUITE,
    variant: "minbase",
    packages: rootfs.packages,
    mirror: await debianMirror(),
    slimRemove: SLIM_REMOVE,
  };
  return { recipe: r, key: createHash("sha256").update(JSON.stringify(r)).digest("hex").slice(0, 16) };
}

/**
 * The image names: e.g. registry-mirror-test/redis:0123456789abcdef (local), or the pinned official references.
 * Official mode names only the images it can pin; a service without one fails when it starts.
 */
export async function serviceImageNames(): Promise<Record<ServiceImage, string>> {
  const names: Partial<Record<ServiceImage, string>> = {};
  if (imageSource() === "official") {
    for (const image of SERVICE_IMAGES) {
      const { ref, digest } = OFFICIAL_IMAGES[image];
      names[image] = digest === null ? `${ref} (no digest pinned)` : `${ref}@${digest}`;
    }
    return names as Record<ServiceImage, string>;
  }
  for (const rootfs of ROOTFS) {
    const { key } = await recipe(rootfs);
    for (const image of Object.keys(rootfs.images) as ServiceImage[])
      names[image] = `registry-mirror-test/${image}:${key}`;
  }
  return names as Record<ServiceImage, string>;
}

/** The reference to run a container of `image` from; throws in official mode for an image without a digest. */
export async function serviceImageRef(image: ServiceImage): Promise<string> {
  return imageSource() === "official" ? officialRef(image) : (await serviceImageNames())[image];
}

export interface ServiceImagesResult {
  images: Record<ServiceImage, string>;
  /** What this call did, with how long it took: for the log of a first run. */
  steps: Array<{ step: "debootstrap" | "import" | "pull" | "cached"; image: string; ms: number }>;
}

/**
 * Makes sure the Docker engine `docker` talks to has the images: locally built ones (building each rootfs first
 * when the cache has none for its recipe, about a minute for the first and three for Ceph's, and importing it
 * when the engine lacks the tags), or the pinned official ones, pulled when missing.
 */
export async function ensureServiceImages(
  docker: (args: string[], timeoutMs: number) => Promise<CommandResult>,
  log: (line: string) => void = () => undefined,
  only: readonly ServiceImage[] = SERVICE_IMAGES,
): Promise<ServiceImagesResult> {
  const images = await serviceImageNames();
  const steps: ServiceImagesResult["steps"] = [];
  const present = async (image: string): Promise<boolean> =>
    (await docker(["image", "inspect", image], 30_000)).code === 0;

  if (imageSource() === "official") {
    for (const image of only) {
      const ref = officialRef(image);
      if (await present(ref)) {
        steps.push({ step: "cached", image, ms: 0 });
        continue;
      }
      const started = Date.now();
      log(`docker pull ${ref}`);
      const result = await docker(["pull", ref], 15 * 60_000);
      if (result.code !== 0) throw new Error(`docker pull ${ref} failed (${result.code}): ${result.stderr}`);
      steps.push({ step: "pull", image, ms: Date.now() - started });
    }
    return { images, steps };
  }

  for (const rootfs of ROOTFS) {
    const wanted = (Object.keys(rootfs.images) as ServiceImage[]).filter((i) => only.includes(i));
    const missing: ServiceImage[] = [];
    for (const image of wanted) if (!(await present(images[image]))) missing.push(image);
    if (missing.length === 0) {
      if (wanted.length > 0) steps.push({ step: "cached", image: rootfs.name, ms: 0 });
      continue;
    }
    const { recipe: r, key } = await recipe(rootfs);
    const dir = join(cacheDir(), "service-images");
    const tarball = join(dir, `${rootfs.name}-${SUITE}-${key}.tar`);
    if (!existsSync(tarball)) {
      const started = Date.now();
      log(
        `debootstrap --variant=minbase --include=${rootfs.packages.join(",")} ${SUITE} (first run on this machine; cached afterwards)`,
      );
      await buildRootfs(rootfs, dir, tarball, r);
      steps.push({ step: "debootstrap", image: rootfs.name, ms: Date.now() - started });
    }
    for (const image of missing) {
      const started = Date.now();
      const entrypoint = rootfs.images[image];
      const changes = [`ENV PATH=${SYSTEM_PATH}`, ...(entrypoint ? [`ENTRYPOINT ${JSON.stringify(entrypoint)}`] : [])];
      const result = await docker(
        ["import", ...changes.flatMap((c) => ["--change", c]), tarball, images[image]],
        10 * 60_000,
      );
      if (result.code !== 0)
        throw new Error(`docker import ${images[image]} failed (${result.code}): ${result.stderr}`);
      steps.push({ step: "import", image, ms: Date.now() - started });
    }
  }
  return { images, steps };
}

async function buildRootfs(rootfs: Rootfs, dir: string, tarball: string, r: Record<string, unknown>): Promise<void> {
  await mkdir(dir, { recursive: true });
  // Work next to the final path, so the closing rename is atomic and a half-built rootfs is never found.
  const work = await mkdtemp(join(dir, "build-"));
  try {
    const root = join(work, "rootfs");
    await mustRun(
      "debootstrap",
      ["--variant=minbase", `--include=${rootfs.packages.join(",")}`, SUITE, root, String(r.mirror)],
      DEBOOTSTRAP_TIMEOUT_MS,
    );
    for (const path of SLIM_REMOVE) {
      await rm(join(root, path), { recursive: true, force: true });
      await mkdir(join(root, path), { recursive: true });
    }
    await writeFile(join(root, "etc/machine-id"), "");
    // Prove the servers run on this rootfs before caching it.
    for (const { cmd, args, expect } of rootfs.checks) {
      const check = await mustRun("chroot", [root, cmd, ...args], 60_000);
      if (!expect.test(check.stdout + check.stderr))
        throw new Error(`${cmd} ${args.join(" ")} in the ${rootfs.name} rootfs printed ${check.stdout}${check.stderr}`);
    }
    const partial = join(work, "rootfs.tar");
    await mustRun("tar", ["--numeric-owner", "-C", root, "-cf", partial, "."], 10 * 60_000);
    await rename(partial, tarball);
    await writeFile(`${tarball}.json`, `${JSON.stringify(r, null, 2)}\n`);
    // Older recipes' tarballs of this rootfs are dead weight.
    const prefix = `${rootfs.name}-${SUITE}-`;
    for (const entry of await readdir(dir)) {
      if (entry.startsWith(prefix) && entry.endsWith(".tar") && join(dir, entry) !== tarball) {
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
