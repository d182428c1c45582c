import { describe, expect, it } from "vitest";
import { ConfigError, parseConfig } from "../../../src/config/load.ts";
import { configuredPins, UpstreamResolver } from "../../../src/config/upstream-resolver.ts";
import { UpstreamClient } from "../../../src/upstream/upstream-client.ts";

function resolver(upstreams: Record<string, unknown>): UpstreamResolver {
  const config = parseConfig({ upstreams });
  return new UpstreamResolver(Object.values(config.upstreams).map((u) => new UpstreamClient(u)));
}

const hubAndGhcr = {
  "docker.io": {
    url: "https://registry-1.docker.io",
    default: true,
    aliases: ["registry-1.docker.io", "index.docker.io"],
  },
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
      expect(() => r.resolve("library/alpine", ns), ns).toThrow(
        expect.objectContaining({ code: "NAME_UNKNOWN", status: 404 }) as Error,
      );
    }
  });
  it("without a default upstream, a plain path is NAME_UNKNOWN, not a guess", () => {
    const noDefault = resolver({ "ghcr.io": { url: "https://ghcr.io" } });
    expect(() => noDefault.resolve("library/alpine", undefined)).toThrow(
      expect.objectContaining({ code: "NAME_UNKNOWN" }) as Error,
    );
    expect(noDefault.resolve("ghcr.io/a/b", undefined).repo).toBe("a/b");
  });
  it("does not add library/ on upstreams without a library prefix", () => {
    expect(route("tool", "ghcr.io")).toBe("ghcr.io tool");
  });
});

describe("UpstreamResolver.reference (export, prefetch, bundle names)", () => {
  const r = resolver(hubAndGhcr);
  const canonical = (text: string, opts?: { requireUpstream?: boolean }) => r.reference(text, opts).canonical;
  const D = `sha256:${"a".repeat(64)}`;

  it("gives a name without a configured upstream to the default one, with its library prefix and tag latest", () => {
    expect(canonical("alpine")).toBe("docker.io/library/alpine:latest");
    expect(canonical("alpine:3.20")).toBe("docker.io/library/alpine:3.20");
    expect(canonical("bitnami/redis:7")).toBe("docker.io/bitnami/redis:7");
    // A first component the config does not name is part of the repository, never a host to contact.
    const foreign = r.reference("evil.example/team/app:1");
    expect([foreign.upstream.name, foreign.repository]).toEqual(["docker.io", "evil.example/team/app"]);
  });

  it("reads the first component as an upstream by name or alias, in any case, with ports", () => {
    expect(canonical("docker.io/alpine")).toBe("docker.io/library/alpine:latest");
    expect(canonical("Index.Docker.IO/library/alpine:3")).toBe("docker.io/library/alpine:3");
    expect(canonical("ghcr.io/team/tool:v2")).toBe("ghcr.io/team/tool:v2");
    expect(canonical("ghcr.io/tool")).toBe("ghcr.io/tool:latest"); // no library prefix on ghcr.io
    expect(canonical("registry.local:5000/x/y")).toBe("registry.local:5000/x/y:latest");
    expect(canonical(" registry.local:5000/x/y:1 ")).toBe("registry.local:5000/x/y:1");
  });

  it("takes a digest, and lets the digest decide over a tag written with it", () => {
    expect(r.reference(`ghcr.io/team/tool@${D}`).reference).toEqual({ kind: "digest", digest: D });
    expect(canonical(`alpine:3.20@${D}`)).toBe(`docker.io/library/alpine@${D}`);
  });

  it("with requireUpstream, refuses a name that does not start with an upstream instead of giving it to the default", () => {
    expect(() => r.reference("latest", { requireUpstream: true })).toThrow(
      expect.objectContaining({ code: "NAME_UNKNOWN", status: 404 }) as Error,
    );
    expect(() => r.reference("evil.example/team/app:1", { requireUpstream: true })).toThrow(
      /does not start with a configured upstream \(docker\.io, ghcr\.io, registry\.local:5000\)/,
    );
    expect(canonical("index.docker.io/alpine:3", { requireUpstream: true })).toBe("docker.io/library/alpine:3");
  });

  it("without a default upstream, a name without one is NAME_UNKNOWN, not a guess", () => {
    const noDefault = resolver({ "ghcr.io": { url: "https://ghcr.io" } });
    expect(() => noDefault.reference("alpine:3")).toThrow(/and none is the default/);
    expect(noDefault.reference("ghcr.io/a/b").canonical).toBe("ghcr.io/a/b:latest");
  });

  it("refuses an invalid repository, tag or digest with the OCI error for it", () => {
    expect(() => r.reference("docker.io/Team/App")).toThrow(expect.objectContaining({ code: "NAME_INVALID" }) as Error);
    expect(() => r.reference("docker.io/")).toThrow(expect.objectContaining({ code: "NAME_INVALID" }) as Error);
    expect(() => r.reference("alpine:-bad")).toThrow(expect.objectContaining({ code: "TAG_INVALID" }) as Error);
    expect(() => r.reference("alpine@sha512:abc")).toThrow(
      expect.objectContaining({ code: "DIGEST_INVALID" }) as Error,
    );
  });
});

describe("UpstreamResolver.pin (storage.pinned)", () => {
  const r = resolver(hubAndGhcr);

  it("reads <upstream>/<repository>[:tag], a repository without a tag standing for every tag", () => {
    expect(r.pin("docker.io/library/alpine:3.20")).toEqual({
      upstream: "docker.io",
      repository: "library/alpine",
      tag: "3.20",
    });
    expect(r.pin("ghcr.io/team/tool")).toEqual({ upstream: "ghcr.io", repository: "team/tool", tag: undefined });
    expect(r.pin("registry.local:5000/x/y:1")).toEqual({
      upstream: "registry.local:5000",
      repository: "x/y",
      tag: "1",
    });
  });

  it("reads the upstream as references do: aliases and any case name the upstream, single names get its library prefix", () => {
    expect(r.pin("Index.Docker.IO/alpine:3")).toEqual({
      upstream: "docker.io",
      repository: "library/alpine",
      tag: "3",
    });
    expect(r.pin("docker.io/alpine")).toEqual({ upstream: "docker.io", repository: "library/alpine", tag: undefined });
    expect(r.pin("ghcr.io/tool:1")).toEqual({ upstream: "ghcr.io", repository: "tool", tag: "1" });
  });

  it("refuses a pin that does not start with a configured upstream: there is no default for pins", () => {
    for (const pin of ["alpine:3", "library/alpine", "evil.example/team/app:1"]) {
      expect(() => r.pin(pin), pin).toThrow(
        `pin ${JSON.stringify(pin)} must start with a configured upstream name (docker.io, ghcr.io, registry.local:5000)`,
      );
    }
  });

  it("refuses a digest, an invalid repository and an invalid tag, naming the pin", () => {
    expect(() => r.pin(`docker.io/library/alpine@sha256:${"a".repeat(64)}`)).toThrow(/names a digest/);
    expect(() => r.pin("docker.io/Team/App:1")).toThrow(/^pin "docker\.io\/Team\/App:1": invalid repository name/);
    expect(() => r.pin("docker.io/team/app:-bad")).toThrow(/^pin "docker\.io\/team\/app:-bad": invalid tag/);
    expect(() => r.pin("docker.io/team/app:")).toThrow(/invalid tag/);
  });
});

describe("configured pins", () => {
  it("are checked when the configuration loads, every problem reported at once", () => {
    const pinned = ["docker.io/alpine:3", "alpine:3", "docker.io/Bad:1", "ghcr.io/x@sha256:" + "a".repeat(64)];
    let problems: readonly string[] = [];
    try {
      parseConfig({ upstreams: hubAndGhcr, storage: { pinned } });
    } catch (err) {
      problems = (err as ConfigError).problems;
    }
    expect(problems).toEqual([
      expect.stringMatching(/^storage\.pinned: pin "alpine:3" must start with a configured upstream name/),
      expect.stringMatching(/^storage\.pinned: pin "docker\.io\/Bad:1": invalid repository name/),
      expect.stringMatching(/^storage\.pinned: pin "ghcr\.io\/x@sha256:a+" names a digest/),
    ]);
  });

  it("resolve against the configured upstreams and their presets (Docker Hub's library prefix)", () => {
    const config = parseConfig({
      upstreams: { hub: { url: "https://registry-1.docker.io", aliases: ["docker.io"] } },
      storage: { pinned: ["docker.io/alpine:3", "hub/team/app"] },
    });
    expect(configuredPins(config)).toEqual([
      { upstream: "hub", repository: "library/alpine", tag: "3" },
      { upstream: "hub", repository: "team/app", tag: undefined },
    ]);
  });
});

describe("UpstreamResolver.pathName (_catalog names)", () => {
  const r = resolver({
    ...hubAndGhcr,
    "quay.io": { url: "https://quay.io", aliases: ["quay.example"] },
    "ports:1": { url: "http://127.0.0.1:5998", aliases: ["ports.example"] },
  });
  const upstream = (name: string) => r.resolve("x/y", name).upstream;
  /** The name, and what resolving it (as a client's `/v2/<name>/...` without ns) comes back to. */
  const roundTrip = (upstreamName: string, repo: string) => {
    const name = r.pathName(upstream(upstreamName), repo);
    if (name === undefined) return undefined;
    const back = r.resolve(name, undefined);
    return { name, back: `${back.upstream.name} ${back.repo}` };
  };

  it("names default-upstream repositories as clients pull them, the others with their upstream's prefix", () => {
    expect(roundTrip("docker.io", "library/alpine")).toEqual({
      name: "library/alpine",
      back: "docker.io library/alpine",
    });
    expect(roundTrip("docker.io", "bitnami/redis")).toEqual({ name: "bitnami/redis", back: "docker.io bitnami/redis" });
    expect(roundTrip("ghcr.io", "team/tool")).toEqual({ name: "ghcr.io/team/tool", back: "ghcr.io team/tool" });
    expect(roundTrip("ghcr.io", "tool")).toEqual({ name: "ghcr.io/tool", back: "ghcr.io tool" });
  });

  it("prefixes a default-upstream repository whose first component names another upstream", () => {
    expect(roundTrip("docker.io", "ghcr.io/team")).toEqual({
      name: "docker.io/ghcr.io/team",
      back: "docker.io ghcr.io/team",
    });
  });

  it("uses an alias when the name cannot be a path prefix, and gives none when nothing can", () => {
    expect(roundTrip("ports:1", "x/y")).toEqual({ name: "ports.example/x/y", back: "ports:1 x/y" });
    expect(roundTrip("quay.io", "a/b")).toEqual({ name: "quay.io/a/b", back: "quay.io a/b" });
    expect(roundTrip("registry.local:5000", "x/y")).toBeUndefined();
    // Too long for the grammar once prefixed.
    expect(roundTrip("ghcr.io", `a/${"b".repeat(250)}`)).toBeUndefined();
  });

  it("round-trips every name it gives, for every upstream and a spread of repositories", () => {
    const repos = ["library/alpine", "alpine", "a/b/c", "ghcr.io/x", "docker.io/x", "quay.example/z", "library"];
    for (const u of ["docker.io", "ghcr.io", "quay.io", "ports:1", "registry.local:5000"]) {
      for (const repo of repos) {
        const trip = roundTrip(u, repo);
        // Every repository of an upstream whose name is a valid prefix has a name.
        if (u === "ghcr.io" || u === "quay.io") expect(trip, repo).toBeDefined();
        if (trip !== undefined) expect(trip.back, trip.name).toBe(`${u} ${repo}`);
      }
    }
  });
});
