// Everything one client's scenarios run against, all on loopback:
//
//   client ──► mirror (in-process, fixed port) ──► relay ──► docker-registry "docker.io" ◄─ token server
//                                              └─► relay ──► docker-registry "ghcr.io"   ◄─ token server
//
// Both upstreams require Docker-Hub-style bearer tokens (anonymous pull tokens from their own token server,
// which the mirror may contact because it is listed in `authHosts`). The relays are there so that a scenario
// can make an upstream hang (accept requests, never answer); the registries' own logs count what really
// reached each upstream. The mirror keeps its port and data dir across a restart, so clients configured once
// still find it and it starts over its own cache.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import type { Teardown } from "../harness/processes.ts";
import { startRegistry, type Credentials, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { startTokenServer, type TokenServer } from "../harness/token-server.ts";
import type { MirrorEndpoint, RegistryName } from "./client.ts";
import { pushCatalogueImage, type Catalogue, type CatalogueImage } from "./images.ts";

/** The mirror's per-upstream settings in these scenarios (see docs/configuration.md). */
export const MIRROR_TIMING = {
  /** Short enough that the TTL and hang scenarios do not wait long, long enough to outlast two quick pulls. */
  tagTtlMs: 10_000,
  /**
   * A hanging upstream keeps each of the mirror's requests for 10 s (5 × the default `revalidateTimeout`, and
   * more than the scenarios' bound on a pull): what bounds a client's wait for a cached tag is the mirror's
   * `revalidateTimeout` (2 s by default), not this.
   */
  headersTimeoutMs: 10_000,
  connectTimeoutMs: 2_000,
  /** Down after one failure and probed again within seconds, so the hang scenario runs through probes. */
  health: { failureThreshold: 1, initialBackoff: 1_000, maxBackoff: 4_000 },
} as const;

const ADMIN: Credentials = { username: "admin", password: "admin-pw" };

export interface Upstream {
  readonly name: RegistryName;
  readonly tokens: TokenServer;
  readonly registry: Registry;
  /** What the mirror is configured with as this upstream's url. */
  readonly relay: Relay;
}

export interface World {
  readonly upstreams: Readonly<Record<RegistryName, Upstream>>;
  readonly endpoint: MirrorEndpoint;
  /** The mirror now running (a new one after restartMirror()). */
  mirror(): TestMirror;
  /** Stops the mirror and starts a new one on the same port over the same data dir and configuration. */
  restartMirror(): Promise<void>;
  /** Pushes an image to its upstream directly (not through the mirror). */
  push(img: CatalogueImage): Promise<void>;
  /** Every request to either upstream from now on is accepted and never answered. */
  hangUpstreams(): void;
  /** Stops relays, registries and token servers: connections to the upstream URLs are refused from now on. */
  stopUpstreams(): Promise<void>;
  /** Waits until both registries' request logs include every request already answered. */
  syncUpstreams(): Promise<void>;
  clearUpstreamLogs(): void;
  /** Successful blob GETs at both upstreams (optionally of one digest), since the last clear. */
  upstreamBlobGets(digest?: string): number;
  /** Registry API answers of the running mirror so far, by status class ("2xx", "4xx", ...). */
  mirrorAnswers(): Promise<Record<string, number>>;
  /** A counter of the running mirror, summed over the series matching `labels`. */
  mirrorCounter(
    name: "mirror_requests_total" | "mirror_stale_served_total",
    labels?: Record<string, string>,
  ): Promise<number>;
}

export async function startWorld(teardown: Teardown, catalogue: Catalogue): Promise<World> {
  const upstreams = {
    "docker.io": await startUpstream("docker.io", teardown),
    "ghcr.io": await startUpstream("ghcr.io", teardown),
  } satisfies Record<RegistryName, Upstream>;
  for (const img of catalogue.seeded()) await pushCatalogueImage(upstreams[img.registry].registry.url, img, ADMIN);

  const dataDir = await mkdtemp(join(tmpdir(), "e2e-mirror-data-"));
  teardown.add(`delete ${dataDir}`, () => rm(dataDir, { recursive: true, force: true }));
  const upstreamConfig = (u: Upstream) => ({
    url: u.relay.url,
    authHosts: [new URL(u.tokens.url).host],
    tagTtl: MIRROR_TIMING.tagTtlMs,
    timeouts: { connect: MIRROR_TIMING.connectTimeoutMs, headers: MIRROR_TIMING.headersTimeoutMs, bodyIdle: 10_000 },
    health: MIRROR_TIMING.health,
  });
  const config = {
    upstreams: {
      "docker.io": {
        ...upstreamConfig(upstreams["docker.io"]),
        default: true,
        aliases: ["registry-1.docker.io", "index.docker.io"],
      },
      "ghcr.io": upstreamConfig(upstreams["ghcr.io"]),
    },
    dataDir,
  };
  let mirror = await startTestMirror(config);
  const endpoint: MirrorEndpoint = { url: mirror.url, host: mirror.host };
  let stopped = false;
  teardown.add("mirror", async () => {
    if (!stopped) await mirror.stop();
    stopped = true;
  });
  const registries = () => Object.values(upstreams).map((u) => u.registry);

  return {
    upstreams,
    endpoint,
    mirror: () => mirror,
    async restartMirror() {
      stopped = true;
      await mirror.stop();
      mirror = await startTestMirror({ ...config, extra: { listen: endpoint.host } });
      stopped = false;
    },
    push: (img) => pushCatalogueImage(upstreams[img.registry].registry.url, img, ADMIN),
    hangUpstreams() {
      for (const u of Object.values(upstreams)) u.relay.setFault({ kind: "stallHeaders" });
    },
    async stopUpstreams() {
      for (const u of Object.values(upstreams)) {
        await u.relay.stop();
        await u.registry.stop();
        await u.tokens.stop();
      }
    },
    syncUpstreams: async () => {
      for (const r of registries()) await r.sync();
    },
    clearUpstreamLogs() {
      for (const r of registries()) r.clearRequests();
    },
    upstreamBlobGets: (digest) =>
      registries().reduce(
        (n, r) =>
          n +
          r.count({
            method: "GET",
            kind: "blobs",
            status: 200,
            ...(digest === undefined ? {} : { pathIncludes: digest }),
          }),
        0,
      ),
    async mirrorAnswers() {
      const metric = mirror.mirror.metrics.registry.getSingleMetric("mirror_requests_total");
      const answers: Record<string, number> = {};
      for (const v of (await metric?.get())?.values ?? []) {
        const cls = String(v.labels["status_class"]);
        answers[cls] = (answers[cls] ?? 0) + v.value;
      }
      return answers;
    },
    async mirrorCounter(name, labels = {}) {
      const metric = mirror.mirror.metrics.registry.getSingleMetric(name);
      if (metric === undefined) throw new Error(`the mirror has no metric ${name}`);
      const { values } = await metric.get();
      return values
        .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
        .reduce((n, v) => n + v.value, 0);
    },
  };
}

async function startUpstream(name: RegistryName, teardown: Teardown): Promise<Upstream> {
  const tokens = teardown.track(
    await startTokenServer({ users: { [ADMIN.username]: ADMIN.password }, admins: [ADMIN.username] }),
    `token server (${name})`,
  );
  const registry = teardown.track(await startRegistry({ auth: { token: tokens } }), `registry (${name})`);
  const relay = teardown.track(await startRelay(registry.url), `relay (${name})`);
  return { name, tokens, registry, relay };
}
