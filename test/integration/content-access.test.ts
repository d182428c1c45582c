/**
 * What a repository name unlocks (docs/security.md), against real registries: content is stored once for every
 * repository and upstream, yet is served only under a repository its upstream confirms (a manifest's `subject`
 * or artifact `blobs` confirm nothing), and only through an upstream that served the bytes itself: another
 * upstream's HEAD 200, or its Docker-Content-Digest, unlocks nothing. Upstream traffic is counted in the
 * registries' own logs.
 */
import { readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { JOURNAL_FILE } from "../../src/metadata/tag-journal.ts";
import {
  buildImage,
  pushBlob,
  pushImage,
  randomLayer,
  sha256,
  type Blob,
  type BuiltImage,
} from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { Teardown } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

/** The private registry (the mirror's default upstream) and a second one, reached through a relay that can lie. */
let corp: Registry;
let other: Registry;
let otherRelay: Relay;
let mirror: TestMirror;

const secretLayer = randomLayer(30_000);
const sharedLayer = randomLayer(20_000);
const secret = buildImage({ format: "oci", layers: [sharedLayer, secretLayer], labels: { image: "secret" } });

const upstreams = () => ({ corp: { url: corp.url, default: true }, other: { url: otherRelay.url } });
const getManifest = (url: string) => fetchRaw(url, { headers: { accept: ALL_MANIFEST_TYPES } });

beforeAll(async () => {
  corp = teardown.track(await startRegistry());
  other = teardown.track(await startRegistry());
  otherRelay = teardown.track(await startRelay(other.url));
  await pushImage(corp.url, "team/secret", "v1", secret);
  mirror = teardown.track(await startTestMirror({ upstreams: upstreams() }));
  // Someone allowed to read team/secret pulls it: every part of it is now cached.
  expect((await getManifest(`${mirror.url}/v2/team/secret/manifests/v1`)).status).toBe(200);
  for (const blob of secret.blobs())
    expect(sha256((await fetchRaw(`${mirror.url}/v2/team/secret/blobs/${blob.digest}`)).body)).toBe(blob.digest);
});

/** Pushes `image` with extra top-level manifest fields (the registry stores them byte-exact); returns its digest. */
async function pushWithExtraFields(
  registryUrl: string,
  repo: string,
  tag: string,
  image: BuiltImage,
  extra: Record<string, unknown>,
): Promise<string> {
  for (const blob of image.blobs()) await pushBlob(registryUrl, repo, blob);
  const manifest = Buffer.from(
    JSON.stringify({ ...(JSON.parse(image.manifest.toString("utf8")) as object), ...extra }),
  );
  const put = await fetchRaw(`${registryUrl}/v2/${repo}/manifests/${tag}`, {
    method: "PUT",
    headers: { "content-type": image.mediaType },
    body: manifest,
  });
  expect(put.status, put.body.toString()).toBe(201);
  return sha256(manifest);
}

/** An http URL on loopback where nothing listens (connections are refused). */
async function closedPortUrl(): Promise<string> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return `http://127.0.0.1:${port}`;
}

const descriptorOf = (blob: Blob) => ({ mediaType: blob.mediaType, digest: blob.digest, size: blob.bytes.length });

describe("repositories of one upstream", () => {
  it("links what a manifest's registry had to hold (config, layers), never its subject or artifact blobs", async () => {
    // A repository of its own whose manifest names the secret layer as `subject` and in `blobs`; its registry
    // accepts that (a subject need not exist) although public/evil holds no such blob.
    const own = buildImage({ format: "oci", layers: [sharedLayer, randomLayer(5_000)], labels: { image: "evil" } });
    await pushWithExtraFields(corp.url, "public/evil", "v1", own, {
      subject: { ...descriptorOf(secretLayer), mediaType: "application/vnd.oci.image.manifest.v1+json" },
      blobs: [descriptorOf(secretLayer)],
    });
    await corp.sync();
    corp.clearRequests();

    expect((await getManifest(`${mirror.url}/v2/public/evil/manifests/v1`)).status).toBe(200);
    // The layer public/evil really holds is confirmed by its manifest: served from the one cached copy.
    const shared = await fetchRaw(`${mirror.url}/v2/public/evil/blobs/${sharedLayer.digest}`);
    expect(shared.headers["x-mirror-cache"]).toBe("hit");
    expect(sha256(shared.body)).toBe(sharedLayer.digest);
    // The secret layer is only named: the upstream is asked, and its 404 is the answer.
    for (const method of ["GET", "HEAD"] as const) {
      const res = await fetchRaw(`${mirror.url}/v2/public/evil/blobs/${secretLayer.digest}`, { method });
      expect(res.status, method).toBe(404);
      if (method === "GET") expect(errorCode(res)).toBe("BLOB_UNKNOWN");
    }
    await corp.sync();
    expect(corp.count({ kind: "blobs", repo: "public/evil", pathIncludes: sharedLayer.digest })).toBe(0);
    const asked = corp
      .requests()
      .filter((r) => r.kind === "blobs" && r.repo === "public/evil" && r.path.includes(secretLayer.digest));
    expect(asked.length).toBeGreaterThan(0);
    expect(asked.every((r) => r.status === 404)).toBe(true);
  });
});

describe("upstreams", () => {
  it("another upstream's HEAD 200 does not unlock a blob it never served", async () => {
    otherRelay.setFault({ kind: "status", status: 200, match: /^HEAD \/v2\/.+\/blobs\// });
    try {
      const res = await fetchRaw(`${mirror.url}/v2/other/x/y/blobs/${secretLayer.digest}`);
      expect(res.status).toBe(404);
      expect(errorCode(res)).toBe("BLOB_UNKNOWN");
      expect(res.body.includes(secretLayer.bytes)).toBe(false);
      // Its own bytes were asked for, and it had none.
      await other.sync();
      expect(
        other.count({ method: "GET", kind: "blobs", repo: "x/y", pathIncludes: secretLayer.digest, status: 404 }),
      ).toBe(1);
    } finally {
      otherRelay.setFault(null);
    }
  });

  it("another upstream's Docker-Content-Digest does not unlock a manifest it never served, by tag or by digest", async () => {
    otherRelay.setFault({
      kind: "status",
      status: 200,
      headers: { "docker-content-digest": secret.digest },
      match: /^HEAD \/v2\/.+\/manifests\//,
    });
    try {
      for (const reference of ["latest", secret.digest]) {
        const res = await getManifest(`${mirror.url}/v2/other/x/y/manifests/${reference}`);
        expect(res.status, reference).toBe(404);
        expect(errorCode(res), reference).toBe("MANIFEST_UNKNOWN");
      }
    } finally {
      otherRelay.setFault(null);
    }
  });

  it("serves content both upstreams hold through the second once its own bytes verified, then from the cache", async () => {
    await pushImage(
      other.url,
      "lib/base",
      "v1",
      buildImage({ format: "oci", layers: [sharedLayer], labels: { image: "base" } }),
    );
    await other.sync();
    other.clearRequests();
    expect((await getManifest(`${mirror.url}/v2/other/lib/base/manifests/v1`)).status).toBe(200);
    const first = await fetchRaw(`${mirror.url}/v2/other/lib/base/blobs/${sharedLayer.digest}`);
    expect(first.headers["x-mirror-cache"]).toBe("uncached"); // passed through while it was verified
    expect(sha256(first.body)).toBe(sharedLayer.digest);
    const second = await fetchRaw(`${mirror.url}/v2/other/lib/base/blobs/${sharedLayer.digest}`);
    expect(second.headers["x-mirror-cache"]).toBe("hit");
    expect(sha256(second.body)).toBe(sharedLayer.digest);
    await other.sync();
    expect(other.count({ method: "GET", kind: "blobs", pathIncludes: sharedLayer.digest })).toBe(1);
  });
});

describe("content cached before provenance was recorded", () => {
  it("is proved again by a verified GET from its upstream, except where that upstream is offline or unreachable", async () => {
    const layer = randomLayer(10_000);
    const image = buildImage({ format: "oci", layers: [layer], labels: { image: "legacy" } });
    await pushImage(corp.url, "team/legacy", "v1", image);
    const first = await startTestMirror({ upstreams: upstreams() });
    const dataDir = first.dataDir;
    teardown.add("legacy data dir", () => rm(dataDir, { recursive: true, force: true }));
    expect((await getManifest(`${first.url}/v2/team/legacy/manifests/v1`)).status).toBe(200);
    expect(sha256((await fetchRaw(`${first.url}/v2/team/legacy/blobs/${layer.digest}`)).body)).toBe(layer.digest);
    await first.mirror.close();
    // What an earlier version left: the same journal without provenance records.
    const journal = join(dataDir, "metadata", JOURNAL_FILE);
    const lines = (await readFile(journal, "utf8")).split("\n");
    await writeFile(journal, lines.filter((line) => !line.startsWith('["provenance"')).join("\n"));

    const offline = await startTestMirror({
      upstreams: { ...upstreams(), corp: { url: corp.url, default: true, offline: true } },
      dataDir,
    });
    try {
      const res = await fetchRaw(`${offline.url}/v2/team/legacy/blobs/${layer.digest}`);
      expect(res.headers["x-mirror-cache"]).toBe("hit");
      expect(sha256(res.body)).toBe(layer.digest);
    } finally {
      await offline.mirror.close();
    }

    // The upstream is down when the upgraded mirror first meets the content: served from the cache, as stale.
    const down = await startTestMirror({
      upstreams: { ...upstreams(), corp: { url: await closedPortUrl(), default: true } },
      dataDir,
    });
    try {
      const res = await fetchRaw(`${down.url}/v2/team/legacy/blobs/${layer.digest}`);
      expect(res.status).toBe(200);
      expect(sha256(res.body)).toBe(layer.digest);
      const manifest = await getManifest(`${down.url}/v2/team/legacy/manifests/${image.digest}`);
      expect(manifest.status).toBe(200);
      expect(sha256(manifest.body)).toBe(image.digest);
    } finally {
      await down.mirror.close();
    }

    await corp.sync();
    corp.clearRequests();
    const online = await startTestMirror({ upstreams: upstreams(), dataDir });
    try {
      const proved = await fetchRaw(`${online.url}/v2/team/legacy/blobs/${layer.digest}`);
      expect(proved.headers["x-mirror-cache"]).toBe("uncached");
      expect(sha256(proved.body)).toBe(layer.digest);
      const again = await fetchRaw(`${online.url}/v2/team/legacy/blobs/${layer.digest}`);
      expect(again.headers["x-mirror-cache"]).toBe("hit");
      await corp.sync();
      expect(corp.count({ method: "GET", kind: "blobs", pathIncludes: layer.digest })).toBe(1);
    } finally {
      await online.mirror.close();
    }
  });
});
