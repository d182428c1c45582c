// containerd (Debian's 1.6) through `ctr image pull --hosts-dir DIR`: one hosts.toml per registry (docker.io
// and ghcr.io), each naming the registry's own server and the mirror as a host with pull + resolve. ctr then
// sends every request to the mirror with `?ns=<registry>`, which is how one mirror serves both. Containers
// run with runc and no network (`ctr run` without --net-host gets a namespace with loopback only).
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { startContainerd, writeHostsToml, type Containerd } from "../../harness/containerd.ts";
import {
  amd64Child,
  expectSuccess,
  formatRef,
  INDEX_MEDIA_TYPES,
  type Client,
  type ClientFactory,
  type ImageRef,
  type PulledImage,
} from "../client.ts";

/** The registries' real API servers, where containerd falls back to (and the namespace stops it). */
const SERVERS = { "docker.io": "https://registry-1.docker.io", "ghcr.io": "https://ghcr.io" } as const;

export const containerdClient: ClientFactory = {
  name: "containerd",
  registries: ["docker.io", "ghcr.io"],
  runs: true,
  async start(mirror) {
    const containerd = await startContainerd({ snapshotter: "native" });
    try {
      // Not "hosts": that is the loopback namespace's /etc/hosts in the same dir.
      const hostsDir = join(containerd.dir, "registry-hosts");
      await mkdir(hostsDir);
      for (const [registry, server] of Object.entries(SERVERS))
        await writeHostsToml(hostsDir, registry, { server, mirrors: [mirror.url] });
      return new ContainerdClient(containerd, hostsDir);
    } catch (err) {
      await containerd.stop();
      throw err;
    }
  },
};

interface Manifest {
  mediaType?: string;
  config?: { digest: string };
  manifests?: Array<{ digest: string; platform?: { os?: string; architecture?: string } }>;
}

class ContainerdClient implements Client {
  readonly name = "containerd";
  private readonly containerd: Containerd;
  private readonly hostsDir: string;
  private runCount = 0;

  constructor(containerd: Containerd, hostsDir: string) {
    this.containerd = containerd;
    this.hostsDir = hostsDir;
  }

  async pull(ref: ImageRef): Promise<PulledImage> {
    const name = formatRef(ref);
    await this.ctr(["image", "pull", "--hosts-dir", this.hostsDir, name]);
    const digest = await this.imageDigest(name);
    const top = await this.content(digest);
    const manifest = isIndex(top) ? await this.content(amd64Child(top)) : top;
    if (manifest.config === undefined) throw new Error(`${name}: manifest ${digest} has no config`);
    return { digest, configDigest: manifest.config.digest };
  }

  async pullAllPlatforms(ref: ImageRef): Promise<{ digest: string; configDigests: string[] }> {
    const name = formatRef(ref);
    await this.ctr(["image", "pull", "--all-platforms", "--hosts-dir", this.hostsDir, name]);
    const digest = await this.imageDigest(name);
    const index = await this.content(digest);
    if (!isIndex(index)) throw new Error(`${name} is not an index`);
    const configDigests: string[] = [];
    for (const child of index.manifests ?? []) {
      const manifest = await this.content(child.digest);
      if (manifest.config !== undefined) configDigests.push(manifest.config.digest);
    }
    return { digest, configDigests };
  }

  async run(ref: ImageRef): Promise<string> {
    return this.ctr([
      "run",
      "--rm",
      "--runtime",
      "io.containerd.runc.v2",
      formatRef(ref),
      `e2e-${process.pid}-${++this.runCount}`,
    ]);
  }

  async reset(): Promise<void> {
    const refs = (await this.ctr(["image", "ls", "--quiet"])).split("\n").filter((l) => l !== "");
    // --sync waits for the garbage collection that deletes the content and snapshots nothing references now.
    if (refs.length > 0) await this.ctr(["image", "rm", "--sync", ...refs]);
    const left = (await this.ctr(["content", "ls", "--quiet"])).trim();
    if (left !== "") throw new Error(`containerd still holds content after removing every image:\n${left}`);
  }

  log(): string {
    return this.containerd.output().slice(-4000);
  }

  stop(): Promise<void> {
    return this.containerd.stop();
  }

  /** The target digest of an image record, from `ctr image ls` (REF TYPE DIGEST SIZE PLATFORMS LABELS). */
  private async imageDigest(name: string): Promise<string> {
    const listing = await this.ctr(["image", "ls"]);
    for (const line of listing.split("\n").slice(1)) {
      const [refName, , digest] = line.trim().split(/\s+/);
      if (refName === name && digest !== undefined) return digest;
    }
    throw new Error(`ctr image ls has no ${name}:\n${listing}`);
  }

  private async content(digest: string): Promise<Manifest> {
    return JSON.parse(await this.ctr(["content", "get", digest])) as Manifest;
  }

  private async ctr(args: string[]): Promise<string> {
    return expectSuccess(`ctr ${args.join(" ")}`, await this.containerd.ctr(args));
  }
}

function isIndex(m: Manifest): boolean {
  return (
    (m.mediaType !== undefined && INDEX_MEDIA_TYPES.has(m.mediaType)) ||
    (m.manifests !== undefined && m.config === undefined)
  );
}
