/**
 * Real upstreams demand auth: distribution with `auth: token` (tokens from the harness's token server, verified
 * by the registry for real) and with `auth: htpasswd`; blob GETs redirected to another origin, followed only
 * where the upstream's configuration allows.
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBlobHost, type BlobHost } from "../harness/blob-host.ts";
import { buildImage, pushImage, randomLayer, type BuiltImage } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { Teardown } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { createTestCa } from "../harness/test-ca.ts";
import { startTokenServer, type TokenServer } from "../harness/token-server.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";
import { parsePrometheusText, valueOf } from "./prometheus-text.ts";
import { createHash } from "node:crypto";

const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const teardown = new Teardown();
afterAll(() => teardown.run());
const admin = { username: "admin", password: "admin-pw" };

async function pullAll(m: TestMirror, repo: string, tag: string, image: BuiltImage): Promise<void> {
  const manifest = await fetchRaw(`${m.url}/v2/${repo}/manifests/${tag}`, { headers: { accept: ALL_MANIFEST_TYPES } });
  expect(manifest.status, manifest.body.toString()).toBe(200);
  expect(manifest.body.equals(image.manifest)).toBe(true);
  for (const blob of image.blobs()) {
    const res = await fetchRaw(`${m.url}/v2/${repo}/blobs/${blob.digest}`);
    expect(res.status).toBe(200);
    expect(sha256(res.body)).toBe(blob.digest);
  }
}

describe("token auth (Docker token flow)", () => {
  let tokens: TokenServer;
  let registry: Registry;
  const image = buildImage({
    format: "oci",
    layers: [randomLayer(100_000), randomLayer(200_000), randomLayer(300_000)],
  });

  beforeAll(async () => {
    tokens = teardown.track(
      await startTokenServer({ users: { alice: "alice-pw", admin: admin.password }, admins: ["admin"] }),
    );
    registry = teardown.track(await startRegistry({ auth: { token: tokens } }));
    await pushImage(registry.url, "team/private", "v1", image, admin);
  });

  it("pulls anonymously, with one token fetch reused for the manifest and every blob", async () => {
    const m = teardown.track(
      await startTestMirror({
        upstreams: { "docker.io": { url: registry.url, default: true, authHosts: [new URL(tokens.url).host] } },
      }),
    );
    tokens.clearRequests();
    await pullAll(m, "team/private", "v1", image);
    expect(tokens.count({ authorization: "none", scope: "repository:team/private:pull" })).toBe(1);
    expect(tokens.count()).toBe(1);
    const samples = parsePrometheusText((await fetchRaw(`${m.url}/metrics`)).body.toString());
    expect(valueOf(samples, "mirror_upstream_token_requests_total", { upstream: "docker.io", result: "ok" })).toBe(1);
    expect(valueOf(samples, "mirror_upstream_token_requests_total", { result: "error" })).toBe(0);
    // The 401 challenges and the token answer are no content: the upstream bytes are exactly the image's.
    const content = image.manifest.length + image.blobs().reduce((sum, b) => sum + b.bytes.length, 0);
    expect(valueOf(samples, "mirror_upstream_fetched_bytes_total", { upstream: "docker.io" })).toBe(content);
  });

  it("pulls with configured credentials, sent only to the token service", async () => {
    const m = teardown.track(
      await startTestMirror({
        upstreams: {
          "docker.io": {
            url: registry.url,
            default: true,
            authHosts: [new URL(tokens.url).host],
            credentials: { username: "alice", password: "alice-pw" },
          },
        },
        extra: { access: { anonymous: true } },
      }),
    );
    tokens.clearRequests();
    await pullAll(m, "team/private", "v1", image);
    expect(tokens.count({ authorization: "basic-ok", user: "alice" })).toBe(1);
    expect(tokens.count({ authorization: "none" })).toBe(0);
  });

  it("refreshes a token that is about to expire", async () => {
    const m = teardown.track(
      await startTestMirror({
        upstreams: { "docker.io": { url: registry.url, default: true, authHosts: [new URL(tokens.url).host] } },
      }),
    );
    tokens.setExpiresIn(2); // the mirror refreshes after half the lifetime when the lifetime is that short
    try {
      tokens.clearRequests();
      const blob = image.layers[0]!;
      expect(
        (await fetchRaw(`${m.url}/v2/team/private/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } })).status,
      ).toBe(200);
      expect((await fetchRaw(`${m.url}/v2/team/private/blobs/${blob.digest}`)).status).toBe(200);
      expect(tokens.count()).toBe(1);
      await new Promise((r) => setTimeout(r, 1200));
      expect((await fetchRaw(`${m.url}/v2/team/private/blobs/${image.layers[1]!.digest}`)).status).toBe(200);
      expect(tokens.count()).toBe(2);
    } finally {
      tokens.setExpiresIn(300);
    }
  });

  it("gives the client a clear UNAUTHORIZED for wrong credentials, not a 500", async () => {
    const m = teardown.track(
      await startTestMirror({
        upstreams: {
          "docker.io": {
            url: registry.url,
            default: true,
            authHosts: [new URL(tokens.url).host],
            credentials: { username: "alice", password: "wrong" },
          },
        },
        extra: { access: { anonymous: true } },
      }),
    );
    const res = await fetchRaw(`${m.url}/v2/team/private/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
    expect(res.status).toBe(401);
    expect(errorCode(res)).toBe("UNAUTHORIZED");
    expect(res.body.toString()).not.toMatch(/wrong|alice/);
  });

  it("refuses an http realm for an https upstream, naming it, before any credentials are sent", async () => {
    const dir = await mkdtemp(join(tmpdir(), "realm-tls-"));
    teardown.add("tls dir", () => rm(dir, { recursive: true, force: true }));
    const ca = await createTestCa(dir, "realm-test-ca");
    const { certPath, keyPath } = await ca.issue("upstream");
    const tlsRelay = teardown.track(
      await startRelay(registry.url, { tls: { cert: await readFile(certPath), key: await readFile(keyPath) } }),
    );
    const m = teardown.track(
      await startTestMirror({
        upstreams: {
          "docker.io": {
            url: tlsRelay.url,
            default: true,
            tls: { caFile: ca.certPath },
            authHosts: [new URL(tokens.url).host],
            credentials: { username: "alice", password: "alice-pw" },
          },
        },
        extra: { access: { anonymous: true } },
      }),
    );
    tokens.clearRequests();
    const res = await fetchRaw(`${m.url}/v2/team/private/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
    expect(res.status).toBe(502);
    expect(errorCode(res)).toBe("UPSTREAM_ERROR");
    expect(res.body.toString()).toContain(`names token realm ${tokens.realm}, which is not https like the upstream`);
    expect(tokens.count()).toBe(0);
  });

  it("answers 503 naming the token service when a token body breaks mid-way, and recovers", async () => {
    const m = teardown.track(
      await startTestMirror({
        upstreams: {
          "docker.io": {
            url: registry.url,
            default: true,
            authHosts: [new URL(tokens.url).host],
            timeouts: { bodyIdle: "1s" },
          },
        },
      }),
    );
    const manifest = () =>
      fetchRaw(`${m.url}/v2/team/private/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
    try {
      for (const [fault, code] of [
        [{ kind: "stallBody", afterBytes: 10 }, /UND_ERR_BODY_TIMEOUT/],
        [{ kind: "resetBody", afterBytes: 10 }, /ECONNRESET|UND_ERR_SOCKET/],
      ] as const) {
        tokens.setFault(fault);
        const res = await manifest();
        expect(res.status, `${fault.kind}: ${res.body.toString()}`).toBe(503);
        expect(errorCode(res)).toBe("UNAVAILABLE");
        expect(res.body.toString()).toMatch(/token service of upstream docker\.io is unavailable/);
        expect(res.body.toString()).toMatch(code);
      }
    } finally {
      tokens.setFault(null);
    }
    expect((await manifest()).status).toBe(200);
  });

  it("a token body trickling in under the idle timeout fails every request sharing it at timeouts.total", async () => {
    const m = teardown.track(
      await startTestMirror({
        upstreams: {
          "docker.io": {
            url: registry.url,
            default: true,
            authHosts: [new URL(tokens.url).host],
            timeouts: { bodyIdle: "1s", total: "2s" },
          },
        },
      }),
    );
    tokens.clearRequests();
    tokens.setFault({ kind: "trickle", intervalMs: 300 });
    try {
      // A manifest and a blob of one repository: two exchanges waiting on one token fetch.
      const [manifest, blob] = await Promise.all([
        fetchRaw(`${m.url}/v2/team/private/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } }),
        fetchRaw(`${m.url}/v2/team/private/blobs/${image.layers[0]!.digest}`),
      ]);
      for (const res of [manifest, blob]) {
        expect(res.status, res.body.toString()).toBe(503);
        expect(errorCode(res)).toBe("UNAVAILABLE");
        expect(res.body.toString()).toMatch(/did not finish answering within 2 s \(timeouts\.total\)/);
      }
      expect(tokens.count()).toBe(1);
    } finally {
      tokens.setFault(null);
    }
    expect(
      (await fetchRaw(`${m.url}/v2/team/private/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } })).status,
    ).toBe(200);
  });

  it("refuses a realm on a host not allowed for the upstream, without contacting it", async () => {
    const m = teardown.track(
      await startTestMirror({ upstreams: { "docker.io": { url: registry.url, default: true } } }),
    );
    tokens.clearRequests();
    const res = await fetchRaw(`${m.url}/v2/team/private/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
    expect(res.status).toBe(502);
    expect(res.body.toString()).toMatch(/not allowed/);
    expect(tokens.count()).toBe(0);
  });
});

describe("Basic auth (htpasswd)", () => {
  let registry: Registry;
  const image = buildImage({ format: "docker", layers: [randomLayer(120_000, { format: "docker" })] });
  beforeAll(async () => {
    registry = teardown.track(
      await startRegistry({ auth: { htpasswd: { [admin.username]: admin.password, bob: "bob-pw" } } }),
    );
    await pushImage(registry.url, "team/basic", "v1", image, admin);
  });

  it("pulls with configured Basic credentials", async () => {
    const m = teardown.track(
      await startTestMirror({
        upstreams: {
          "docker.io": { url: registry.url, default: true, credentials: { username: "bob", password: "bob-pw" } },
        },
        extra: { access: { anonymous: true } },
      }),
    );
    await pullAll(m, "team/basic", "v1", image);
  });

  it("answers UNAUTHORIZED without credentials and with wrong ones", async () => {
    for (const credentials of [undefined, { username: "bob", password: "nope" }]) {
      const m = teardown.track(
        await startTestMirror({
          upstreams: { "docker.io": { url: registry.url, default: true, ...(credentials ? { credentials } : {}) } },
          extra: { access: { anonymous: true } },
        }),
      );
      const res = await fetchRaw(`${m.url}/v2/team/basic/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
      expect(res.status).toBe(401);
      expect(errorCode(res)).toBe("UNAUTHORIZED");
    }
  });
});

describe("redirects", () => {
  let tokens: TokenServer;
  let registry: Registry;
  let blobHost: BlobHost;
  const layer = randomLayer(1_500_000);
  const image = buildImage({ format: "oci", layers: [layer] });

  beforeAll(async () => {
    tokens = teardown.track(
      await startTokenServer({ users: { admin: admin.password, carol: "carol-pw" }, admins: ["admin"] }),
    );
    registry = teardown.track(await startRegistry({ auth: { token: tokens } }));
    await pushImage(registry.url, "team/cdn", "v1", image, admin);
    blobHost = teardown.track(await startBlobHost(registry));
  });

  it("follows a 307 to another origin with the blob intact, and never sends it the upstream's Authorization", async () => {
    const relay = teardown.track(await startRelay(registry.url));
    relay.setFault({ kind: "redirectBlobs", to: blobHost });
    const m = teardown.track(
      await startTestMirror({
        upstreams: {
          "docker.io": {
            url: relay.url,
            default: true,
            authHosts: [new URL(tokens.url).host],
            redirectHosts: [blobHost.host],
            credentials: { username: "carol", password: "carol-pw" },
          },
        },
        extra: { access: { anonymous: true } },
      }),
    );
    await pullAll(m, "team/cdn", "v1", image);
    // A range on a cold blob, through the redirect too.
    const ranged = await fetchRaw(`${m.url}/v2/team/cdn/blobs/${image.config.digest}`, {
      headers: { range: "bytes=0-9" },
    });
    expect(ranged.status).toBe(206);
    expect(ranged.body.equals(image.config.bytes.subarray(0, 10))).toBe(true);
    const blobGets = blobHost.requests.filter((r) => r.method === "GET");
    expect(blobGets.length).toBeGreaterThanOrEqual(2);
    for (const r of blobHost.requests) expect(r.authorization, r.path).toBeUndefined();
    // The mirror did authenticate to the upstream itself.
    expect(relay.requests.some((r) => r.authorization)).toBe(true);
  });
});

describe("redirects the configuration does not allow", () => {
  let registry: Registry;
  let relay: Relay;
  let blobHost: BlobHost;
  const layer = randomLayer(300_000);
  const image = buildImage({ format: "oci", layers: [layer] });
  const blob = (m: TestMirror) => fetchRaw(`${m.url}/v2/team/redirected/blobs/${layer.digest}`);

  beforeAll(async () => {
    registry = teardown.track(await startRegistry());
    await pushImage(registry.url, "team/redirected", "v1", image);
    relay = teardown.track(await startRelay(registry.url));
    blobHost = teardown.track(await startBlobHost(registry));
  });

  it("refuses a redirect to a host not listed in redirectHosts, without contacting it", async () => {
    relay.setFault({ kind: "redirectBlobs", to: blobHost });
    blobHost.requests.length = 0;
    const m = teardown.track(await startTestMirror({ upstreams: { up: { url: relay.url, default: true } } }));
    const res = await blob(m);
    expect(res.status).toBe(502);
    expect(errorCode(res)).toBe("UPSTREAM_ERROR");
    expect(res.body.toString()).toContain(
      `redirected to host ${blobHost.host}, which is not allowed for it (list it in redirectHosts)`,
    );
    expect(res.body.toString()).not.toContain("sig="); // the presigned part of the URL is never repeated
    expect(blobHost.requests).toEqual([]);
    expect(await m.mirror.blobStore.size(layer.digest)).toBeUndefined();
  });

  it("never fetches, let alone relays, what an unlisted address answers on tags/list", async () => {
    // Where an upstream could point the mirror: a cloud metadata path on another local port.
    relay.setFault({
      kind: "redirect",
      location: `${blobHost.url}/latest/meta-data/iam/security-credentials/`,
      match: /tags\/list/,
    });
    blobHost.requests.length = 0;
    const m = teardown.track(await startTestMirror({ upstreams: { up: { url: relay.url, default: true } } }));
    const res = await fetchRaw(`${m.url}/v2/team/redirected/tags/list`);
    expect(res.status).toBe(502);
    expect(errorCode(res)).toBe("UPSTREAM_ERROR");
    expect(blobHost.requests).toEqual([]);
  });

  it("refuses a listed host at a non-public address unless allowPrivateRedirects is set", async () => {
    // The same loopback blob host, named `localhost`: a DNS name that resolves to a loopback address.
    relay.setFault({ kind: "redirectBlobs", to: blobHost, hostname: "localhost" });
    blobHost.requests.length = 0;
    const upstream = { url: relay.url, default: true, redirectHosts: [`localhost:${blobHost.port}`] };
    const refusing = teardown.track(await startTestMirror({ upstreams: { up: upstream } }));
    const refused = await blob(refusing);
    expect(refused.status).toBe(502);
    expect(errorCode(refused)).toBe("UPSTREAM_ERROR");
    expect(refused.body.toString()).toMatch(
      /redirected to localhost, which is at a non-public address .*allowPrivateRedirects/,
    );
    expect(blobHost.requests).toEqual([]);

    const allowing = teardown.track(
      await startTestMirror({ upstreams: { up: { ...upstream, allowPrivateRedirects: true } } }),
    );
    const allowed = await blob(allowing);
    expect(allowed.status).toBe(200);
    expect(allowed.body.equals(layer.bytes)).toBe(true);
    expect(blobHost.requests.map((r) => r.status)).toEqual([200]);
  });

  it("never follows a redirect from https to http, even to a listed host", async () => {
    const dir = await mkdtemp(join(tmpdir(), "redirect-tls-"));
    teardown.add("tls dir", () => rm(dir, { recursive: true, force: true }));
    const ca = await createTestCa(dir, "redirect-test-ca");
    const { certPath, keyPath } = await ca.issue("upstream");
    const tlsRelay = teardown.track(
      await startRelay(registry.url, { tls: { cert: await readFile(certPath), key: await readFile(keyPath) } }),
    );
    tlsRelay.setFault({ kind: "redirectBlobs", to: blobHost });
    blobHost.requests.length = 0;
    const m = teardown.track(
      await startTestMirror({
        upstreams: {
          up: { url: tlsRelay.url, default: true, tls: { caFile: ca.certPath }, redirectHosts: [blobHost.host] },
        },
      }),
    );
    const res = await blob(m);
    expect(res.status).toBe(502);
    expect(res.body.toString()).toContain(`redirected from https to http://${blobHost.host}`);
    expect(blobHost.requests).toEqual([]);
  });
});
