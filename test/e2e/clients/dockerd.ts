// dockerd (Debian's 20.10) with `--registry-mirror`: it uses the mirror for docker.io images only, adds
// `library/` itself, and silently falls back to Docker Hub when the mirror errors (a fallback the harness's
// loopback-only namespace turns into a failed pull). Each client is a private daemon (harness/dockerd.ts).
import { startDockerd, type Dockerd } from "../../harness/dockerd.ts";
import {
  expectSuccess,
  formatRef,
  type Client,
  type ClientFactory,
  type ImageRef,
  type PulledImage,
} from "../client.ts";

export const dockerdClient: ClientFactory = {
  name: "dockerd",
  registries: ["docker.io"],
  runs: true,
  async start(mirror) {
    const dockerd = await startDockerd({ registryMirror: mirror.url, insecureRegistries: [mirror.host] });
    return new DockerdClient(dockerd);
  },
};

class DockerdClient implements Client {
  readonly name = "dockerd";
  private readonly dockerd: Dockerd;

  constructor(dockerd: Dockerd) {
    this.dockerd = dockerd;
  }

  async pull(ref: ImageRef): Promise<PulledImage> {
    if (ref.registry !== "docker.io")
      throw new Error(`dockerd uses registry mirrors for docker.io only, not ${ref.registry}`);
    const name = formatRef(ref);
    const out = await this.docker(["pull", name]);
    // "Digest: sha256:..." is what the reference resolved to at the registry (the index, for a multi-arch tag).
    const digest = /^Digest: (sha256:[0-9a-f]{64})$/m.exec(out)?.[1];
    if (digest === undefined) throw new Error(`docker pull ${name} printed no digest:\n${out}`);
    const [id = "", repoDigests = "[]"] = (
      await this.docker(["image", "inspect", "--format", "{{.Id}} {{json .RepoDigests}}", name])
    )
      .trim()
      .split(" ");
    // What dockerd stored under the repository must be that same manifest.
    const stored = (JSON.parse(repoDigests) as string[]).map((d) => d.slice(d.indexOf("@") + 1));
    if (!stored.includes(digest))
      throw new Error(`dockerd pulled ${name} as ${digest} but recorded repo digests ${repoDigests}`);
    return { digest, configDigest: id };
  }

  async run(ref: ImageRef): Promise<string> {
    return this.docker(["run", "--rm", "--network", "none", formatRef(ref)]);
  }

  async reset(): Promise<void> {
    const ids = [
      ...new Set(
        (await this.docker(["image", "ls", "--all", "--quiet", "--no-trunc"])).split("\n").filter((l) => l !== ""),
      ),
    ];
    if (ids.length > 0) await this.docker(["image", "rm", "--force", ...ids]);
    const left = (await this.docker(["image", "ls", "--all", "--quiet"])).trim();
    if (left !== "") throw new Error(`dockerd still holds images after removing all: ${left}`);
  }

  log(): string {
    return this.dockerd.output().slice(-4000);
  }

  stop(): Promise<void> {
    return this.dockerd.stop();
  }

  private async docker(args: string[]): Promise<string> {
    return expectSuccess(`docker ${args.join(" ")}`, await this.dockerd.docker(args));
  }
}
