/**
 * Several replicas sharing one real redis-server: they agree on tag freshness (one upstream HEAD per tag per
 * TTL across all of them), and a Redis outage degrades them to their embedded stores without failing a pull.
 * Also the admin purge/refresh endpoint.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { Teardown } from "../harness/processes.ts";
import { startRedis, type RedisServer } from "../harness/redis.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());
const ADMIN = "admin-token-0123456789";

let upstream: Registry;
let redis: RedisServer;
let a: TestMirror;
let b: TestMirror;

beforeAll(async () => {
  upstream = teardown.track(await startRegistry());
  redis = teardown.track(await startRedis());
  const replica = () =>
    startTestMirror({
      upstreams: { "docker.io": { url: upstream.url, default: true, tagTtl: "1500ms" } },
      extra: {
        redis: { url: redis.url, keyPrefix: "replicas-test:", commandTimeout: "300ms" },
        admin: { token: ADMIN },
      },
    });
  a = teardown.track(await replica());
  b = teardown.track(await replica());
});

const getTag = (m: TestMirror, repo: string, tag: string) =>
  fetchRaw(`${m.url}/v2/${repo}/manifests/${tag}`, { headers: { accept: ALL_MANIFEST_TYPES } });
const heads = async (repo: string) => {
  await upstream.sync();
  return upstream.count({ method: "HEAD", kind: "manifests", repo });
};
const readiness = async (m: TestMirror) =>
  (JSON.parse((await fetchRaw(`${m.url}/readyz`)).body.toString()) as { status: string }).status;
/** Waits (bounded) until the replica reports ready again, i.e. sees Redis. */
async function untilReady(m: TestMirror): Promise<void> {
  const deadline = Date.now() + 10_000;
  let status = await readiness(m);
  while (Date.now() < deadline && status !== "ready") {
    await new Promise((r) => setTimeout(r, 100));
    status = await readiness(m);
  }
  expect(status).toBe("ready");
}

describe("replicas on one Redis", () => {
  it("agree on freshness: one upstream HEAD per tag per TTL across replicas", async () => {
    const v1 = buildImage({ format: "oci", layers: [randomLayer(5_000)], labels: { r: "1" } });
    await pushImage(upstream.url, "team/shared", "v1", v1);
    expect((await getTag(a, "team/shared", "v1")).headers["x-mirror-cache"]).toBe("miss");
    await upstream.sync();
    upstream.clearRequests();
    // B has never seen the manifest, but the pointer A stored is fresh: no tag revalidation, only the bytes.
    const fromB = await getTag(b, "team/shared", "v1");
    expect(fromB.body.equals(v1.manifest)).toBe(true);
    expect(await heads("team/shared")).toBe(0);

    // Past the TTL, a burst on both replicas asks the upstream once.
    await new Promise((r) => setTimeout(r, 1600));
    upstream.clearRequests();
    const burst = await Promise.all([a, b, a, b, a, b].map((m) => getTag(m, "team/shared", "v1")));
    for (const res of burst) expect(res.body.equals(v1.manifest)).toBe(true);
    expect(await heads("team/shared")).toBe(1);
    // And within the new TTL, neither asks again.
    upstream.clearRequests();
    await getTag(a, "team/shared", "v1");
    await getTag(b, "team/shared", "v1");
    expect(await heads("team/shared")).toBe(0);
  });

  it("keeps serving when Redis dies, reports degraded, and recovers when it returns", async () => {
    const layer = randomLayer(50_000);
    const image = buildImage({ format: "oci", layers: [layer], labels: { r: "outage" } });
    await pushImage(upstream.url, "team/outage", "v1", image);
    await redis.kill();
    try {
      const res = await getTag(a, "team/outage", "v1");
      expect(res.status).toBe(200);
      expect((await fetchRaw(`${a.url}/v2/team/outage/blobs/${layer.digest}`)).status).toBe(200);
      const ready = await fetchRaw(`${a.url}/readyz`);
      expect(ready.status).toBe(200);
      const body = JSON.parse(ready.body.toString()) as { status: string; reasons: string[] };
      expect(body.status).toBe("degraded");
      expect(body.reasons.join(" ")).toMatch(/metadata store degraded/);
      expect((await fetchRaw(`${a.url}/metrics`)).body.toString()).toMatch(
        /mirror_metadata_store_up\{store="redis"\} 0/,
      );
    } finally {
      await redis.start();
    }
    await untilReady(a);
    expect((await getTag(a, "team/outage", "v1")).status).toBe(200);
  });

  it("does not roll a tag back to Redis's older pointer when Redis returns after a replica revalidated it alone", async () => {
    const v1 = buildImage({ format: "oci", layers: [randomLayer(5_000)], labels: { r: "rollback-1" } });
    const v2 = buildImage({ format: "oci", layers: [randomLayer(5_000)], labels: { r: "rollback-2" } });
    await pushImage(upstream.url, "team/rollback", "latest", v1);
    expect((await getTag(a, "team/rollback", "latest")).headers["docker-content-digest"]).toBe(v1.digest);
    await new Promise((r) => setTimeout(r, 1600)); // past the TTL
    await pushImage(upstream.url, "team/rollback", "latest", v2);
    await redis.pause(); // hung, keeping the older pointer
    try {
      expect((await getTag(a, "team/rollback", "latest")).headers["docker-content-digest"]).toBe(v2.digest);
    } finally {
      await redis.resume();
    }
    await untilReady(a);
    // With the upstream gone, A serves what it knows: the pointer it checked last, not Redis's older one.
    await upstream.stop();
    try {
      const after = await getTag(a, "team/rollback", "latest");
      expect(after.status).toBe(200);
      expect(after.headers["docker-content-digest"]).toBe(v2.digest);
    } finally {
      await upstream.start();
    }
  });

  it("serves blobs pulled while Redis was down after it returns empty, with the upstream down", async () => {
    const image = buildImage({
      format: "oci",
      layers: [randomLayer(20_000), randomLayer(10_000)],
      labels: { r: "links" },
    });
    await pushImage(upstream.url, "team/links", "v1", image);
    await redis.kill();
    try {
      expect((await getTag(a, "team/links", "v1")).status).toBe(200);
      for (const blob of image.blobs())
        expect((await fetchRaw(`${a.url}/v2/team/links/blobs/${blob.digest}`)).status).toBe(200);
    } finally {
      await redis.start();
    }
    await untilReady(a);
    // The links were recorded while Redis was away; without them A would need the upstream to confirm each blob.
    await upstream.stop();
    try {
      for (const blob of image.blobs()) {
        const res = await fetchRaw(`${a.url}/v2/team/links/blobs/${blob.digest}`);
        expect(res.status).toBe(200);
        expect(res.body.equals(blob.bytes)).toBe(true);
      }
    } finally {
      await upstream.start();
    }
  });
});

describe("admin purge and refresh", () => {
  const admin = (m: TestMirror, path: string, body: unknown, token = ADMIN) =>
    fetchRaw(`${m.url}/admin/v1/${path}`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: Buffer.from(JSON.stringify(body)),
    });

  it("refuses requests without the token", async () => {
    for (const token of ["", "wrong-token-0123456789"]) {
      const res = await admin(a, "purge", { upstream: "docker.io", repository: "team/x" }, token);
      expect(res.status).toBe(401);
      expect(errorCode(res)).toBe("UNAUTHORIZED");
    }
  });

  it("refresh makes a retagged image visible at once, on every replica", async () => {
    const v1 = buildImage({ format: "oci", layers: [randomLayer(5_000)], labels: { r: "refresh-1" } });
    const v2 = buildImage({ format: "oci", layers: [randomLayer(5_000)], labels: { r: "refresh-2" } });
    await pushImage(upstream.url, "team/refresh", "latest", v1);
    expect((await getTag(a, "team/refresh", "latest")).headers["docker-content-digest"]).toBe(v1.digest);
    await pushImage(upstream.url, "team/refresh", "latest", v2);
    expect((await getTag(b, "team/refresh", "latest")).headers["docker-content-digest"]).toBe(v1.digest); // within TTL
    const res = await admin(a, "refresh", { upstream: "docker.io", repository: "team/refresh", tag: "latest" });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body.toString())).toMatchObject({ digest: v2.digest });
    expect((await getTag(b, "team/refresh", "latest")).headers["docker-content-digest"]).toBe(v2.digest);
  });

  it("purge forgets a tag, and validates its input", async () => {
    const v1 = buildImage({ format: "oci", layers: [randomLayer(5_000)], labels: { r: "purge" } });
    await pushImage(upstream.url, "team/purge", "v1", v1);
    await getTag(a, "team/purge", "v1");
    upstream.clearRequests();
    expect((await admin(a, "purge", { upstream: "docker.io", repository: "team/purge", tag: "v1" })).status).toBe(200);
    await getTag(a, "team/purge", "v1");
    expect(await heads("team/purge")).toBe(1); // asked the upstream again
    expect(errorCode(await admin(a, "purge", { upstream: "evil.example", repository: "team/purge" }))).toBe(
      "NAME_UNKNOWN",
    );
    expect(errorCode(await admin(a, "purge", { upstream: "docker.io", repository: "../etc" }))).toBe("NAME_INVALID");
  });
});
