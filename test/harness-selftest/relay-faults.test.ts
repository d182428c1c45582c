// Self-tests of the relay's request-level faults (status, reset, stallHeaders, stallBody), its blob
// redirects to a blob host, and the blob host itself (signed URLs, ranges, Authorization recording),
// against a real registry, open and with token auth.
import { request, type IncomingHttpHeaders } from "node:http";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { startBlobHost, type BlobHost } from "../harness/blob-host.ts";
import {
  buildImage,
  MediaTypes,
  pushImage,
  randomLayer,
  sha256,
  type Blob,
  type BuiltImage,
} from "../harness/image-builder.ts";
import { Teardown } from "../harness/processes.ts";
import { RegistryAuthenticator, startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { startTokenServer } from "../harness/token-server.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

const REPO = "selftest/faults";
const ACCEPT = { accept: MediaTypes.ociManifest };

interface Observed {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** How it ended within the observation window: complete, broken (with the error code), or still open. */
  outcome: "complete" | "open" | `error:${string}`;
  /** Whether the response headers had arrived by the end of the window. */
  gotHeaders: boolean;
}

/**
 * A request with node:http that watches for at most `windowMs`, then gives up (destroying the request):
 * this is how a test sees "no answer", "part of the body then silence" and "connection reset" for what
 * they are, which fetch would blur into one timeout or one TypeError.
 */
function observe(
  url: string,
  opts: { method?: string; headers?: Record<string, string>; windowMs?: number } = {},
): Promise<Observed> {
  return new Promise((resolve) => {
    const result: Observed = { status: 0, headers: {}, body: Buffer.alloc(0), outcome: "open", gotHeaders: false };
    const chunks: Buffer[] = [];
    let settled = false;
    const settle = (outcome: Observed["outcome"]): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      result.outcome = outcome;
      result.body = Buffer.concat(chunks);
      req.destroy();
      resolve(result);
    };
    const req = request(url, { method: opts.method ?? "GET", headers: opts.headers ?? {}, agent: false }, (res) => {
      result.gotHeaders = true;
      result.status = res.statusCode ?? 0;
      result.headers = res.headers;
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => settle(res.complete ? "complete" : "error:incomplete"));
      res.on("error", (e: NodeJS.ErrnoException) => settle(`error:${e.code ?? e.message}`));
    });
    req.on("error", (e: NodeJS.ErrnoException) => settle(`error:${e.code ?? e.message}`));
    req.end();
    const timer = setTimeout(() => settle("open"), opts.windowMs ?? 5_000);
  });
}

describe("relay request faults and blob redirects (open registry)", () => {
  let registry: Registry;
  let relay: Relay;
  let blobHost: BlobHost;
  let image: BuiltImage;
  let layer: Blob;

  beforeAll(async () => {
    registry = teardown.track(await startRegistry());
    layer = randomLayer(1024 * 1024);
    image = buildImage({ layers: [layer], format: "oci" });
    await pushImage(registry.url, REPO, "v1", image);
    relay = teardown.track(await startRelay(registry.url));
    blobHost = teardown.track(await startBlobHost(registry));
  });

  beforeEach(() => {
    relay.setFault(null);
    relay.requests.length = 0;
    blobHost.requests.length = 0;
  });

  const manifestUrl = (): string => `${relay.url}/v2/${REPO}/manifests/v1`;
  const blobUrl = (digest = layer.digest): string => `${relay.url}/v2/${REPO}/blobs/${digest}`;

  /** How many requests for `pathIncludes` reached the registry since the last clear. */
  const upstreamCount = async (pathIncludes: string): Promise<number> => {
    await registry.sync();
    return registry.count({ pathIncludes });
  };

  it("status: answers the injected status with an OCI error body and headers, `times` times, for matching requests only", async () => {
    await registry.sync();
    registry.clearRequests();
    relay.setFault({ kind: "status", status: 503, match: /^GET \/v2\/.+\/manifests\//, times: 2 });
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await fetch(manifestUrl(), { headers: ACCEPT });
      statuses.push(res.status);
      if (res.status === 503) {
        expect(res.headers.get("content-type")).toContain("application/json");
        expect(res.headers.get("docker-distribution-api-version")).toBe("registry/2.0");
        expect(await res.json()).toMatchObject({ errors: [{ code: "UNAVAILABLE" }] });
      } else {
        expect(Buffer.from(await res.arrayBuffer()).equals(image.manifest)).toBe(true);
      }
    }
    expect(statuses).toEqual([503, 503, 200]);
    // Not matched: blobs pass through even while the fault has uses left.
    relay.setFault({ kind: "status", status: 500, match: /manifests/ });
    const blob = await fetch(blobUrl());
    expect(sha256(Buffer.from(await blob.arrayBuffer()))).toBe(layer.digest);
    expect(relay.requests.map((r) => `${r.method} ${r.status} ${r.fault ?? "-"}`)).toEqual([
      "GET 503 status",
      "GET 503 status",
      "GET 200 -",
      "GET 200 -",
    ]);
    // Injected answers never reach the upstream.
    expect(await upstreamCount("/manifests/v1")).toBe(1);
  });

  it("status: 429 with Retry-After, and a HEAD gets headers without a body", async () => {
    relay.setFault({ kind: "status", status: 429, headers: { "retry-after": "7" } });
    const res = await fetch(manifestUrl(), { headers: ACCEPT });
    expect(res.status).toBe(429);
    expect(res.headers.get("retry-after")).toBe("7");
    expect(await res.json()).toMatchObject({ errors: [{ code: "TOOMANYREQUESTS" }] });
    const head = await observe(manifestUrl(), { method: "HEAD", headers: ACCEPT });
    expect(head.outcome).toBe("complete");
    expect(head.status).toBe(429);
    expect(head.body.length).toBe(0);
    relay.setFault({ kind: "status", status: 502 });
    const bad = await fetch(manifestUrl());
    expect(bad.status).toBe(502);
    expect(await bad.json()).toMatchObject({ errors: [{ code: "UNKNOWN" }] });
  });

  it("reset: the connection is reset without an answer, `times` times, then requests pass", async () => {
    await registry.sync();
    registry.clearRequests();
    relay.setFault({ kind: "reset", match: /manifests/, times: 2 });
    const first = await observe(manifestUrl(), { headers: ACCEPT });
    expect(first.gotHeaders).toBe(false);
    expect(first.outcome).toBe("error:ECONNRESET");
    await expect(fetch(manifestUrl(), { headers: ACCEPT })).rejects.toThrow();
    const third = await fetch(manifestUrl(), { headers: ACCEPT });
    expect(third.status).toBe(200);
    await third.arrayBuffer();
    expect(relay.requests.map((r) => r.fault)).toEqual(["reset", "reset", undefined]);
    expect(relay.requests[0]?.status).toBeUndefined();
    expect(await upstreamCount("/manifests/v1")).toBe(1);
  });

  it("stallHeaders: the request is accepted and never answered; other requests are not held up", async () => {
    await registry.sync();
    registry.clearRequests();
    relay.setFault({ kind: "stallHeaders", match: /^GET .*\/manifests\// });
    const t0 = Date.now();
    const stalled = observe(manifestUrl(), { headers: ACCEPT, windowMs: 800 });
    // Meanwhile a blob (not matched) goes through at once.
    const blob = await fetch(blobUrl());
    expect(sha256(Buffer.from(await blob.arrayBuffer()))).toBe(layer.digest);
    const result = await stalled;
    expect(Date.now() - t0).toBeGreaterThanOrEqual(750);
    expect(result.gotHeaders).toBe(false);
    expect(result.outcome).toBe("open");
    // fetch users see their own timeout.
    await expect(fetch(manifestUrl(), { headers: ACCEPT, signal: AbortSignal.timeout(300) })).rejects.toThrow(
      /timeout|aborted/i,
    );
    expect(relay.requests.filter((r) => r.fault === "stallHeaders")).toHaveLength(2);
    expect(await upstreamCount("/manifests/")).toBe(0);
  });

  it("stallHeaders with times: 1 stalls only the first matching request", async () => {
    relay.setFault({ kind: "stallHeaders", match: /manifests/, times: 1 });
    const first = observe(manifestUrl(), { headers: ACCEPT, windowMs: 500 });
    await new Promise((r) => setTimeout(r, 50)); // let the first one arrive first
    const second = await fetch(manifestUrl(), { headers: ACCEPT });
    expect(second.status).toBe(200);
    await second.arrayBuffer();
    expect((await first).gotHeaders).toBe(false);
  });

  it("stallBody: status, headers and afterBytes of the body, then silence on an open connection", async () => {
    relay.setFault({ kind: "stallBody", afterBytes: 100_000, match: /blobs/ });
    const result = await observe(blobUrl(), { windowMs: 1_000 });
    expect(result.gotHeaders).toBe(true);
    expect(result.status).toBe(200);
    expect(result.headers["content-length"]).toBe(String(layer.bytes.length));
    expect(result.outcome).toBe("open");
    expect(result.body.equals(layer.bytes.subarray(0, 100_000))).toBe(true);
    expect(relay.requests[0]).toMatchObject({ fault: "stallBody", status: 200 });

    // afterBytes 0: the headers still go out at once.
    relay.setFault({ kind: "stallBody", afterBytes: 0, match: /manifests/ });
    const headersOnly = await observe(manifestUrl(), { headers: ACCEPT, windowMs: 500 });
    expect(headersOnly.gotHeaders).toBe(true);
    expect(headersOnly.status).toBe(200);
    expect(headersOnly.body.length).toBe(0);
    expect(headersOnly.outcome).toBe("open");
  });

  it("several faults at once: each request gets the first that applies", async () => {
    relay.setFault([
      { kind: "status", status: 429, headers: { "retry-after": "1" }, match: /manifests/, times: 1 },
      { kind: "reset", match: /manifests/, times: 1 },
      { kind: "redirectBlobs", to: blobHost },
    ]);
    expect((await observe(manifestUrl(), { headers: ACCEPT })).status).toBe(429);
    expect((await observe(manifestUrl(), { headers: ACCEPT })).outcome).toBe("error:ECONNRESET");
    expect((await observe(manifestUrl(), { headers: ACCEPT })).status).toBe(200);
    expect((await observe(blobUrl())).status).toBe(307);
    expect(relay.requests.map((r) => r.fault)).toEqual(["status", "reset", undefined, "redirectBlobs"]);
  });

  it("records whether a request carried Authorization, and its scheme, never its value", async () => {
    await (await fetch(manifestUrl(), { headers: { ...ACCEPT, authorization: "Bearer secret-token" } })).arrayBuffer();
    await (await fetch(manifestUrl(), { headers: ACCEPT })).arrayBuffer();
    const path = `/v2/${REPO}/manifests/v1`;
    const bodyBytes = image.manifest.length;
    expect(relay.requests).toEqual([
      { method: "GET", path, status: 200, authorization: true, authScheme: "bearer", bodyBytes },
      { method: "GET", path, status: 200, authorization: false, bodyBytes },
    ]);
    expect(JSON.stringify(relay.requests)).not.toContain("secret-token");
  });

  it("redirectBlobs: blob GETs get a 307 to the blob host, which serves the exact bytes without Docker-Content-Digest", async () => {
    await registry.sync();
    registry.clearRequests();
    relay.setFault({ kind: "redirectBlobs", to: blobHost });
    const redirect = await observe(`${blobUrl()}?ns=docker.io`);
    expect(redirect.status).toBe(307);
    const location = redirect.headers.location ?? "";
    expect(location.startsWith(`${blobHost.url}/blob/${layer.digest}?sig=`)).toBe(true);
    expect(relay.requests[0]).toMatchObject({ fault: "redirectBlobs", status: 307 });

    const served = await observe(location);
    expect(served.status).toBe(200);
    expect(served.headers["content-length"]).toBe(String(layer.bytes.length));
    expect(served.headers["docker-content-digest"]).toBeUndefined();
    expect(sha256(served.body)).toBe(layer.digest);
    expect(blobHost.requests).toEqual([
      {
        method: "GET",
        path: new URL(location).pathname + new URL(location).search,
        authorization: undefined,
        range: undefined,
        status: 200,
      },
    ]);

    // Manifests, HEADs and unknown blobs are not redirected.
    expect((await observe(manifestUrl(), { headers: ACCEPT })).status).toBe(200);
    const head = await observe(blobUrl(), { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.headers["docker-content-digest"]).toBe(layer.digest);
    const unknown = await observe(blobUrl(`sha256:${"0".repeat(64)}`));
    expect(unknown.status).toBe(404);
    expect(JSON.parse(unknown.body.toString("utf8"))).toMatchObject({ errors: [{ code: "BLOB_UNKNOWN" }] });

    // The registry saw a HEAD deciding each redirect and exactly one GET of the bytes (the blob host's).
    await registry.sync();
    expect(
      registry
        .requests()
        .filter((r) => r.kind === "blobs")
        .map((r) => `${r.method} ${r.status}`),
    ).toEqual([
      "HEAD 200", // the relay deciding the redirect
      "GET 200", // the blob host fetching the bytes
      "HEAD 200", // the test's own HEAD through the relay
      "HEAD 404", // the unknown blob
    ]);
  });

  it("fetch follows the redirect and drops Authorization to the other origin; the blob host records what arrived", async () => {
    relay.setFault({ kind: "redirectBlobs", to: blobHost });
    const res = await fetch(blobUrl(), { headers: { authorization: "Bearer for-the-registry-only" } });
    expect(res.status).toBe(200);
    expect(res.redirected).toBe(true);
    expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(layer.digest);
    expect(relay.requests[0]?.authorization).toBe(true);
    expect(blobHost.requests.map((r) => r.authorization)).toEqual([undefined]);

    // A client that does forward it is caught.
    const location = (await observe(blobUrl())).headers.location ?? "";
    await observe(location, { headers: { authorization: "Bearer leaked" } });
    expect(blobHost.requests.at(-1)?.authorization).toBe("Bearer leaked");
  });

  it("ranges work through the redirect (206 with Content-Range)", async () => {
    relay.setFault({ kind: "redirectBlobs", to: blobHost });
    const redirect = await observe(blobUrl(), { headers: { range: "bytes=1000-" } });
    expect(redirect.status).toBe(307);
    const location = redirect.headers.location ?? "";
    const tail = await observe(location, { headers: { range: "bytes=1000-" } });
    expect(tail.status).toBe(206);
    expect(tail.headers["content-range"]).toBe(`bytes 1000-${layer.bytes.length - 1}/${layer.bytes.length}`);
    expect(tail.body.equals(layer.bytes.subarray(1000))).toBe(true);
    const middle = await observe(location, { headers: { range: "bytes=100-199" } });
    expect(middle.status).toBe(206);
    expect(middle.body.equals(layer.bytes.subarray(100, 200))).toBe(true);
    const beyond = await observe(location, { headers: { range: `bytes=${layer.bytes.length + 10}-` } });
    expect(beyond.status).toBe(416);
    expect(blobHost.requests.map((r) => [r.range, r.status])).toEqual([
      ["bytes=1000-", 206],
      ["bytes=100-199", 206],
      [`bytes=${layer.bytes.length + 10}-`, 416],
    ]);
  });

  it("redirectBlobs with hostname: the Location names the blob host by that name", async () => {
    relay.setFault({ kind: "redirectBlobs", to: blobHost, hostname: "localhost" });
    const redirect = await observe(blobUrl());
    expect(redirect.status).toBe(307);
    const location = new URL(redirect.headers.location ?? "");
    expect(location.host).toBe(`localhost:${blobHost.port}`);
    location.hostname = "127.0.0.1";
    const blob = await observe(location.href);
    expect(sha256(blob.body)).toBe(layer.digest);
  });

  it("redirect: matching requests get a 302 to the given URL, and nothing goes upstream", async () => {
    await registry.sync();
    registry.clearRequests();
    relay.setFault({ kind: "redirect", location: "http://127.0.0.1:9/elsewhere", match: /tags\/list/, times: 1 });
    const redirected = await observe(`${relay.url}/v2/${REPO}/tags/list`);
    expect(redirected.status).toBe(302);
    expect(redirected.headers.location).toBe("http://127.0.0.1:9/elsewhere");
    expect((await observe(`${relay.url}/v2/${REPO}/tags/list`)).status).toBe(200);
    expect(relay.requests.map((r) => `${r.status} ${r.fault ?? "-"}`)).toEqual(["302 redirect", "200 -"]);
    expect(await upstreamCount("/tags/list")).toBe(1);
  });

  it("the blob host serves only URLs it signed, and can refuse Authorization like S3", async () => {
    const forged = await observe(`${blobHost.url}/blob/${layer.digest}?sig=forged`);
    expect(forged.status).toBe(403);
    const otherDigest = new URL(blobHost.signedUrl(REPO, layer.digest));
    otherDigest.pathname = `/blob/${image.config.digest}`;
    expect((await observe(otherDigest.href)).status).toBe(403);

    const strict = teardown.track(await startBlobHost(registry.url, { rejectAuthorization: true }));
    const url = strict.signedUrl(REPO, layer.digest);
    expect((await observe(url, { headers: { authorization: "Basic eDp5" } })).status).toBe(400);
    const ok = await observe(url);
    expect(ok.status).toBe(200);
    expect(sha256(ok.body)).toBe(layer.digest);
    expect(strict.requests.map((r) => [r.authorization, r.status])).toEqual([
      ["Basic eDp5", 400],
      [undefined, 200],
    ]);
  });

  it("stop() ends stalled connections promptly", async () => {
    const own = teardown.track(await startRelay(registry.url));
    own.setFault([
      { kind: "stallHeaders", match: /manifests/ },
      { kind: "stallBody", afterBytes: 10, match: /blobs/ },
    ]);
    const a = observe(`${own.url}/v2/${REPO}/manifests/v1`, { headers: ACCEPT, windowMs: 10_000 });
    const b = observe(`${own.url}/v2/${REPO}/blobs/${layer.digest}`, { windowMs: 10_000 });
    await new Promise((r) => setTimeout(r, 200));
    const t0 = Date.now();
    await own.stop();
    const [ra, rb] = await Promise.all([a, b]);
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(ra.outcome).toMatch(/^error:/);
    expect(rb.outcome).toMatch(/^error:/);
    expect(rb.body.length).toBe(10);
  });
});

describe("blob redirects in front of a registry with token auth", () => {
  it("the registry decides auth before the redirect; the blob host fetches with the harness's own token", async () => {
    const tokens = teardown.track(await startTokenServer({ users: { admin: "pw" }, admins: ["admin"] }));
    const registry = teardown.track(await startRegistry({ auth: { token: tokens } }));
    const layer = randomLayer(50_000);
    await pushImage(registry.url, REPO, "v1", buildImage({ layers: [layer], format: "oci" }), {
      username: "admin",
      password: "pw",
    });
    const relay = teardown.track(await startRelay(registry.url));
    const blobHost = teardown.track(await startBlobHost(registry));
    relay.setFault({ kind: "redirectBlobs", to: blobHost });

    // Without a token: the registry's 401 comes through, no redirect.
    const denied = await observe(`${relay.url}/v2/${REPO}/blobs/${layer.digest}`);
    expect(denied.status).toBe(401);
    expect(denied.headers["www-authenticate"]).toContain(`realm="${tokens.realm}"`);

    // A client doing the token dance through the relay gets redirected and the bytes arrive.
    const res = await new RegistryAuthenticator().fetch(`${relay.url}/v2/${REPO}/blobs/${layer.digest}`);
    expect(res.status).toBe(200);
    expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(layer.digest);
    expect(relay.requests.map((r) => `${r.status} ${r.authScheme ?? "none"} ${r.fault ?? "-"}`)).toEqual([
      "401 none -",
      "401 none -",
      "307 bearer redirectBlobs",
    ]);
    expect(blobHost.requests.map((r) => [r.authorization, r.status])).toEqual([[undefined, 200]]);
    expect(tokens.count({ authorization: "none", status: 200 })).toBe(1);
  });

  it("a blob host given a URL and credentials does the token dance itself", async () => {
    const tokens = teardown.track(
      await startTokenServer({ users: { admin: "pw", reader: "r" }, admins: ["admin"], anonymous: false }),
    );
    const registry = teardown.track(await startRegistry({ auth: { token: tokens } }));
    const blob = randomLayer(5_000);
    await pushImage(registry.url, REPO, "v1", buildImage({ layers: [blob], format: "oci" }), {
      username: "admin",
      password: "pw",
    });
    const withCreds = teardown.track(
      await startBlobHost(registry.url, { auth: { username: "reader", password: "r" } }),
    );
    const ok = await observe(withCreds.signedUrl(REPO, blob.digest));
    expect(ok.status).toBe(200);
    expect(sha256(ok.body)).toBe(blob.digest);
    expect(tokens.count({ user: "reader", status: 200 })).toBe(1);
    const without = teardown.track(await startBlobHost(registry.url));
    expect((await observe(without.signedUrl(REPO, blob.digest))).status).toBe(401);
  });
});
