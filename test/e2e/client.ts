// The one interface every real client adapter implements (clients/*.ts), so that scenarios.ts is written once.
// An adapter translates "pull this image" into the client's own commands and reads back, from the client's
// own store, what it got: the scenarios then compare digests with what the harness built.

/** The registries the end-to-end upstreams stand in for: names as clients write them in image references. */
export type RegistryName = "docker.io" | "ghcr.io";

/** An image as a client names it: `docker.io/library/hello:1`, `ghcr.io/team/tool@sha256:...`. */
export interface ImageRef {
  registry: RegistryName;
  /** Repository path at that registry, `library/` included for official Docker Hub images. */
  repo: string;
  tag?: string;
  digest?: string;
}

/** What a client holds after a pull, read from its own store. */
export interface PulledImage {
  /** The manifest the reference resolved to (for a multi-arch tag: the index). */
  digest: string;
  /** The image config the client took: for an index, the child for its own platform (linux/amd64). */
  configDigest: string;
}

/** The mirror as clients are pointed at it: fixed for a client's lifetime (a restarted mirror keeps its port). */
export interface MirrorEndpoint {
  /** http://127.0.0.1:PORT */
  url: string;
  /** 127.0.0.1:PORT */
  host: string;
}

export interface Client {
  readonly name: string;
  /** Pulls `ref` through the mirror; rejects with the client's own output when the client fails. */
  pull(ref: ImageRef): Promise<PulledImage>;
  /** Runs the image's default command without network; resolves with its standard output. */
  run(ref: ImageRef): Promise<string>;
  /**
   * Every platform of an index (skopeo `copy --all`, ctr `--all-platforms`), for clients that can: the
   * index digest and the config digest of every child copied.
   */
  pullAllPlatforms?(ref: ImageRef): Promise<{ digest: string; configDigests: string[] }>;
  /** Forgets every image, so that the next pull must fetch everything from the mirror again. */
  reset(): Promise<void>;
  /** The client's recent log (a daemon's), for assertion messages. */
  log(): string;
  stop(): Promise<void>;
}

/** How a client is started, and what it can express, known before it runs (the suite is defined from this). */
export interface ClientFactory {
  readonly name: string;
  /** Registries this client can reach through the mirror (dockerd: docker.io only). */
  readonly registries: readonly RegistryName[];
  /** Whether it runs containers (skopeo only copies). */
  readonly runs: boolean;
  start(mirror: MirrorEndpoint): Promise<Client>;
}

/** A client command failed: carries its output, since that is the whole explanation. */
export class ClientCommandError extends Error {
  readonly command: string;
  readonly code: number;
  readonly output: string;

  constructor(command: string, code: number, output: string) {
    super(`${command} exited ${code}\n${output}`);
    this.name = "ClientCommandError";
    this.command = command;
    this.code = code;
    this.output = output;
  }
}

/** Throws ClientCommandError unless the command exited 0; returns its stdout. */
export function expectSuccess(command: string, result: { code: number; stdout: string; stderr: string }): string {
  if (result.code !== 0)
    throw new ClientCommandError(command, result.code, `stdout: ${result.stdout}\nstderr: ${result.stderr}`);
  return result.stdout;
}

/** `docker.io/library/hello:1` or `ghcr.io/team/tool@sha256:...` (a digest wins over a tag). */
export function formatRef(ref: ImageRef): string {
  const name = `${ref.registry}/${ref.repo}`;
  if (ref.digest !== undefined) return `${name}@${ref.digest}`;
  if (ref.tag !== undefined) return `${name}:${ref.tag}`;
  throw new Error(`image reference ${name} has neither tag nor digest`);
}

/** The child of an OCI index / Docker manifest list a linux/amd64 client takes. */
export function amd64Child(index: {
  manifests?: Array<{ digest: string; platform?: { os?: string; architecture?: string } }>;
}): string {
  const child = index.manifests?.find((m) => m.platform?.os === "linux" && m.platform.architecture === "amd64");
  if (child === undefined) throw new Error("index has no linux/amd64 child");
  return child.digest;
}

export const INDEX_MEDIA_TYPES: ReadonlySet<string> = new Set([
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
]);
