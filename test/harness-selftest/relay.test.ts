// Self-tests of the fault-injecting relay in front of a real registry: byte-exact pass-through, and each
// fault doing exactly what it claims to blob GETs and nothing to anything else.
import { get, type IncomingHttpHeaders } from "node:http";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  buildImage,
  MediaTypes,
  pushImage,
  randomLayer,
  sha256,
  type Blob,
  type BuiltImage,
} from "../harness/image-builder.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { Teardown } from "../harness/processes.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

const REPO = "selftest/relay";

interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** Set when the connection broke before the response was complete. */
  error?: string;
  /** Byte counts seen at ~intervals while the body was arriving (for observing throttling). */
  progress: number[];
}

/**
 * GET with node:http rather than fetch, to see exactly what arrived even when the response breaks off,
 * and to sample progress while it arrives.
 */
function rawGet(
  url: string,
  opts: { headers?: Record<string, string>; sampleEveryMs?: number } = {},
): Promise<RawResponse> {
  return new Promise((resolve) => {
    const req = get(url, { headers: opts.headers ?? {}, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      let received = 0;
      const progress: number[] = [];
      const sampler =
        opts.sampleEveryMs === undefined ? undefined : setInterval(() => progress.push(received), opts.sampleEveryMs);
      const finish = (error?: string): void => {
        if (sampler !== undefined) clearInterval(sampler);
        const result: RawResponse = {
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks),
          progress,
        };
        if (error !== undefined) result.error = error;
        resolve(result);
      };
      res.on("data", (c: Buffer) => {
        chunks.push(c);
        received += c.length;
      });
      res.on("end", () => finish(res.complete ? undefined : "incomplete"));
      res.on("error", (e) => finish(e.message));
    });
    req.on("error", (e) => resolve({ status: 0, headers: {}, body: Buffer.alloc(0), error: e.message, progress: [] }));
  });
}

describe("startRelay", () => {
  let registry: Registry;
  let relay: Relay;
  let image: BuiltImage;
  let layer: Blob;

  beforeAll(async () => {
    registry = teardown.track(await startRegistry());
    layer = randomLayer(3 * 1024 * 1024);
    image = buildImage({ layers: [layer], format: "oci" });
    await pushImage(registry.url, REPO, "v1", image);
    relay = teardown.track(await startRelay(registry.url));
  });

  beforeEach(() => {
    relay.setFault(null);
    relay.requests.length = 0;
  });

  const blobUrl = (): string => `${relay.url}/v2/${REPO}/blobs/${layer.digest}`;
  const manifestUrl = (): string => `${relay.url}/v2/${REPO}/manifests/v1`;
  const accept = { accept: MediaTypes.ociManifest };

  it("listens on loopback and passes manifests, blobs, HEADs and errors through unchanged", async () => {
    expect(relay.url).toBe(`http://${relay.host}`);
    expect(relay.host).toMatch(/^127\.0\.0\.1:\d+$/);

    const direct = await rawGet(`${registry.url}/v2/${REPO}/manifests/v1`, { headers: accept });
    const viaRelay = await rawGet(manifestUrl(), { headers: accept });
    expect(viaRelay.status).toBe(200);
    expect(viaRelay.body.equals(image.manifest)).toBe(true);
    for (const h of [
      "content-type",
      "content-length",
      "docker-content-digest",
      "docker-distribution-api-version",
      "etag",
    ]) {
      expect(viaRelay.headers[h], h).toBe(direct.headers[h]);
    }

    const blob = await rawGet(blobUrl());
    expect(blob.error).toBeUndefined();
    expect(blob.status).toBe(200);
    expect(blob.headers["docker-content-digest"]).toBe(layer.digest);
    expect(blob.headers["content-length"]).toBe(String(layer.bytes.length));
    expect(sha256(blob.body)).toBe(layer.digest);

    const head = await fetch(blobUrl(), { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.headers.get("content-length")).toBe(String(layer.bytes.length));

    const missing = await fetch(`${relay.url}/v2/${REPO}/manifests/nope`, { headers: accept });
    expect(missing.status).toBe(404);
    expect(await missing.text()).toContain("MANIFEST_UNKNOWN");

    expect(relay.requests.map((r) => `${r.method} ${r.status}`)).toEqual(["GET 200", "GET 200", "HEAD 200", "GET 404"]);
    // What each answer's body carried to the client.
    expect(relay.requests.slice(0, 3).map((r) => r.bodyBytes)).toEqual([image.manifest.length, layer.bytes.length, 0]);
  });

  it("counts only the body bytes it relayed: a truncated body counts what was sent", async () => {
    relay.setFault({ kind: "truncate", afterBytes: 100_000 });
    const blob = await rawGet(blobUrl());
    expect(blob.body.length).toBe(100_000);
    expect(relay.requests.map((r) => r.bodyBytes)).toEqual([100_000]);
  });

  it("passes pushes through, with upload Locations leading back through the relay", async () => {
    const other = buildImage({ layers: [randomLayer(10_000)], format: "docker" });
    await pushImage(relay.url, "selftest/pushed-via-relay", "v1", other);
    const puts = relay.requests.filter((r) => r.method === "PUT");
    expect(puts.map((r) => r.status)).toEqual([201, 201, 201]); // config, layer, manifest
    const m = await fetch(`${registry.url}/v2/selftest/pushed-via-relay/manifests/v1`, {
      headers: { accept: MediaTypes.dockerManifest },
    });
    expect(m.headers.get("docker-content-digest")).toBe(other.digest);
    await m.arrayBuffer();
  });

  it("corrupt: flips exactly the middle byte of blob GET bodies, nothing else", async () => {
    relay.setFault({ kind: "corrupt" });
    const blob = await rawGet(blobUrl());
    expect(blob.error).toBeUndefined();
    expect(blob.status).toBe(200);
    expect(blob.headers["docker-content-digest"]).toBe(layer.digest); // the lie the client must catch
    expect(blob.body.length).toBe(layer.bytes.length);
    expect(sha256(blob.body)).not.toBe(layer.digest);
    const differing = [...blob.body.keys()].filter((i) => blob.body[i] !== layer.bytes[i]);
    expect(differing).toEqual([Math.floor(layer.bytes.length / 2)]);
    expect(relay.requests[0]?.fault).toBe("corrupt");

    // Manifests and HEADs are untouched while the fault is set.
    const manifest = await rawGet(manifestUrl(), { headers: accept });
    expect(manifest.body.equals(image.manifest)).toBe(true);
    expect(relay.requests[1]?.fault).toBeUndefined();
    expect((await fetch(blobUrl(), { method: "HEAD" })).headers.get("content-length")).toBe(String(layer.bytes.length));
  });

  it("truncate: sends afterBytes of the body, then breaks the connection", async () => {
    relay.setFault({ kind: "truncate", afterBytes: 100_000 });
    const blob = await rawGet(blobUrl());
    expect(blob.status).toBe(200);
    expect(blob.headers["content-length"]).toBe(String(layer.bytes.length));
    expect(blob.error).toBeDefined();
    expect(blob.body.length).toBe(100_000);
    expect(blob.body.equals(layer.bytes.subarray(0, 100_000))).toBe(true);
    // fetch users see it as a failed body read.
    await expect((await fetch(blobUrl())).arrayBuffer()).rejects.toThrow();
  });

  it("throttle: slows the body so a transfer can be observed in progress, and still delivers it intact", async () => {
    const bytesPerSecond = 4 * 1024 * 1024; // the 3 MiB layer takes ~0.75 s
    relay.setFault({ kind: "throttle", bytesPerSecond });
    const t0 = Date.now();
    const blob = await rawGet(blobUrl(), { sampleEveryMs: 100 });
    const took = Date.now() - t0;
    expect(blob.error).toBeUndefined();
    expect(sha256(blob.body)).toBe(layer.digest);
    expect(took).toBeGreaterThanOrEqual(600);
    expect(took).toBeLessThan(5_000);
    // Part-way samples: some bytes arrived, not all of them.
    expect(blob.progress.some((n) => n > 0 && n < layer.bytes.length)).toBe(true);
  });

  it("wrongLength: a complete-looking response one byte short, Content-Length included", async () => {
    relay.setFault({ kind: "wrongLength" });
    const blob = await rawGet(blobUrl());
    expect(blob.error).toBeUndefined(); // nothing at the HTTP level gives it away
    expect(blob.status).toBe(200);
    expect(blob.headers["content-length"]).toBe(String(layer.bytes.length - 1));
    expect(blob.headers["docker-content-digest"]).toBe(layer.digest);
    expect(blob.body.equals(layer.bytes.subarray(0, layer.bytes.length - 1))).toBe(true);
    expect(sha256(blob.body)).not.toBe(layer.digest);
  });

  it("emptyBody: a complete-looking empty 200 for a blob that is not empty", async () => {
    relay.setFault({ kind: "emptyBody" });
    const blob = await rawGet(blobUrl());
    expect(blob.error).toBeUndefined();
    expect(blob.status).toBe(200);
    expect(blob.headers["content-length"]).toBe("0");
    expect(blob.headers["docker-content-digest"]).toBe(layer.digest);
    expect(blob.body.length).toBe(0);
  });

  it("setFault(null) restores byte-exact pass-through", async () => {
    relay.setFault({ kind: "corrupt" });
    relay.setFault(null);
    const blob = await rawGet(blobUrl());
    expect(sha256(blob.body)).toBe(layer.digest);
  });

  it("answers 502 when the upstream is down, and stop() ends transfers in flight", async () => {
    const deadRelay = teardown.track(await startRelay("http://127.0.0.1:1"));
    const res = await fetch(`${deadRelay.url}/v2/`);
    expect(res.status).toBe(502);
    await res.arrayBuffer();

    const slow = teardown.track(await startRelay(registry.url));
    slow.setFault({ kind: "throttle", bytesPerSecond: 64 * 1024 }); // would take ~50 s
    const pending = rawGet(`${slow.url}/v2/${REPO}/blobs/${layer.digest}`);
    await new Promise((r) => setTimeout(r, 200));
    const t0 = Date.now();
    await slow.stop();
    expect(Date.now() - t0).toBeLessThan(2_000);
    const cut = await pending;
    expect(cut.error).toBeDefined();
    expect(cut.body.length).toBeLessThan(layer.bytes.length);
  });
});
