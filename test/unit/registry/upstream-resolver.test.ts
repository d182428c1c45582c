import { describe, expect, it } from "vitest";
import { parseConfig } from "../../../src/config/load.ts";
import { UpstreamResolver } from "../../../src/registry/upstream-resolver.ts";
import { UpstreamClient } from "../../../src/upstream/upstream-client.ts";

function resolver(upstreams: Record<string, unknown>): UpstreamResolver {
  const config = parseConfig({ upstreams });
  return new UpstreamResolver(Object.values(config.upstreams).map((u) => new UpstreamClient(u)));
}

const hubAndGhcr = {
  "docker.io": { url: "https://registry-1.docker.io", default: true, aliases: ["registry-1.docker.io", "index.docker.io"] },
  "ghcr.io": { url: "https://ghcr.io" },
  "registry.local:5000": { url: "http://127.0.0.1:5999" },
};

describe("UpstreamResolver", () => {
  const r = resolver(hubAndGhcr);
  const route = (name: string, ns?: string) => {
    const { upstream, repo } = r.resolve(name, ns);
    return `${upstream.name} ${repo}`;
  };

  it("routes plain paths to the default upstream, adding library/ to single names", () => {
    expect(route("alpine")).toBe("docker.io library/alpine");
    expect(route("library/alpine")).toBe("docker.io library/alpine");
    expect(route("bitnami/redis")).toBe("docker.io bitnami/redis");
  });
  it("routes by containerd's ns= (name or alias, any case)", () => {
    expect(route("team/tool", "ghcr.io")).toBe("ghcr.io team/tool");
    expect(route("library/busybox", "registry-1.docker.io")).toBe("docker.io library/busybox");
    expect(route("busybox", "Docker.IO")).toBe("docker.io library/busybox");
    expect(route("x/y", "registry.local:5000")).toBe("registry.local:5000 x/y");
  });
  it("routes a path prefix naming an upstream (podman/CRI-O mirrors with a path)", () => {
    expect(route("ghcr.io/team/tool")).toBe("ghcr.io team/tool");
    expect(route("docker.io/alpine")).toBe("docker.io library/alpine");
    expect(route("index.docker.io/library/alpine")).toBe("docker.io library/alpine");
  });
  it("strips a prefix that names the same upstream as ns (override_path)", () => {
    expect(route("ghcr.io/team/tool", "ghcr.io")).toBe("ghcr.io team/tool");
    expect(route("docker.io/x/y", "ghcr.io")).toBe("ghcr.io docker.io/x/y");
  });
  it("never lets ns name a host the config did not", () => {
    for (const ns of ["evil.example", "127.0.0.1:22", "ghcr.io.evil", "", "registry-1.docker.io:443"]) {
      expect(() => r.resolve("library/alpine", ns), ns).toThrow(expect.objectContaining({ code: "NAME_UNKNOWN", status: 404 }) as Error);
    }
  });
  it("without a default upstream, a plain path is NAME_UNKNOWN, not a guess", () => {
    const noDefault = resolver({ "ghcr.io": { url: "https://ghcr.io" } });
    expect(() => noDefault.resolve("library/alpine", undefined)).toThrow(expect.objectContaining({ code: "NAME_UNKNOWN" }) as Error);
    expect(noDefault.resolve("ghcr.io/a/b", undefined).repo).toBe("a/b");
  });
  it("does not add library/ on upstreams without a library prefix", () => {
    expect(route("tool", "ghcr.io")).toBe("ghcr.io tool");
  });
});
