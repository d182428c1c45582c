// skopeo (Debian's 1.9): `inspect` and `copy` to a `dir:` destination for a pull, `copy --all` of an index to
// an `oci:` layout. It cannot run containers; instead every blob it copied is checked against its digest.
// Two ways of reaching the mirror, each a client of its own in the suite:
//   - "registries.conf": names stay docker.io/... and ghcr.io/..., and the same mirror rules as podman's send
//     them to the mirror (plain location for docker.io, path prefix 127.0.0.1:PORT/ghcr.io for ghcr.io);
//   - "direct": the mirror addressed as a registry itself, docker://127.0.0.1:PORT/<repo> (default upstream)
//     and docker://127.0.0.1:PORT/ghcr.io/<repo> (path prefix), over plain HTTP (--*tls-verify=false), with no
//     fallback at all: a mirror failure is a failed copy.
import { createHash } from "node:crypto";
import { mkdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { prepareContainersTools, type ContainersTools } from "../../harness/podman.ts";
import {
  expectSuccess,
  formatRef,
  INDEX_MEDIA_TYPES,
  type Client,
  type ClientFactory,
  type ImageRef,
  type MirrorEndpoint,
  type PulledImage,
} from "../client.ts";
import { mirrorRules } from "./podman.ts";

type Addressing = "registries.conf" | "direct";

function skopeoClient(addressing: Addressing): ClientFactory {
  return {
    name: addressing === "direct" ? "skopeo-direct" : "skopeo",
    registries: ["docker.io", "ghcr.io"],
    runs: false,
    async start(mirror) {
      return new SkopeoClient(await prepareContainersTools({ registries: mirrorRules(mirror) }), mirror, addressing);
    },
  };
}

export const skopeoRegistriesConfClient = skopeoClient("registries.conf");
export const skopeoDirectClient = skopeoClient("direct");

interface Descriptor {
  mediaType?: string;
  digest: string;
}

interface Manifest {
  mediaType?: string;
  config?: Descriptor;
  layers?: Descriptor[];
  manifests?: Descriptor[];
}

class SkopeoClient implements Client {
  readonly name: string;
  private readonly tools: ContainersTools;
  private readonly mirror: MirrorEndpoint;
  private readonly addressing: Addressing;
  private readonly copies: string;
  private copyCount = 0;

  constructor(tools: ContainersTools, mirror: MirrorEndpoint, addressing: Addressing) {
    this.name = addressing === "direct" ? "skopeo-direct" : "skopeo";
    this.tools = tools;
    this.mirror = mirror;
    this.addressing = addressing;
    this.copies = join(tools.dir, "copies");
  }

  async pull(ref: ImageRef): Promise<PulledImage> {
    const source = this.source(ref);
    // inspect's Digest is that of the manifest the reference names (the index, for a multi-arch tag).
    const digest = (
      await this.skopeo(["inspect", "--no-tags", ...this.tlsFlag("--tls-verify"), "--format", "{{.Digest}}", source])
    ).trim();
    // dir: keeps the manifest byte-exact (an oci: layout would convert a Docker schema 2 manifest, and with it
    // the config). Without --all skopeo copies the one image for this platform.
    const dest = await this.freshDestination();
    await this.skopeo(["copy", "--quiet", ...this.tlsFlag("--src-tls-verify"), source, `dir:${dest}`]);
    const manifest = parse(await readFile(join(dest, "manifest.json")));
    for (const blob of [manifest.config, ...(manifest.layers ?? [])]) {
      if (blob !== undefined) await readVerified(join(dest, hex(blob.digest)), blob.digest);
    }
    if (manifest.config === undefined) throw new Error(`skopeo copied a manifest without config from ${source}`);
    return { digest, configDigest: manifest.config.digest };
  }

  async pullAllPlatforms(ref: ImageRef): Promise<{ digest: string; configDigests: string[] }> {
    const source = this.source(ref);
    const dest = await this.freshDestination();
    await this.skopeo(["copy", "--all", "--quiet", ...this.tlsFlag("--src-tls-verify"), source, `oci:${dest}:image`]);
    // The layout's one entry is the index itself, copied as is (OCI to OCI needs no conversion).
    const layout = parse(await readFile(join(dest, "index.json")));
    const top = layout.manifests?.[0];
    if (top?.mediaType === undefined || !INDEX_MEDIA_TYPES.has(top.mediaType))
      throw new Error(`skopeo copy --all of ${source} wrote no index`);
    const blob = (digest: string) => readVerified(join(dest, "blobs", "sha256", hex(digest)), digest);
    const index = parse(await blob(top.digest));
    const configDigests: string[] = [];
    for (const child of index.manifests ?? []) {
      const manifest = parse(await blob(child.digest));
      for (const b of [manifest.config, ...(manifest.layers ?? [])]) if (b !== undefined) await blob(b.digest);
      if (manifest.config !== undefined) configDigests.push(manifest.config.digest);
    }
    return { digest: top.digest, configDigests };
  }

  run(): Promise<string> {
    throw new Error("skopeo does not run containers");
  }

  async reset(): Promise<void> {
    await rm(this.copies, { recursive: true, force: true });
  }

  log(): string {
    return "";
  }

  stop(): Promise<void> {
    return this.tools.stop();
  }

  /** The transport reference of `ref` for this addressing style. */
  private source(ref: ImageRef): string {
    if (this.addressing === "registries.conf") return `docker://${formatRef(ref)}`;
    const path = ref.registry === "docker.io" ? ref.repo : `${ref.registry}/${ref.repo}`;
    return `docker://${this.mirror.host}/${path}${ref.digest !== undefined ? `@${ref.digest}` : `:${ref.tag ?? ""}`}`;
  }

  /** Direct addressing speaks plain HTTP to the mirror itself; registries.conf marks the mirrors insecure instead. */
  private tlsFlag(flag: string): string[] {
    return this.addressing === "direct" ? [`${flag}=false`] : [];
  }

  private async freshDestination(): Promise<string> {
    const dest = join(this.copies, String(++this.copyCount));
    await mkdir(dest, { recursive: true });
    return dest;
  }

  private async skopeo(args: string[]): Promise<string> {
    return expectSuccess(`skopeo ${args.join(" ")}`, await this.tools.skopeo(args));
  }
}

/** Reads a copied blob, checking it against its digest: skopeo cannot run images, so this proves they arrived. */
async function readVerified(path: string, digest: string): Promise<Buffer> {
  const bytes = await readFile(path);
  if (sha256(bytes) !== digest) throw new Error(`${path} does not match its digest ${digest}`);
  return bytes;
}

function parse(bytes: Buffer): Manifest {
  return JSON.parse(bytes.toString("utf8")) as Manifest;
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

function hex(digest: string): string {
  return digest.slice(digest.indexOf(":") + 1);
}
