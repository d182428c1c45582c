/**
 * The pull-through core against a real upstream: Debian's docker-registry (distribution 2.8) on loopback,
 * seeded with images built here. Upstream requests are counted at the upstream, from its own log.
 */
import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildImage,
  buildIndex,
  pushBlob,
  pushImage,
  pushIndex,
  randomLayer,
  type BuiltImage,
  type BuiltIndex,
} from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { startRedis } from "../harness/redis.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

let upstream: Registry;
let mirror: TestMirror;
let dockerImage: BuiltImage;
let ociImage: BuiltImage;
let index: BuiltIndex;

beforeAll(async () => {
  upstream = await startRegistry();
  dockerImage = buildImage({
    format: "docker",
    layers: [randomLayer(300_000, { format: "docker" }), randomLayer(2_000_000, { format: "docker" })],
  });
  ociImage = buildImage({ format: "oci", layers: [randomLayer(150_000), randomLayer(80_000), randomLayer(1_200_000)] });
  const amd64 = buildImage({ format: "oci", architecture: "amd64", layers: [randomLayer(100_000)] });
  const arm64 = buildImage({ format: "oci", architecture: "arm64", layers: [randomLayer(100_000)] });
  index = buildIndex([amd64, arm64]);
  await pushImage(upstream.url, "library/schema2", "v1", dockerImage);
  await pushImage(upstream.url, "team/oci", "v1", ociImage);
  await pushIndex(upstream.url, "team/multi", "v1", index);
  mirror = await startTestMirror({ upstreams: { "docker.io": { url: upstream.url, default: true, tagTtl: "10m" } } });
});

afterAll(async () => {
  await mirror?.stop();
  await upstream?.dispose();
});

const api = (path: string) => `${mirror.url}/v2/${path}`;

describe("pull-through: content", () => {
  it("answers GET /v2/ with the API version header", async () => {
    const res = await fetchRaw(`${mirror.url}/v2/`);
    expect(res.status).toBe(200);
    expect(res.headers["docker-distribution-api-version"]).toBe("registry/2.0");
  });

  it("serves manifests byte-exact by tag and by digest, and every blob byte-exact", async () => {
    for (const [repo, image] of [
      ["library/schema2", dockerImage],
      ["team/oci", ociImage],
    ] as const) {
      const byTag = await fetchRaw(api(`${repo}/manifests/v1`), { headers: { accept: ALL_MANIFEST_TYPES } });
      expect(byTag.status).toBe(200);
      expect(byTag.body.equals(image.manifest)).toBe(true);
      expect(byTag.headers["content-type"]).toBe(image.mediaType);
      expect(byTag.headers["docker-content-digest"]).toBe(image.digest);
      expect(byTag.headers["content-length"]).toBe(String(image.manifest.length));
      const byDigest = await fetchRaw(api(`${repo}/manifests/${image.digest}`), {
        headers: { accept: image.mediaType },
      });
      expect(byDigest.body.equals(image.manifest)).toBe(true);
      for (const blob of image.blobs()) {
        const res = await fetchRaw(api(`${repo}/blobs/${blob.digest}`));
        expect(res.status).toBe(200);
        expect(sha256(res.body)).toBe(blob.digest);
        expect(res.headers["docker-content-digest"]).toBe(blob.digest);
        expect(res.headers["content-length"]).toBe(String(blob.bytes.length));
      }
    }
  });

  it("serves a multi-arch index and its children", async () => {
    const res = await fetchRaw(api("team/multi/manifests/v1"), { headers: { accept: ALL_MANIFEST_TYPES } });
    expect(res.body.equals(index.manifest)).toBe(true);
    expect(res.headers["content-type"]).toBe("application/vnd.oci.image.index.v1+json");
    for (const child of index.children) {
      const m = await fetchRaw(api(`team/multi/manifests/${child.digest}`), {
        headers: { accept: ALL_MANIFEST_TYPES },
      });
      expect(m.body.equals(child.manifest)).toBe(true);
      for (const blob of child.blobs())
        expect(sha256((await fetchRaw(api(`team/multi/blobs/${blob.digest}`))).body)).toBe(blob.digest);
    }
  });

  it("answers HEAD with the headers of GET and no body", async () => {
    const m = await fetchRaw(api("library/schema2/manifests/v1"), {
      method: "HEAD",
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(m.status).toBe(200);
    expect(m.body.length).toBe(0);
    expect(m.headers).toMatchObject({
      "content-length": String(dockerImage.manifest.length),
      "docker-content-digest": dockerImage.digest,
      "content-type": dockerImage.mediaType,
    });
    const layer = dockerImage.layers[1]!;
    const b = await fetchRaw(api(`library/schema2/blobs/${layer.digest}`), { method: "HEAD" });
    expect(b.status).toBe(200);
    expect(b.body.length).toBe(0);
    expect(b.headers).toMatchObject({
      "content-length": String(layer.bytes.length),
      "docker-content-digest": layer.digest,
    });
  });

  it("HEAD of a blob not yet cached asks the upstream without downloading it", async () => {
    const image = buildImage({ format: "oci", layers: [randomLayer(64_000)] });
    await pushImage(upstream.url, "team/headonly", "v1", image);
    await upstream.sync();
    upstream.clearRequests();
    const layer = image.layers[0]!;
    const res = await fetchRaw(api(`team/headonly/blobs/${layer.digest}`), { method: "HEAD" });
    expect(res.status).toBe(200);
    expect(res.headers["content-length"]).toBe(String(layer.bytes.length));
    await upstream.sync();
    expect(upstream.count({ method: "HEAD", kind: "blobs" })).toBe(1);
    expect(upstream.count({ method: "GET", kind: "blobs" })).toBe(0);
  });

  it("routes by ns= and by path prefix to the same upstream content", async () => {
    const layer = ociImage.layers[0]!;
    const byNs = await fetchRaw(`${mirror.url}/v2/team/oci/blobs/${layer.digest}?ns=docker.io`);
    const byPrefix = await fetchRaw(api(`docker.io/team/oci/blobs/${layer.digest}`));
    expect(sha256(byNs.body)).toBe(layer.digest);
    expect(sha256(byPrefix.body)).toBe(layer.digest);
  });

  it("answers tags/list from the upstream's whole list, paging it itself", async () => {
    await pushImage(upstream.url, "team/oci", "v2", ociImage);
    await pushImage(upstream.url, "team/oci", "v3", ociImage);
    const all = await fetchRaw(api("team/oci/tags/list"));
    expect(JSON.parse(all.body.toString())).toEqual({ name: "team/oci", tags: ["v1", "v2", "v3"] });
    await upstream.sync();
    upstream.clearRequests();
    const page = await fetchRaw(api("team/oci/tags/list?n=1&last=v1"));
    expect(JSON.parse(page.body.toString())).toEqual({ name: "team/oci", tags: ["v2"] });
    expect(page.headers.link).toBe('</v2/team/oci/tags/list?n=1&last=v2>; rel="next"');
    // The client's n and last are the mirror's to apply: the upstream is asked for the whole list.
    await upstream.sync();
    expect(upstream.count({ method: "GET", kind: "tags" })).toBe(1);
    expect(upstream.count({ method: "GET", kind: "tags", pathIncludes: "last=" })).toBe(0);
  });

  it("never sends a manifest type the client's Accept excludes", async () => {
    const res = await fetchRaw(api("library/schema2/manifests/v1"), {
      headers: { accept: "application/vnd.oci.image.manifest.v1+json" },
    });
    expect(res.status).toBe(404);
    expect(errorCode(res)).toBe("MANIFEST_UNKNOWN");
    expect(res.body.toString()).toMatch(/Accept/);
  });
});

describe("pull-through: cache", () => {
  it("serves a second pull entirely from cache with the upstream stopped", async () => {
    const image = buildImage({ format: "docker", layers: [randomLayer(500_000, { format: "docker" })] });
    await pushImage(upstream.url, "library/offline", "v1", image);
    const pull = async () => {
      const m = await fetchRaw(api("library/offline/manifests/v1"), { headers: { accept: ALL_MANIFEST_TYPES } });
      expect(m.status).toBe(200);
      expect(m.body.equals(image.manifest)).toBe(true);
      const byDigest = await fetchRaw(api(`library/offline/manifests/${image.digest}`), {
        headers: { accept: ALL_MANIFEST_TYPES },
      });
      expect(byDigest.body.equals(image.manifest)).toBe(true);
      for (const blob of image.blobs()) {
        const b = await fetchRaw(api(`library/offline/blobs/${blob.digest}`));
        expect(b.status).toBe(200);
        expect(sha256(b.body)).toBe(blob.digest);
      }
      return m.headers["x-mirror-cache"];
    };
    expect(await pull()).toBe("miss");
    await upstream.stop();
    try {
      expect(await pull()).toBe("hit");
    } finally {
      await upstream.start();
    }
  });

  it("16 concurrent cold requests for one blob cause exactly one upstream GET, and all get correct bytes", async () => {
    const relay = await startRelay(upstream.url);
    const viaRelay = await startTestMirror({ upstreams: { "docker.io": { url: relay.url, default: true } } });
    try {
      const layer = randomLayer(4 * 1024 * 1024);
      const image = buildImage({ format: "oci", layers: [layer] });
      await pushImage(upstream.url, "team/concurrent", "v1", image);
      await fetchRaw(`${viaRelay.url}/v2/team/concurrent/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
      relay.setFault({ kind: "throttle", bytesPerSecond: 8 * 1024 * 1024 }); // ~0.5 s fill: the requests overlap it
      await upstream.sync();
      upstream.clearRequests();
      const results = await Promise.all(
        Array.from({ length: 16 }, () => fetchRaw(`${viaRelay.url}/v2/team/concurrent/blobs/${layer.digest}`)),
      );
      for (const res of results) {
        expect(res.status).toBe(200);
        expect(res.broken).toBeUndefined();
        expect(sha256(res.body)).toBe(layer.digest);
      }
      const sources = results.map((r) => r.headers["x-mirror-cache"]);
      expect(sources.filter((s) => s === "miss")).toHaveLength(1);
      expect(sources.filter((s) => s === "coalesced").length).toBeGreaterThan(0);
      await upstream.sync();
      expect(upstream.count({ method: "GET", kind: "blobs", pathIncludes: layer.digest })).toBe(1);
    } finally {
      await viaRelay.stop();
      await relay.stop();
    }
  });

  it("a client that aborts mid-blob still leaves the blob committed", async () => {
    const relay = await startRelay(upstream.url);
    const viaRelay = await startTestMirror({ upstreams: { "docker.io": { url: relay.url, default: true } } });
    try {
      const layer = randomLayer(3 * 1024 * 1024);
      await pushImage(upstream.url, "team/abort", "v1", buildImage({ format: "oci", layers: [layer] }));
      await fetchRaw(`${viaRelay.url}/v2/team/abort/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
      relay.setFault({ kind: "throttle", bytesPerSecond: 4 * 1024 * 1024 });
      const controller = new AbortController();
      const { request } = await import("undici");
      const res = await request(`${viaRelay.url}/v2/team/abort/blobs/${layer.digest}`, { signal: controller.signal });
      let received = 0;
      await expect(
        (async () => {
          for await (const chunk of res.body) {
            received += (chunk as Buffer).length;
            if (received > 256 * 1024) controller.abort();
          }
        })(),
      ).rejects.toThrow();
      expect(received).toBeLessThan(layer.bytes.length);
      // The fill goes on without the client; wait for the commit, then prove it is served with no upstream.
      const deadline = Date.now() + 10_000;
      while ((await viaRelay.mirror.blobStore.size(layer.digest)) === undefined && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 50));
      expect(await viaRelay.mirror.blobStore.size(layer.digest)).toBe(layer.bytes.length);
      await relay.stop();
      const again = await fetchRaw(`${viaRelay.url}/v2/team/abort/blobs/${layer.digest}`);
      expect(again.headers["x-mirror-cache"]).toBe("hit");
      expect(sha256(again.body)).toBe(layer.digest);
    } finally {
      await viaRelay.stop();
      await relay.stop();
    }
  });

  it("shares one stored blob across repositories, but only serves it where the upstream confirms it", async () => {
    const shared = randomLayer(200_000);
    await pushImage(
      upstream.url,
      "team/first",
      "v1",
      buildImage({ format: "oci", layers: [shared], labels: { n: "1" } }),
    );
    await pushImage(
      upstream.url,
      "team/second",
      "v1",
      buildImage({ format: "oci", layers: [shared], labels: { n: "2" } }),
    );
    await fetchRaw(api("team/first/manifests/v1"), { headers: { accept: ALL_MANIFEST_TYPES } });
    expect(sha256((await fetchRaw(api(`team/first/blobs/${shared.digest}`))).body)).toBe(shared.digest);
    await upstream.sync();
    upstream.clearRequests();
    // The second repository references the same layer: it is served from the one stored copy.
    await fetchRaw(api("team/second/manifests/v1"), { headers: { accept: ALL_MANIFEST_TYPES } });
    const second = await fetchRaw(api(`team/second/blobs/${shared.digest}`));
    expect(second.headers["x-mirror-cache"]).toBe("hit");
    await upstream.sync();
    expect(upstream.count({ method: "GET", kind: "blobs" })).toBe(0);
    // A repository that does not reference it upstream cannot read it by digest.
    await pushImage(upstream.url, "team/other", "v1", buildImage({ format: "oci", layers: [randomLayer(1000)] }));
    const foreign = await fetchRaw(api(`team/other/blobs/${shared.digest}`));
    expect(foreign.status).toBe(404);
    expect(errorCode(foreign)).toBe("BLOB_UNKNOWN");
  });
});

describe("pull-through: a bad upstream never gets content committed", () => {
  let relay: Relay;
  let viaRelay: TestMirror;
  beforeAll(async () => {
    relay = await startRelay(upstream.url);
    viaRelay = await startTestMirror({ upstreams: { "docker.io": { url: relay.url, default: true } } });
  });
  afterAll(async () => {
    await viaRelay?.stop();
    await relay?.stop();
  });

  for (const fault of [
    { kind: "corrupt" },
    { kind: "truncate", afterBytes: 100_000 },
    { kind: "wrongLength" },
  ] as const) {
    it(`${fault.kind}: the client's transfer breaks, nothing is committed, the next pull is correct`, async () => {
      const layer = randomLayer(600_000);
      await pushImage(
        upstream.url,
        `team/${fault.kind.toLowerCase()}`,
        "v1",
        buildImage({ format: "oci", layers: [layer] }),
      );
      const base = `${viaRelay.url}/v2/team/${fault.kind.toLowerCase()}`;
      await fetchRaw(`${base}/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
      relay.setFault(fault);
      const bad = await fetchRaw(`${base}/blobs/${layer.digest}`).catch((err: Error) => ({
        status: 0,
        broken: err,
        body: Buffer.alloc(0),
        headers: {},
      }));
      relay.setFault(null);
      // Whatever the client saw, it was never a complete, correct-looking copy of wrong content.
      const looksComplete = bad.status === 200 && bad.broken === undefined;
      expect(looksComplete && sha256(bad.body) !== layer.digest).toBe(false);
      expect(bad.broken !== undefined || bad.status >= 500).toBe(true);
      await new Promise((r) => setTimeout(r, 100));
      expect(await viaRelay.mirror.blobStore.size(layer.digest)).toBeUndefined();
      expect(await viaRelay.mirror.blobStore.tempFiles()).toEqual([]);
      const good = await fetchRaw(`${base}/blobs/${layer.digest}`);
      expect(good.status).toBe(200);
      expect(sha256(good.body)).toBe(layer.digest);
      expect(await viaRelay.mirror.blobStore.size(layer.digest)).toBe(layer.bytes.length);
    });
  }

  it("an upstream announcing 0 bytes for a blob that is not empty: an error status, never an empty 200", async () => {
    const layer = randomLayer(50_000);
    await pushImage(upstream.url, "team/emptybody", "v1", buildImage({ format: "oci", layers: [layer] }));
    relay.setFault({ kind: "emptyBody" });
    const bad = await fetchRaw(`${viaRelay.url}/v2/team/emptybody/blobs/${layer.digest}`);
    relay.setFault(null);
    expect(bad.status).toBe(502);
    expect(errorCode(bad)).toBe("UPSTREAM_ERROR");
    expect(await viaRelay.mirror.blobStore.size(layer.digest)).toBeUndefined();
    const good = await fetchRaw(`${viaRelay.url}/v2/team/emptybody/blobs/${layer.digest}`);
    expect(good.status).toBe(200);
    expect(sha256(good.body)).toBe(layer.digest);
  });

  it("refuses a manifest whose bytes do not match the digest asked for", async () => {
    // The relay does not touch manifests, so ask for a digest the upstream will answer with other bytes:
    // a tag's manifest requested under the digest of a different manifest is exactly that case upstream-side.
    const image = buildImage({ format: "oci", layers: [randomLayer(1000)] });
    await pushImage(upstream.url, "team/mdigest", "v1", image);
    const res = await fetchRaw(`${viaRelay.url}/v2/team/mdigest/manifests/${sha256(Buffer.from("not this"))}`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(res.status).toBe(404);
    expect(errorCode(res)).toBe("MANIFEST_UNKNOWN");
  });
});

describe("pull-through: ranges", () => {
  it("serves ranges of a cached blob, and 416 beyond its end", async () => {
    const layer = dockerImage.layers[1]!;
    await fetchRaw(api(`library/schema2/blobs/${layer.digest}`));
    const res = await fetchRaw(api(`library/schema2/blobs/${layer.digest}`), { headers: { range: "bytes=1000-1999" } });
    expect(res.status).toBe(206);
    expect(res.headers["content-range"]).toBe(`bytes 1000-1999/${layer.bytes.length}`);
    expect(res.headers["content-length"]).toBe("1000");
    expect(res.body.equals(layer.bytes.subarray(1000, 2000))).toBe(true);
    const suffix = await fetchRaw(api(`library/schema2/blobs/${layer.digest}`), { headers: { range: "bytes=-10" } });
    expect(suffix.body.equals(layer.bytes.subarray(layer.bytes.length - 10))).toBe(true);
    const bad = await fetchRaw(api(`library/schema2/blobs/${layer.digest}`), {
      headers: { range: `bytes=${layer.bytes.length}-` },
    });
    expect(bad.status).toBe(416);
    expect(bad.headers["content-range"]).toBe(`bytes */${layer.bytes.length}`);
    expect(errorCode(bad)).toBe("RANGE_INVALID");
  });

  it("serves a range of a cold blob (starting its fill) and of an in-flight one", async () => {
    const relay = await startRelay(upstream.url);
    const viaRelay = await startTestMirror({ upstreams: { "docker.io": { url: relay.url, default: true } } });
    try {
      const layer = randomLayer(3 * 1024 * 1024);
      await pushImage(upstream.url, "team/ranges", "v1", buildImage({ format: "oci", layers: [layer] }));
      const base = `${viaRelay.url}/v2/team/ranges`;
      await fetchRaw(`${base}/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
      relay.setFault({ kind: "throttle", bytesPerSecond: 3 * 1024 * 1024 });
      const cold = fetchRaw(`${base}/blobs/${layer.digest}`, { headers: { range: "bytes=2000000-2000099" } });
      await new Promise((r) => setTimeout(r, 150));
      const inFlight = await fetchRaw(`${base}/blobs/${layer.digest}`, { headers: { range: "bytes=10-19" } });
      expect(inFlight.status).toBe(206);
      expect(inFlight.headers["x-mirror-cache"]).toBe("coalesced");
      expect(inFlight.body.equals(layer.bytes.subarray(10, 20))).toBe(true);
      const c = await cold;
      expect(c.status).toBe(206);
      expect(c.headers["content-range"]).toBe(`bytes 2000000-2000099/${layer.bytes.length}`);
      expect(c.body.equals(layer.bytes.subarray(2_000_000, 2_000_100))).toBe(true);
      const unsatisfiable = await fetchRaw(`${base}/blobs/${layer.digest}`, { headers: { range: "bytes=99999999-" } });
      expect(unsatisfiable.status).toBe(416);
    } finally {
      await viaRelay.stop();
      await relay.stop();
    }
  });
});

describe("pull-through: errors", () => {
  const cases: Array<[string, string, { method?: "GET" | "HEAD" | "PUT" | "DELETE" | "POST" }, number, string]> = [
    ["invalid name", "/v2/Bad_Name/manifests/v1", {}, 400, "NAME_INVALID"],
    ["traversal", "/v2/a/..%2F..%2Fetc/manifests/v1", {}, 400, "NAME_INVALID"],
    ["invalid digest", "/v2/team/oci/blobs/sha256:1234", {}, 400, "DIGEST_INVALID"],
    ["invalid tag", "/v2/team/oci/manifests/-v1", {}, 404, "MANIFEST_UNKNOWN"],
    ["conformance's invalid name", "/v2/team/oci/manifests/.INVALID_MANIFEST_NAME", {}, 404, "MANIFEST_UNKNOWN"],
    ["conformance's invalid name (HEAD)", "/v2/team/oci/manifests/.INVALID_MANIFEST_NAME", { method: "HEAD" }, 404, ""],
    ["unsupported digest", `/v2/team/oci/manifests/sha512:${"0".repeat(128)}`, {}, 404, "MANIFEST_UNKNOWN"],
    ["unknown tag", "/v2/team/oci/manifests/nope", {}, 404, "MANIFEST_UNKNOWN"],
    ["unknown repository", "/v2/team/none/manifests/v1", {}, 404, "MANIFEST_UNKNOWN"],
    ["unknown blob", `/v2/team/oci/blobs/sha256:${"0".repeat(64)}`, {}, 404, "BLOB_UNKNOWN"],
    ["unknown blob (HEAD)", `/v2/team/oci/blobs/sha256:${"0".repeat(64)}`, { method: "HEAD" }, 404, ""],
    ["unconfigured ns", "/v2/team/oci/manifests/v1?ns=evil.example", {}, 404, "NAME_UNKNOWN"],
    ["push", "/v2/team/oci/manifests/v1", { method: "PUT" }, 405, "UNSUPPORTED"],
    ["delete", `/v2/team/oci/blobs/sha256:${"0".repeat(64)}`, { method: "DELETE" }, 405, "UNSUPPORTED"],
    ["upload", "/v2/team/oci/blobs/uploads/", { method: "POST" }, 405, "UNSUPPORTED"],
    ["unknown endpoint", "/v2/_unknown", {}, 404, "UNSUPPORTED"],
  ];
  it.each(cases)("%s: %s %o", async (_what, path, opts, status, code) => {
    const res = await fetchRaw(`${mirror.url}${path}`, opts);
    expect(res.status).toBe(status);
    expect(String(res.headers["content-type"])).toMatch(/^application\/json/);
    if (code !== "") expect(errorCode(res)).toBe(code);
  });

  it("reports an unreachable upstream as 503 UNAVAILABLE, quickly", async () => {
    const dead = await startTestMirror({ upstreams: { "docker.io": { url: "http://127.0.0.1:9", default: true } } });
    try {
      const started = Date.now();
      const res = await fetchRaw(`${dead.url}/v2/library/x/manifests/v1`);
      expect(res.status).toBe(503);
      expect(errorCode(res)).toBe("UNAVAILABLE");
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      await dead.stop();
    }
  });

  it("a layer digest asked for as a manifest (distribution answers 500) is MANIFEST_UNKNOWN when the mirror holds the layer", async () => {
    const layer = ociImage.layers[1]!;
    const direct = await fetchRaw(`${upstream.url}/v2/team/oci/manifests/${layer.digest}`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(direct.status).toBeGreaterThanOrEqual(500); // the upstream's own answer, which the mirror must not relay
    expect((await fetchRaw(api(`team/oci/blobs/${layer.digest}`))).status).toBe(200);
    const res = await fetchRaw(api(`team/oci/manifests/${layer.digest}`), { headers: { accept: ALL_MANIFEST_TYPES } });
    expect(res.status).toBe(404);
    expect(errorCode(res)).toBe("MANIFEST_UNKNOWN");
  });

  it("passes a manifest of nearly 4 MiB through byte-exact (the spec's floor; distribution refuses larger pushes)", async () => {
    const base = buildImage({ format: "oci", layers: [randomLayer(1000)] });
    for (const blob of base.blobs()) await pushBlob(upstream.url, "team/big", blob);
    const manifest = JSON.parse(base.manifest.toString()) as Record<string, unknown>;
    manifest.annotations = { pad: "y".repeat(4_100_000) };
    const bytes = Buffer.from(JSON.stringify(manifest));
    const put = await fetchRaw(`${upstream.url}/v2/team/big/manifests/v1`, {
      method: "PUT",
      headers: { "content-type": base.mediaType },
      body: bytes,
    });
    expect(put.status).toBe(201);
    const got = await fetchRaw(api("team/big/manifests/v1"), { headers: { accept: ALL_MANIFEST_TYPES } });
    expect(got.status).toBe(200);
    expect(got.body.equals(bytes)).toBe(true);
    expect(got.headers["docker-content-digest"]).toBe(sha256(bytes));
  });
});

describe("pull-through: durations longer than a timer", () => {
  it("serves a cold blob with fill.timeout 25d (and every timer duration past 24.8 days), and cuts no timer to 1 ms", async () => {
    // Node fires a setTimeout/setInterval delay above 2^31-1 ms after 1 ms, with this warning: each one would be
    // a fill aborted at once, a janitor running every millisecond, a Redis call that always times out.
    const overflows: string[] = [];
    const onWarning = (warning: Error) => {
      if (warning.name === "TimeoutOverflowWarning") overflows.push(warning.message);
    };
    process.on("warning", onWarning);
    const redis = await startRedis();
    const image = buildImage({ format: "oci", layers: [randomLayer(3_000_000)] });
    await pushImage(upstream.url, "library/patient", "v1", image);
    const patient = await startTestMirror({
      upstreams: {
        "docker.io": {
          url: upstream.url,
          default: true,
          timeouts: { connect: "25d", headers: "25d", bodyIdle: "25d" },
        },
      },
      extra: {
        fill: { timeout: "25d" },
        storage: { checkInterval: "30d" },
        limits: { idleTimeout: "25d" },
        redis: { url: redis.url, commandTimeout: "25d" },
        shutdownGrace: "25d",
      },
    });
    try {
      const manifest = await fetchRaw(`${patient.url}/v2/library/patient/manifests/v1`, {
        headers: { accept: ALL_MANIFEST_TYPES },
      });
      expect(manifest.status).toBe(200);
      const layer = image.blobs().reduce((a, b) => (b.bytes.length > a.bytes.length ? b : a));
      for (const pull of ["cold", "cached"]) {
        const res = await fetchRaw(`${patient.url}/v2/library/patient/blobs/${layer.digest}`);
        expect(res.status, `${pull}: ${res.body.toString().slice(0, 200)}`).toBe(200);
        expect(sha256(res.body), pull).toBe(layer.digest);
      }
      const ready = await fetchRaw(`${patient.url}/readyz`);
      expect(JSON.parse(ready.body.toString())).toEqual({ status: "ready", reasons: [] });
    } finally {
      await patient.stop();
      await redis.dispose();
      process.off("warning", onWarning);
    }
    expect(overflows).toEqual([]);
  });
});
