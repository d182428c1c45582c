// podman (Debian's 4.3) through registries.conf mirrors, the way CRI-O nodes and podman hosts are set up:
//   docker.io → a plain mirror location (127.0.0.1:PORT): requests arrive as /v2/<repo>/... (default upstream)
//   ghcr.io   → a path-prefix location (127.0.0.1:PORT/ghcr.io): requests arrive as /v2/ghcr.io/<repo>/...
// vfs storage, runc, no network; everything private to the instance (harness/podman.ts).
import { prepareContainersTools, type ContainersTools, type RegistryRule } from "../../harness/podman.ts";
import {
  expectSuccess,
  formatRef,
  type Client,
  type ClientFactory,
  type ImageRef,
  type MirrorEndpoint,
  type PulledImage,
} from "../client.ts";

/** registries.conf rules for the two registries, both mirrored by one mirror: plain and path-prefix style. */
export function mirrorRules(mirror: MirrorEndpoint): RegistryRule[] {
  return [
    { prefix: "docker.io", location: "registry-1.docker.io", mirrors: [mirror.host] },
    { prefix: "ghcr.io", location: "ghcr.io", mirrors: [`${mirror.host}/ghcr.io`] },
  ];
}

export const podmanClient: ClientFactory = {
  name: "podman",
  registries: ["docker.io", "ghcr.io"],
  runs: true,
  async start(mirror) {
    return new PodmanClient(await prepareContainersTools({ registries: mirrorRules(mirror) }));
  },
};

class PodmanClient implements Client {
  readonly name = "podman";
  private readonly tools: ContainersTools;

  constructor(tools: ContainersTools) {
    this.tools = tools;
  }

  async pull(ref: ImageRef): Promise<PulledImage> {
    const name = formatRef(ref);
    await this.podman(["pull", "--quiet", name]);
    const [digest = "", id = "", repoDigests = "[]"] = (
      await this.podman(["image", "inspect", "--format", "{{.Digest}} {{.Id}} {{json .RepoDigests}}", name])
    )
      .trim()
      .split(" ");
    // podman records the digest it pulled by (the index, for a multi-arch tag) among the repository's digests.
    const repo = `${ref.registry}/${ref.repo}@`;
    if (!(JSON.parse(repoDigests) as string[]).includes(`${repo}${digest}`))
      throw new Error(`podman pulled ${name} as ${digest} but recorded repo digests ${repoDigests}`);
    return { digest, configDigest: `sha256:${id}` };
  }

  async run(ref: ImageRef): Promise<string> {
    return this.podman(["run", "--rm", formatRef(ref)]);
  }

  async reset(): Promise<void> {
    await this.podman(["rmi", "--all", "--force"]);
    const left = (await this.podman(["image", "ls", "--all", "--quiet"])).trim();
    if (left !== "") throw new Error(`podman still holds images after removing all: ${left}`);
  }

  log(): string {
    return "";
  }

  stop(): Promise<void> {
    return this.tools.stop();
  }

  private async podman(args: string[]): Promise<string> {
    return expectSuccess(`podman ${args.join(" ")}`, await this.tools.podman(args));
  }
}
