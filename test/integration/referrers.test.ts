/**
 * The OCI 1.1 referrers API through the mirror (`GET /v2/<name>/referrers/<digest>`): built from the fallback
 * tag `sha256-<hex>` when the upstream has no referrers API (distribution 2.8, the real registry here, answers
 * 404), passed through from an upstream that has one (a second mirror chained behind the first, as an office
 * mirror behind a regional one), cached like a tag, served stale when the upstream is down, and refused (502,
 * not cached) when an upstream answers with something that is not a referrers index.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildArtifact,
  buildImage,
  pushArtifact,
  pushImage,
  pushReferrersFallback,
  randomLayer,
  referrerDescriptor,
  type BuiltArtifact,
  type BuiltImage,
} from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

const INDEX = "application/vnd.oci.image.index.v1+json";
const SIGNATURE = "application/vnd.example.signature.v1+json";
const SBOM = "application/vnd.example.sbom.v1+json";

let upstream: Registry;
const mirrors: TestMirror[] = [];
const relays: Relay[] = [];
const servers: Server[] = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  upstream = await startRegistry();
});
afterAll(async () => {
  for (const m of mirrors) await m.stop();
  for (const r of relays) await r.stop();
  for (const s of servers) await new Promise((r) => s.close(r));
  await upstream?.dispose();
});

async function mirrorOf(url: string, upstreamOptions: Record<string, unknown> = {}): Promise<TestMirror> {
  const m = await startTestMirror({ upstreams: { "docker.io": { url, default: true, ...upstreamOptions } } });
  mirrors.push(m);
  return m;
}

/** An image with a signature and an SBOM pushed as referrers, listed under the fallback tag. */
async function signedImage(
  repo: string,
  name: string,
): Promise<{ image: BuiltImage; sig: BuiltArtifact; sbom: BuiltArtifact }> {
  const image = buildImage({ format: "oci", layers: [randomLayer(5_000)], labels: { name } });
  await pushImage(upstream.url, repo, "v1", image);
  const sig = buildArtifact({
    subject: image,
    artifactType: SIGNATURE,
    payload: Buffer.from(`signature of ${name}`),
    annotations: { "org.opencontainers.image.created": "2026-01-01T00:00:00Z" },
  });
  const sbom = buildArtifact({ subject: image, artifactType: SBOM, payload: Buffer.from(`sbom of ${name}`) });
  for (const a of [sig, sbom]) await pushArtifact(upstream.url, repo, a);
  await pushReferrersFallback(upstream.url, repo, image.digest, [sig, sbom]);
  return { image, sig, sbom };
}

const referrers = (m: TestMirror, repo: string, digest: string, query = "") =>
  fetchRaw(`${m.url}/v2/${repo}/referrers/${digest}${query}`);

function manifestsOf(res: { body: Buffer }): unknown[] {
  const doc = JSON.parse(res.body.toString("utf8")) as {
    schemaVersion: number;
    mediaType: string;
    manifests: unknown[];
  };
  expect(doc.schemaVersion).toBe(2);
  expect(doc.mediaType).toBe(INDEX);
  return doc.manifests;
}

/**
 * A loopback registry whose referrers route answers what `answer` returns for each request (its path and query),
 * recording every request to it; everything else is a 404 OCI error.
 */
async function referrersServer(
  answer: (url: string) => { type: string; body: Buffer; link?: string },
): Promise<{ url: string; asked: string[] }> {
  const asked: string[] = [];
  const server = createServer((req, res) => {
    const url = req.url ?? "";
    if (/^\/v2\/.+\/referrers\//.test(url)) {
      asked.push(url);
      const { type, body, link } = answer(url);
      res.writeHead(200, { "content-type": type, "content-length": body.length, ...(link ? { link } : {}) });
      res.end(body);
      return;
    }
    res.writeHead(404, { "content-type": "application/json" });
    res.end('{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}');
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, asked };
}

describe("referrers from the fallback tag (upstream without the referrers API)", () => {
  it("lists the referrers of an image, filters by artifactType, and serves the referrers by digest", async () => {
    const m = await mirrorOf(upstream.url);
    const { image, sig, sbom } = await signedImage("team/signed", "signed");
    const res = await referrers(m, "team/signed", image.digest);
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toBe(INDEX);
    expect(res.headers["oci-filters-applied"]).toBeUndefined();
    expect(manifestsOf(res)).toEqual([referrerDescriptor(sig), referrerDescriptor(sbom)]);
    await upstream.sync();
    // Its referrers API answered 404 (distribution logs no line for an unknown route); the fallback tag was asked.
    expect(
      upstream.count({ kind: "manifests", pathIncludes: `/manifests/${image.digest.replace(":", "-")}` }),
    ).toBeGreaterThan(0);

    const filtered = await referrers(m, "team/signed", image.digest, `?artifactType=${encodeURIComponent(SIGNATURE)}`);
    expect(filtered.status).toBe(200);
    expect(filtered.headers["oci-filters-applied"]).toBe("artifactType");
    expect(manifestsOf(filtered)).toEqual([referrerDescriptor(sig)]);
    const none = await referrers(m, "team/signed", image.digest, "?artifactType=application/x-none");
    expect(none.headers["oci-filters-applied"]).toBe("artifactType");
    expect(manifestsOf(none)).toEqual([]);

    // The referrers themselves are ordinary content, pulled by digest.
    const sigManifest = await fetchRaw(`${m.url}/v2/team/signed/manifests/${sig.digest}`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(sigManifest.status).toBe(200);
    expect(sigManifest.body.equals(sig.manifest)).toBe(true);
    for (const blob of sig.blobs()) {
      const got = await fetchRaw(`${m.url}/v2/team/signed/blobs/${blob.digest}`);
      expect(got.status).toBe(200);
      expect(got.body.equals(blob.bytes)).toBe(true);
    }
  });

  it("answers from its cache within the TTL: no upstream request for the second ask", async () => {
    const m = await mirrorOf(upstream.url, { tagTtl: "1h" });
    const { image, sig, sbom } = await signedImage("team/cached", "cached");
    expect((await referrers(m, "team/cached", image.digest)).headers["x-mirror-cache"]).toBe("miss");
    await upstream.sync();
    upstream.clearRequests();
    const again = await referrers(m, "team/cached", image.digest);
    expect(again.headers["x-mirror-cache"]).toBe("hit");
    expect(manifestsOf(again)).toEqual([referrerDescriptor(sig), referrerDescriptor(sbom)]);
    await upstream.sync();
    expect(upstream.requests().filter((r) => r.repo === "team/cached")).toEqual([]);
  });

  it("a subject without a fallback tag, or in a repository the upstream does not have, has no referrers: 200, empty", async () => {
    const m = await mirrorOf(upstream.url);
    const image = buildImage({ format: "oci", layers: [randomLayer(1_000)], labels: { name: "unsigned" } });
    await pushImage(upstream.url, "team/unsigned", "v1", image);
    const res = await referrers(m, "team/unsigned", image.digest);
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toBe(INDEX);
    expect(manifestsOf(res)).toEqual([]);
    const unknownRepo = await referrers(m, "team/nothing-here", image.digest);
    expect(unknownRepo.status).toBe(200);
    expect(manifestsOf(unknownRepo)).toEqual([]);
  });

  it("serves the last known list, marked stale, when the upstream is down past the TTL; and sees a new referrer after the TTL", async () => {
    const m = await mirrorOf(upstream.url, { tagTtl: "300ms", timeouts: { connect: "1s" } });
    const { image, sig, sbom } = await signedImage("team/stale", "stale");
    expect(manifestsOf(await referrers(m, "team/stale", image.digest))).toHaveLength(2);
    // A new referrer appears upstream: seen once the TTL has passed.
    const attestation = buildArtifact({ subject: image, artifactType: SBOM, payload: Buffer.from("attestation") });
    await pushArtifact(upstream.url, "team/stale", attestation);
    await pushReferrersFallback(upstream.url, "team/stale", image.digest, [sig, sbom, attestation]);
    await sleep(350);
    const updated = await referrers(m, "team/stale", image.digest);
    expect(manifestsOf(updated)).toEqual([sig, sbom, attestation].map(referrerDescriptor));
    await sleep(350);
    await upstream.stop();
    try {
      const res = await referrers(m, "team/stale", image.digest, `?artifactType=${encodeURIComponent(SBOM)}`);
      expect(res.status).toBe(200);
      expect(res.headers["x-mirror-cache"]).toBe("stale");
      expect(res.headers.warning).toBe('110 - "Response is Stale"');
      expect(manifestsOf(res)).toEqual([sbom, attestation].map(referrerDescriptor));
      // tags/list answered from the cached tags lists the fallback tag (a real tag), not the referrers list.
      const tags = await fetchRaw(`${m.url}/v2/team/stale/tags/list`);
      expect(tags.headers["x-mirror-cache"]).toBe("stale");
      expect(JSON.parse(tags.body.toString())).toEqual({ name: "team/stale", tags: [image.digest.replace(":", "-")] });
    } finally {
      await upstream.start();
    }
  });

  it("an upstream that accepts and never answers: a known list is served stale after revalidateTimeout, not the upstream's timeouts", async () => {
    const relay = await startRelay(upstream.url);
    relays.push(relay);
    const m = await mirrorOf(relay.url, { tagTtl: "200ms", revalidateTimeout: "300ms", timeouts: { headers: "50s" } });
    const { image, sig, sbom } = await signedImage("team/hanging", "hanging");
    expect(manifestsOf(await referrers(m, "team/hanging", image.digest))).toHaveLength(2);
    await sleep(250);
    relay.setFault({ kind: "stallHeaders" });
    relay.requests.length = 0;
    const res = await referrers(m, "team/hanging", image.digest);
    expect(res.status).toBe(200);
    expect(res.headers["x-mirror-cache"]).toBe("stale");
    expect(manifestsOf(res)).toEqual([referrerDescriptor(sig), referrerDescriptor(sbom)]);
    // Answered while the upstream still holds the mirror's request, for the deadline's reason.
    expect(relay.requests.map((r) => [r.path, r.status])).toEqual([
      [`/v2/team/hanging/referrers/${image.digest}`, undefined],
    ]);
    const metrics = (await fetchRaw(`${m.url}/metrics`)).body.toString();
    expect(metrics).toMatch(/mirror_stale_served_total\{upstream="docker.io",reason="DEADLINE"\} 1/);
    relay.setFault(null);
  });

  it("the admin API lists the repository's tags without the referrers list kept beside them; a purge forgets it", async () => {
    const token = "referrers-admin-token-0123";
    const m = await startTestMirror({
      upstreams: { "docker.io": { url: upstream.url, default: true, tagTtl: "1h" } },
      extra: { admin: { token } },
    });
    mirrors.push(m);
    const { image } = await signedImage("team/listed", "listed");
    const pulled = await fetchRaw(`${m.url}/v2/team/listed/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
    expect(pulled.status).toBe(200);
    expect(manifestsOf(await referrers(m, "team/listed", image.digest))).toHaveLength(2);
    const admin = (path: string, body?: unknown) =>
      fetchRaw(`${m.url}/admin/v1/${path}`, {
        method: body === undefined ? "GET" : "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        ...(body === undefined ? {} : { body: Buffer.from(JSON.stringify(body)) }),
      });
    // The fallback tag is a real tag of the upstream, read through the manifest cache: it is listed.
    const tags = JSON.parse((await admin("tags?upstream=docker.io&repository=team/listed")).body.toString()) as {
      tags: Array<{ tag: string }>;
    };
    expect(tags.tags.map((t) => t.tag)).toEqual([image.digest.replace(":", "-"), "v1"]);
    const repos = JSON.parse((await admin("repositories?upstream=docker.io")).body.toString()) as {
      repositories: Array<{ repository: string; tags: number }>;
    };
    expect(repos.repositories.find((r) => r.repository === "team/listed")?.tags).toBe(2);
    expect((await referrers(m, "team/listed", image.digest)).headers["x-mirror-cache"]).toBe("hit");
    expect((await admin("purge", { upstream: "docker.io", repository: "team/listed" })).status).toBe(200);
    expect((await referrers(m, "team/listed", image.digest)).headers["x-mirror-cache"]).toBe("miss");
  });

  it("refuses bad input with OCI errors, never asking the upstream", async () => {
    const m = await mirrorOf(upstream.url);
    await upstream.sync();
    upstream.clearRequests();
    const bad = await referrers(m, "team/signed", "sha256:nothex");
    expect(bad.status).toBe(400);
    expect(errorCode(bad)).toBe("DIGEST_INVALID");
    const other = await referrers(m, "team/signed", `sha512:${"a".repeat(128)}`);
    expect(errorCode(other)).toBe("DIGEST_INVALID");
    const digest = `sha256:${"a".repeat(64)}`;
    const notType = await referrers(m, "team/signed", digest, "?artifactType=not-a-media-type");
    expect(notType.status).toBe(400);
    expect(errorCode(notType)).toBe("UNSUPPORTED");
    const head = await fetchRaw(`${m.url}/v2/team/signed/referrers/${digest}`, { method: "HEAD" });
    expect(head.status).toBe(405);
    expect(head.headers.allow).toBe("GET");
    await upstream.sync();
    expect(upstream.requests()).toEqual([]);
  });
});

describe("referrers passed through from an upstream with the referrers API (chained mirrors)", () => {
  it("the second mirror passes the first mirror's answer through, caches it, and both answers are the same bytes", async () => {
    const regional = await mirrorOf(upstream.url);
    const relay = await startRelay(regional.url);
    relays.push(relay);
    const office = await mirrorOf(relay.url, { tagTtl: "1h" });
    const { image, sig, sbom } = await signedImage("team/chained", "chained");
    relay.requests.length = 0; // the office mirror's start-up check (GET /v2/)

    const fromOffice = await referrers(office, "team/chained", image.digest);
    expect(fromOffice.status).toBe(200);
    expect(fromOffice.headers["x-mirror-cache"]).toBe("miss");
    expect(manifestsOf(fromOffice)).toEqual([referrerDescriptor(sig), referrerDescriptor(sbom)]);
    // The office mirror asked the regional one's referrers API, which answered; it never needed the fallback tag.
    expect(relay.requests.map((r) => `${r.method} ${r.path} ${r.status}`)).toEqual([
      `GET /v2/team/chained/referrers/${image.digest} 200`,
    ]);
    const fromRegional = await referrers(regional, "team/chained", image.digest);
    expect(fromRegional.headers["x-mirror-cache"]).toBe("hit");
    expect(fromOffice.body.equals(fromRegional.body)).toBe(true);

    relay.requests.length = 0;
    const filtered = await referrers(office, "team/chained", image.digest, `?artifactType=${encodeURIComponent(SBOM)}`);
    expect(filtered.headers["x-mirror-cache"]).toBe("hit");
    expect(filtered.headers["oci-filters-applied"]).toBe("artifactType");
    expect(manifestsOf(filtered)).toEqual([referrerDescriptor(sbom)]);
    expect(relay.requests).toEqual([]);

    // A referrer is pulled through both mirrors by digest.
    const sigManifest = await fetchRaw(`${office.url}/v2/team/chained/manifests/${sig.digest}`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(sigManifest.body.equals(sig.manifest)).toBe(true);
  });
});

describe("an upstream whose referrers answer is not a referrers index", () => {
  /** A loopback registry that answers the referrers route with `answer`, counting how often it was asked. */
  async function badUpstream(answer: { type: string; body: Buffer }): Promise<{ url: string; asked: () => number }> {
    const up = await referrersServer(() => ({ type: answer.type, body: answer.body }));
    return { url: up.url, asked: () => up.asked.length };
  }
  const digest = `sha256:${"b".repeat(64)}`;
  const descriptor = { mediaType: "application/vnd.oci.image.manifest.v1+json", digest, size: 10 };

  for (const [what, answer] of [
    ["JSON that is no index", { type: INDEX, body: Buffer.from('{"hello":"world"}') }],
    [
      "an index with a descriptor that has no valid digest",
      {
        type: INDEX,
        body: Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [{ ...descriptor, digest: "x" }] })),
      },
    ],
    [
      "an index under another content type",
      { type: "text/html", body: Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [descriptor] })) },
    ],
    [
      "an index larger than the manifest cap",
      {
        type: INDEX,
        body: Buffer.from(
          JSON.stringify({ schemaVersion: 2, manifests: Array.from({ length: 60_000 }, () => descriptor) }),
        ),
      },
    ],
  ] as const) {
    it(`${what}: 502 UPSTREAM_ERROR naming the upstream, and nothing cached`, async () => {
      if (what.includes("larger")) expect(answer.body.length).toBeGreaterThan(4 * 1024 * 1024);
      const bad = await badUpstream(answer);
      const m = await mirrorOf(bad.url, { tagTtl: "1h" });
      for (const attempt of [1, 2]) {
        const res = await referrers(m, "team/bad", digest);
        expect(res.status).toBe(502);
        expect(errorCode(res)).toBe("UPSTREAM_ERROR");
        expect(res.body.toString()).toContain("docker.io");
        expect(bad.asked()).toBe(attempt); // not cached: the second request asks again
      }
    });
  }
});

describe("an upstream that pages its referrers answer (Link: rel=next)", () => {
  const subject = `sha256:${"c".repeat(64)}`;
  const endpoint = `/v2/team/paged/referrers/${subject}`;
  const d = (n: number) => ({
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    digest: `sha256:${String(n).repeat(64)}`,
    size: 100 + n,
    artifactType: SIGNATURE,
  });
  const page = (...items: unknown[]) =>
    Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: INDEX, manifests: items }));

  it("follows the next pages of the same endpoint and answers the whole list", async () => {
    const up = await referrersServer((url) =>
      url === endpoint
        ? { type: INDEX, body: page(d(1), d(2)), link: `<${endpoint}?n=2&last=x>; rel="next"` }
        : url === `${endpoint}?n=2&last=x`
          ? { type: INDEX, body: page(d(3)), link: `<${up.url}${endpoint}?n=2&last=y>; rel="next"` }
          : { type: INDEX, body: page(d(4)) },
    );
    const m = await mirrorOf(up.url);
    const res = await referrers(m, "team/paged", subject);
    expect(res.status, res.body.toString()).toBe(200);
    expect(manifestsOf(res)).toEqual([d(1), d(2), d(3), d(4)]);
    expect(up.asked).toEqual([endpoint, `${endpoint}?n=2&last=x`, `${endpoint}?n=2&last=y`]);
  });

  it("refuses a next page elsewhere (another origin, another path) or an endless chain: 502, nothing cached", async () => {
    const elsewhere = await referrersServer(() => ({ type: INDEX, body: page() }));
    for (const link of [
      `<${elsewhere.url}${endpoint}?n=1>; rel="next"`,
      `</v2/team/other/referrers/${subject}?n=1>; rel="next"`,
    ]) {
      const up = await referrersServer(() => ({ type: INDEX, body: page(d(1)), link }));
      const m = await mirrorOf(up.url);
      for (const attempt of [1, 2]) {
        const res = await referrers(m, "team/paged", subject);
        expect(res.status).toBe(502);
        expect(errorCode(res)).toBe("UPSTREAM_ERROR");
        expect(up.asked).toHaveLength(attempt);
      }
    }
    expect(elsewhere.asked).toEqual([]);
    const endless = await referrersServer(() => ({
      type: INDEX,
      body: page(d(1)),
      link: `<${endpoint}?n=1>; rel="next"`,
    }));
    const m = await mirrorOf(endless.url);
    const res = await referrers(m, "team/paged", subject);
    expect(res.status).toBe(502);
    expect(res.body.toString()).toMatch(/more than 16 pages/);
    expect(endless.asked).toHaveLength(16);
  });
});
