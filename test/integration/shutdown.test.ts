/**
 * Graceful shutdown of a mirror with a download in progress: each part is stopped once, in order. New
 * connections are refused before anything else; running fills get their grace; clients still connected are cut
 * off after it; then the upstream pools, the metadata store and the data directory's lock, in that order.
 */
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Janitor } from "../../src/cache/janitor.ts";
import { FillCoordinator } from "../../src/fill/fill-coordinator.ts";
import { EmbeddedMetadataStore } from "../../src/metadata/embedded-metadata-store.ts";
import { DataDirLock } from "../../src/storage/data-dir-lock.ts";
import { UpstreamClient } from "../../src/upstream/upstream-client.ts";
import { buildImage, pushImage, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror } from "../harness/mirror.ts";
import { Teardown, waitFor } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { fetchRaw } from "./client.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());
let upstream: Registry;
let relay: Relay;

beforeAll(async () => {
  upstream = teardown.track(await startRegistry());
  relay = teardown.track(await startRelay(upstream.url));
});

/** Whether a TCP connection to the port is accepted. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

describe("shutdown", () => {
  it("stops each part once: accepting, then fills (with their grace), then clients, upstream pools, metadata and the lock", async () => {
    const layer = randomLayer(1024 * 1024);
    await pushImage(upstream.url, "team/shutdown", "v1", buildImage({ format: "oci", layers: [layer] }));
    // No idle timeout to end the stall below: shutdown must not wait for it once the grace is over.
    const mirror = await startTestMirror({
      upstreams: { "docker.io": { url: relay.url, default: true, timeouts: { bodyIdle: "10m" } } },
      extra: { shutdownGrace: "1s" },
    });
    // The download stalls part-way: the fill is running when the shutdown begins, and outlasts its grace.
    relay.setFault({ kind: "stallBody", afterBytes: 64 * 1024, match: /^GET .*\/blobs\// });
    const events: string[] = [];
    const pulling = fetchRaw(`${mirror.url}/v2/team/shutdown/blobs/${layer.digest}`).then((res) => {
      events.push(res.broken !== undefined ? "client cut off" : `client answered ${res.status}`);
    });
    await waitFor(async () => mirror.mirror.fillsInFlight === 1, { timeoutMs: 10_000, what: "the fill to start" });

    // The real methods, called below with the spied object as `this`.
    /* eslint-disable @typescript-eslint/unbound-method */
    const original = {
      stop: Janitor.prototype.stop,
      drain: FillCoordinator.prototype.drain,
      upstreamClose: UpstreamClient.prototype.close,
      metadataClose: EmbeddedMetadataStore.prototype.close,
      release: DataDirLock.prototype.release,
    };
    /* eslint-enable @typescript-eslint/unbound-method */
    const spies = [
      vi.spyOn(Janitor.prototype, "stop").mockImplementation(function (this: Janitor) {
        events.push("janitor stopped");
        original.stop.call(this);
      }),
      vi.spyOn(FillCoordinator.prototype, "drain").mockImplementation(async function (
        this: FillCoordinator,
        ms: number,
      ) {
        events.push(`fills draining, new connections accepted: ${await accepts(mirror.port)}`);
        await original.drain.call(this, ms);
        events.push("fills drained");
      }),
      vi.spyOn(UpstreamClient.prototype, "close").mockImplementation(async function (this: UpstreamClient) {
        events.push("upstream pool closed");
        await original.upstreamClose.call(this);
      }),
      vi.spyOn(EmbeddedMetadataStore.prototype, "close").mockImplementation(async function (
        this: EmbeddedMetadataStore,
      ) {
        events.push("metadata store closed");
        await original.metadataClose.call(this);
      }),
      vi.spyOn(DataDirLock.prototype, "release").mockImplementation(async function (this: DataDirLock) {
        events.push("lock released");
        await original.release.call(this);
      }),
    ];
    try {
      await mirror.stop();
      await mirror.mirror.close(); // again: nothing is stopped twice
      await pulling;
    } finally {
      for (const spy of spies) spy.mockRestore();
      relay.setFault(null);
    }
    expect(events.filter((e) => !e.startsWith("client"))).toEqual([
      "janitor stopped",
      "fills draining, new connections accepted: false",
      "fills drained",
      "upstream pool closed",
      "metadata store closed",
      "lock released",
    ]);
    // The client that was reading the stalled download kept its connection through the grace.
    expect(events.indexOf("client cut off")).toBeGreaterThan(events.indexOf("fills drained"));
  });
});
