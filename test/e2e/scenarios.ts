// The end-to-end scenarios, written once and run for every real client (mirror-clients.test.ts), in the
// style of verdaccio's e2e-npm-commons: a client is an adapter (client.ts), each scenario says what any
// client must see. Scenarios run in order and build on each other, as a mirror's life does: cold cache,
// warm cache, a tag moving upstream, then outages (hanging, stopped, mirror restarted during the outage).
//
// Where a client cannot express part of a scenario it runs the rest: dockerd only reaches docker.io
// through `registry-mirrors`, so its ghcr.io side is exercised by priming the mirror over HTTP instead;
// skopeo does not run containers, so it checks every copied blob against its digest instead.
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import { sha256 } from "../harness/image-builder.ts";
import { Teardown } from "../harness/processes.ts";
import { ClientCommandError, formatRef, type Client, type ClientFactory, type ImageRef } from "./client.ts";
import { byDigest, byTag, distinctBlobs, type Catalogue, type CatalogueImage } from "./images.ts";
import type { ScenarioTable } from "./summary.ts";
import { MIRROR_TIMING, startWorld, type World } from "./world.ts";

const SCENARIO_TIMEOUT_MS = 240_000;
/**
 * Longest a pull of cached content may take while the upstreams hang. The mirror waits for a hanging upstream at
 * most `revalidateTimeout` (2 s) per tag before it serves the cached pointer (a request joining a revalidation
 * that already waited that long is answered at once); the rest is the client's own work, with headroom for a busy
 * machine. The upstream's own headers timeout is 10 s here: a mirror that waits for it fails this bound, and a
 * mirror without working timeouts keeps the client waiting for as long as the client is willing to wait.
 */
const HANG_PULL_BOUND_MS = 8_000;
/** Pulls of one cached tag in a row while the upstreams hang; the run goes on until health probes happened too. */
const HANG_RUNS = 20;
const HANG_RUNS_MAX_MS = 90_000;

/** Defines the scenarios for one client inside the caller's describe block. */
export function defineClientScenarios(factory: ClientFactory, catalogue: Catalogue, table: ScenarioTable): void {
  const teardown = new Teardown();
  let world: World;
  let client: Client;
  /** When the tags pulled in the outage scenarios were last asked upstream, at the latest. */
  let tagsCheckedBy = 0;

  const reachable = (img: CatalogueImage) => factory.registries.includes(img.registry);
  const { hello, tools, multi, teamTool, sharedOnDockerHub, sharedOnGhcr, retagBefore, retagAfter } = catalogue;
  /** What the cold pull fetches: a Docker schema 2 image, a multi-layer OCI image, and (where reachable) ghcr.io's. */
  const basics = [hello, tools, teamTool].filter(reachable);
  /** What the outage scenarios pull, by tag and by digest, from the mirror's cache alone. */
  const cachedSet = [hello, tools, multi, teamTool].filter(reachable);

  beforeAll(async () => {
    world = await startWorld(teardown, catalogue);
    client = teardown.track(await factory.start(world.endpoint), factory.name);
  });
  afterAll(() => teardown.run());

  /**
   * One row of the table and one vitest test; `note` adds a measurement to the row. Around every scenario:
   * the mirror must not have answered the client with any error (clients fall back to the real registry on
   * errors, silently for some, so an error a client recovered from is still a bug), except the 4xx refusals
   * a scenario asks for (`refusals`), which are noted.
   */
  const scenario = (
    name: string,
    work: (note: (text: string) => void) => Promise<void>,
    opts: { refusals?: boolean } = {},
  ): void => {
    table.expect(factory.name, name);
    const note = (text: string) => table.note(factory.name, name, text);
    it(name, { timeout: SCENARIO_TIMEOUT_MS }, () =>
      table.time(factory.name, name, async () => {
        const mirrorBefore = world.mirror();
        const before = await world.mirrorAnswers();
        await work(note);
        // A restarted mirror counts from zero.
        const base = world.mirror() === mirrorBefore ? before : {};
        const after = await world.mirrorAnswers();
        const answered = (cls: string) => (after[cls] ?? 0) - (base[cls] ?? 0);
        expect(answered("5xx"), `5xx answers from the mirror to ${client.name}\n${context()}`).toBe(0);
        if (opts.refusals === true) note(`mirror refused ${answered("4xx")} requests (4xx)`);
        else expect(answered("4xx"), `4xx answers from the mirror to ${client.name}\n${context()}`).toBe(0);
      }),
    );
  };

  /** Everything that explains a failed pull: the client's log and what reached the upstreams and relays. */
  const context = (): string => {
    const lines: string[] = [];
    for (const u of Object.values(world.upstreams)) {
      const upstream = u.registry
        .requests()
        .slice(-25)
        .map((r) => `  ${r.method} ${r.path} ${r.status}`);
      const relayed = u.relay.requests
        .slice(-25)
        .map((r) => `  ${r.method} ${r.path} ${r.status ?? "-"}${r.fault ? ` (${r.fault})` : ""}`);
      lines.push(
        `${u.name} upstream requests (latest):`,
        ...upstream,
        `${u.name} relay requests (latest):`,
        ...relayed,
      );
    }
    const log = client.log();
    return [...lines, ...(log === "" ? [] : [`${client.name} log (tail):`, log])].join("\n");
  };

  const pullAndCheck = async (ref: ImageRef, img: CatalogueImage): Promise<void> => {
    let pulled;
    try {
      pulled = await client.pull(ref);
    } catch (err) {
      throw new Error(
        `${client.name} could not pull ${formatRef(ref)}: ${err instanceof Error ? err.message : String(err)}\n${context()}`,
        { cause: err },
      );
    }
    expect(pulled, `${client.name} pulled ${formatRef(ref)}`).toEqual({
      digest: img.digest,
      configDigest: img.configDigest,
    });
  };

  const runAndCheck = async (ref: ImageRef, img: CatalogueImage): Promise<void> => {
    if (!factory.runs || img.output === undefined) return;
    expect(await client.run(ref), `output of running ${formatRef(ref)} with ${client.name}`).toBe(img.output);
  };

  /** The client must fail to get `ref`: the mirror holds that digest, but for the other registry. */
  const expectRefused = async (ref: ImageRef): Promise<void> => {
    const outcome = await client.pull(ref).then(
      (pulled) => pulled,
      (err: unknown) => err,
    );
    expect(
      outcome,
      `${client.name} pulling ${formatRef(ref)} must fail, since that digest belongs to the other registry`,
    ).toBeInstanceOf(ClientCommandError);
  };

  /**
   * From a fresh client store, every cached image by tag and by digest, then run; each pull within `boundMs`.
   * Returns a note on the slowest pull.
   */
  const pullCachedSet = async (boundMs?: number): Promise<string> => {
    await client.reset();
    let slowest = { ms: 0, ref: "" };
    for (const img of cachedSet) {
      for (const ref of [byTag(img), byDigest(img)]) {
        const started = performance.now();
        await pullAndCheck(ref, img);
        const took = performance.now() - started;
        if (took > slowest.ms)
          slowest = { ms: took, ref: formatRef(ref).replace(/(sha256:[0-9a-f]{12})[0-9a-f]{52}/, "$1…") };
        if (boundMs !== undefined)
          expect(took, `${client.name} pull of ${formatRef(ref)} took ${took.toFixed(0)} ms`).toBeLessThan(boundMs);
      }
    }
    for (const img of cachedSet) await runAndCheck(byTag(img), img);
    const bound = boundMs === undefined ? "" : `, bound ${boundMs / 1000} s`;
    return `${cachedSet.length * 2} pulls, slowest ${(slowest.ms / 1000).toFixed(1)} s (${slowest.ref})${bound}`;
  };

  scenario("cold pull", async (note) => {
    await world.syncUpstreams();
    world.clearUpstreamLogs();
    for (const u of Object.values(world.upstreams)) u.tokens.clearRequests();
    for (const img of basics) {
      await pullAndCheck(byTag(img), img);
      await runAndCheck(byTag(img), img);
    }
    await world.syncUpstreams();
    for (const img of basics) {
      const gets = world.upstreams[img.registry].registry.count({
        method: "GET",
        kind: "manifests",
        repo: img.repo,
        status: 200,
      });
      expect(gets, `manifest GETs of ${img.repo} at ${img.registry}`).toBeGreaterThanOrEqual(1);
    }
    // Each blob came from each upstream that serves it exactly once, layers shared between images included:
    // the mirror downloads a blob once per upstream and confirms it for that upstream's other repositories with
    // a HEAD. (A layer two upstreams share is fetched from each: one upstream's bytes never answer for another,
    // docs/security.md "What a repository name unlocks".) Clients with a content store of their own (dockerd,
    // containerd, podman) may not ask for a layer twice at all; those that do (skopeo) must not cause a second GET.
    for (const blob of distinctBlobs(basics)) {
      const servedBy = new Set(
        basics.filter((img) => img.blobs.some((b) => b.digest === blob.digest)).map((img) => img.registry),
      );
      const gets = world.upstreamBlobGets(blob.digest);
      expect(gets, `upstream GETs of ${blob.mediaType} ${blob.digest}\n${context()}`).toBeGreaterThanOrEqual(1);
      expect(gets, `upstream GETs of ${blob.mediaType} ${blob.digest}\n${context()}`).toBeLessThanOrEqual(
        servedBy.size,
      );
      for (const registry of servedBy) {
        const here = world.upstreams[registry].registry.count({
          method: "GET",
          kind: "blobs",
          status: 200,
          pathIncludes: blob.digest,
        });
        expect(here, `GETs of ${blob.digest} at ${registry}\n${context()}`).toBeLessThanOrEqual(1);
      }
    }
    // The upstreams demand bearer tokens: the mirror got them from each one's token server.
    for (const registry of new Set(basics.map((img) => img.registry))) {
      expect(
        world.upstreams[registry].tokens.count({ status: 200 }),
        `tokens issued to the mirror by ${registry}'s token server`,
      ).toBeGreaterThan(0);
    }
    note(`${basics.length} images, ${distinctBlobs(basics).length} blobs each fetched once per upstream serving it`);
  });

  scenario("multi-arch index", async (note) => {
    await world.syncUpstreams();
    world.clearUpstreamLogs();
    await pullAndCheck(byTag(multi), multi);
    await runAndCheck(byTag(multi), multi);
    await world.syncUpstreams();
    for (const blob of multi.arm64.blobs()) {
      expect(world.upstreamBlobGets(blob.digest), `a linux/amd64 pull fetched arm64 blob ${blob.digest}`).toBe(0);
    }
    note("linux/amd64 child taken, no arm64 blob fetched");
    if (client.pullAllPlatforms === undefined) return;
    const all = await client.pullAllPlatforms(byTag(multi));
    expect(all.digest).toBe(multi.digest);
    expect([...all.configDigests].sort()).toEqual([multi.amd64.config.digest, multi.arm64.config.digest].sort());
    await world.syncUpstreams();
    for (const blob of multi.arm64.blobs())
      expect(world.upstreamBlobGets(blob.digest), `upstream GETs of arm64 blob ${blob.digest}`).toBe(1);
    note("all platforms copied too");
  });

  scenario("pull by digest", async () => {
    await client.reset();
    for (const img of cachedSet) await pullAndCheck(byDigest(img), img);
    for (const img of cachedSet) await runAndCheck(byDigest(img), img);
  });

  scenario(
    "same name, two upstreams",
    async () => {
      // Both upstreams have e2e/shared:v1, with different content; the mirror ends up holding both.
      if (reachable(sharedOnGhcr)) {
        await pullAndCheck(byTag(sharedOnGhcr), sharedOnGhcr);
        await runAndCheck(byTag(sharedOnGhcr), sharedOnGhcr);
      } else {
        await primeThroughMirror(world, sharedOnGhcr);
      }
      await pullAndCheck(byTag(sharedOnDockerHub), sharedOnDockerHub);
      await runAndCheck(byTag(sharedOnDockerHub), sharedOnDockerHub);
      await expectRefused({ registry: "docker.io", repo: sharedOnDockerHub.repo, digest: sharedOnGhcr.digest });
      if (reachable(sharedOnGhcr))
        await expectRefused({ registry: "ghcr.io", repo: sharedOnGhcr.repo, digest: sharedOnDockerHub.digest });
    },
    { refusals: true },
  );

  scenario("warm pull", async (note) => {
    const warmSet = [...cachedSet, sharedOnDockerHub, sharedOnGhcr].filter(reachable);
    await client.reset();
    await world.syncUpstreams();
    world.clearUpstreamLogs();
    const hitsBefore = await world.mirrorCounter("mirror_requests_total", { kind: "blob", result: "hit" });
    for (const img of warmSet) await pullAndCheck(byTag(img), img);
    tagsCheckedBy = Date.now();
    await world.syncUpstreams();
    expect(world.upstreamBlobGets(), `blob GETs at the upstreams during a warm pull\n${context()}`).toBe(0);
    // The client did fetch every blob again, from the mirror's cache.
    const hits = (await world.mirrorCounter("mirror_requests_total", { kind: "blob", result: "hit" })) - hitsBefore;
    expect(hits, "blob requests the mirror answered from its cache").toBeGreaterThanOrEqual(
      distinctBlobs(warmSet).length,
    );
    note(`${warmSet.length} images, ${hits} blob requests served from cache, 0 upstream blob GETs`);
  });

  scenario("retag seen after TTL", async (note) => {
    const started = Date.now();
    await pullAndCheck(byTag(retagBefore), retagBefore);
    const firstPulled = Date.now();
    await world.push(retagAfter); // the same tag now names another image upstream
    await pullAndCheck(byTag(retagBefore), retagBefore);
    // Only meaningful if that second pull asked while the mirror's pointer was still fresh.
    const secondDone = Date.now() - started;
    expect(secondDone, "the second pull must finish within the tag TTL for 'not before' to be tested").toBeLessThan(
      MIRROR_TIMING.tagTtlMs,
    );
    await sleepUntil(firstPulled + MIRROR_TIMING.tagTtlMs + 1_000);
    await pullAndCheck(byTag(retagAfter), retagAfter);
    note(
      `old digest at +${(secondDone / 1000).toFixed(1)} s, new at +${((Date.now() - started) / 1000).toFixed(1)} s (TTL ${MIRROR_TIMING.tagTtlMs / 1000} s)`,
    );
  });

  scenario("upstreams hanging", async (note) => {
    // Every cached tag must be past its TTL, so each tag request does try the (hanging) upstream first.
    await sleepUntil(tagsCheckedBy + MIRROR_TIMING.tagTtlMs + 1_000);
    world.hangUpstreams();
    const staleBefore = await world.mirrorCounter("mirror_stale_served_total");
    note(await pullCachedSet(HANG_PULL_BOUND_MS));
    const stalled = Object.values(world.upstreams).reduce(
      (n, u) => n + u.relay.requests.filter((r) => r.fault === "stallHeaders").length,
      0,
    );
    expect(stalled, "requests the mirror sent to the hanging upstreams").toBeGreaterThan(0);
    note(`${stalled} upstream requests hung`);
    expect((await world.mirrorCounter("mirror_stale_served_total")) - staleBefore, "tags served stale").toBeGreaterThan(
      0,
    );
  });

  scenario("upstreams hanging: one cached tag, pull after pull", async (note) => {
    // Past the TTL already (the scenario before hung every revalidation). Pulls of the same tag in a row, at
    // least HANG_RUNS of them and until the mirror has sent the hanging upstream a health probe: its first
    // revalidation hangs for the headers timeout (10 s) and marks the upstream down; then a probe goes through
    // every few seconds and hangs too. Every pull meanwhile must be answered from the cache within the bound.
    const img = cachedSet[0]!;
    const stalledTags = () =>
      world.upstreams[img.registry].relay.requests.filter(
        (r) => r.fault === "stallHeaders" && r.path.includes("/manifests/"),
      ).length;
    const stalledBefore = stalledTags();
    const started = performance.now();
    const took: number[] = [];
    while (took.length < HANG_RUNS || stalledTags() - stalledBefore < 2) {
      expect(performance.now() - started, `pulls in ${HANG_RUNS_MAX_MS / 1000} s without a health probe`).toBeLessThan(
        HANG_RUNS_MAX_MS,
      );
      const began = performance.now();
      await pullAndCheck(byTag(img), img);
      took.push(performance.now() - began);
      expect(took.at(-1), `${client.name} pull ${took.length} of ${formatRef(byTag(img))}`).toBeLessThan(
        HANG_PULL_BOUND_MS,
      );
    }
    const sorted = [...took].sort((a, b) => a - b);
    note(
      `${took.length} pulls in ${((performance.now() - started) / 1000).toFixed(0)} s, ${stalledTags() - stalledBefore} tag requests hung upstream; ` +
        `median ${(sorted[sorted.length >> 1]! / 1000).toFixed(1)} s, slowest ${(sorted.at(-1)! / 1000).toFixed(1)} s`,
    );
  });

  scenario("upstreams stopped", async (note) => {
    await world.stopUpstreams();
    for (const u of Object.values(world.upstreams)) {
      await expect(
        fetch(`${u.relay.url}/v2/`, { signal: AbortSignal.timeout(5_000) }),
        `${u.name} should be unreachable`,
      ).rejects.toThrow();
    }
    const staleBefore = await world.mirrorCounter("mirror_stale_served_total");
    note(await pullCachedSet());
    expect((await world.mirrorCounter("mirror_stale_served_total")) - staleBefore, "tags served stale").toBeGreaterThan(
      0,
    );
  });

  scenario("mirror restart, upstreams down", async (note) => {
    await world.restartMirror();
    note(await pullCachedSet());
    expect(
      await world.mirrorCounter("mirror_stale_served_total"),
      "tags the restarted mirror served stale",
    ).toBeGreaterThan(0);
  });
}

/**
 * Fetches an image through the mirror over plain HTTP (path-prefix style), so the mirror holds it although
 * the client under test cannot reach that registry itself.
 */
async function primeThroughMirror(world: World, img: CatalogueImage): Promise<void> {
  const base = `${world.endpoint.url}/v2/${img.registry}/${img.repo}`;
  const accept = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
  ].join(", ");
  const manifest = await fetch(`${base}/manifests/${img.tag}`, { headers: { accept } });
  expect(manifest.status, `GET ${base}/manifests/${img.tag}`).toBe(200);
  expect(sha256(Buffer.from(await manifest.arrayBuffer()))).toBe(img.digest);
  for (const blob of img.blobs) {
    const res = await fetch(`${base}/blobs/${blob.digest}`);
    expect(res.status, `GET ${base}/blobs/${blob.digest}`).toBe(200);
    expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(blob.digest);
  }
}

async function sleepUntil(when: number): Promise<void> {
  const ms = when - Date.now();
  if (ms > 0) await sleep(ms);
}
