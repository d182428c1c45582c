/**
 * What a repository name unlocks, against a real registry: content is stored once for every repository, yet is
 * served only under a repository its upstream confirms (a manifest's `subject` or artifact `blobs` confirm
 * nothing). Upstream traffic is counted in the registry's own log.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushBlob, pushImage, randomLayer, sha256, type Blob, type BuiltImage } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { Teardown } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

/** The private registry (the mirror's upstream). */
let corp: Registry;
let mirror: TestMirror;

const secretLayer = randomLayer(30_000);
const sharedLayer = randomLayer(20_000);
const secret = buildImage({ format: "oci", layers: [sharedLayer, secretLayer], labels: { image: "secret" } });

const upstreams = () => ({ corp: { url: corp.url, default: true } });
const getManifest = (url: string) => fetchRaw(url, { headers: { accept: ALL_MANIFEST_TYPES } });

beforeAll(async () => {
  corp = teardown.track(await startRegistry());
  await pushImage(corp.url, "team/secret", "v1", secret);
  mirror = teardown.track(await startTestMirror({ upstreams: upstreams() }));
  // Someone allowed to read team/secret pulls it: every part of it is now cached.
  expect((await getManifest(`${mirror.url}/v2/team/secret/manifests/v1`)).status).toBe(200);
  for (const blob of secret.blobs()) expect(sha256((await fetchRaw(`${mirror.url}/v2/team/secret/blobs/${blob.digest}`)).body)).toBe(blob.digest);
});

/** Pushes `image` with extra top-level manifest fields (the registry stores them byte-exact); returns its digest. */
async function pushWithExtraFields(registryUrl: string, repo: string, tag: string, image: BuiltImage, extra: Record<string, unknown>): Promise<string> {
  for (const blob of image.blobs()) await pushBlob(registryUrl, repo, blob);
  const manifest = Buffer.from(JSON.stringify({ ...(JSON.parse(image.manifest.toString("utf8")) as object), ...extra }));
  const put = await fetchRaw(`${registryUrl}/v2/${repo}/manifests/${tag}`, { method: "PUT", headers: { "content-type": image.mediaType }, body: manifest });
  expect(put.status, put.body.toString()).toBe(201);
  return sha256(manifest);
}

const descriptorOf = (blob: Blob) => ({ mediaType: blob.mediaType, digest: blob.digest, size: blob.bytes.length });

describe("repositories of one upstream", () => {
  it("links what a manifest's registry had to hold (config, layers), never its subject or artifact blobs", async () => {
    // A repository of its own whose manifest names the secret layer as `subject` and in `blobs`; its registry
    // accepts that (a subject need not exist) although public/evil holds no such blob.
    const own = buildImage({ format: "oci", layers: [sharedLayer, randomLayer(5_000)], labels: { image: "evil" } });
    await pushWithExtraFields(corp.url, "public/evil", "v1", own, { subject: { ...descriptorOf(secretLayer), mediaType: "application/vnd.oci.image.manifest.v1+json" }, blobs: [descriptorOf(secretLayer)] });
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
    const asked = corp.requests().filter((r) => r.kind === "blobs" && r.repo === "public/evil" && r.path.includes(secretLayer.digest));
    expect(asked.length).toBeGreaterThan(0);
    expect(asked.every((r) => r.status === 404)).toBe(true);
  });
});
