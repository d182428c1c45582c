// Self-test of the container mode of the services (services.ts, service-images.ts): Redis, the upstream
// registry (open and token-authenticated) and the S3 server (Ceph's mon, OSD and gateway, and its admin tools)
// run as containers of the locally built images, started through testcontainers on a private dockerd, and
// behave as the host processes do: same ports on 127.0.0.1, the registry's request log, storage on the host that
// survives a restart, Redis paused, killed and restarted, the gateway stopped alone and started again with the
// cluster's data kept.
// It runs in every suite run, whatever TEST_SERVICES says, so CI keeps the mode working.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Dockerd } from "../harness/dockerd.ts";
import { buildImage, MediaTypes, pushImage, randomLayer } from "../harness/image-builder.ts";
import { runCommand, Teardown } from "../harness/processes.ts";
import { startRedis, type RedisServer } from "../harness/redis.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startS3, type S3Server } from "../harness/s3.ts";
import { ensureServiceImages } from "../harness/service-images.ts";
import { startServicesDockerd, useDockerd } from "../harness/services.ts";
import { startTokenServer, type TokenServer } from "../harness/token-server.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

const saved = { ...process.env };
let dockerd: Dockerd | undefined;
let images: Record<"redis" | "registry" | "ceph", string>;
/** Every service this file starts, to dispose them before asking the engine what is left. */
const services: Array<{ stop(): Promise<void>; dispose(): Promise<void> }> = [];
const service = <T extends { stop(): Promise<void>; dispose(): Promise<void> }>(thing: T): T => {
  services.push(thing);
  return teardown.track(thing);
};

/** The docker CLI against the engine the containers run on. */
const docker = (args: string[], timeoutMs = 60_000) =>
  runCommand("docker", args, { timeoutMs, env: { ...(process.env as Record<string, string>) } });

/** IDs of the containers (running or not) created from `image`. */
async function containersOf(image: string): Promise<string[]> {
  const result = await docker(["ps", "-a", "-q", "--no-trunc", "--filter", `ancestor=${image}`]);
  expect(result.code, result.stderr).toBe(0);
  return result.stdout.split("\n").filter((l) => l !== "");
}

beforeAll(async () => {
  // In a run with TEST_SERVICES=containers the global setup has an engine ready; otherwise a private one.
  if (process.env.TEST_SERVICES !== "containers") {
    dockerd = teardown.track(await startServicesDockerd(), "dockerd");
    useDockerd(dockerd);
    process.env.TEST_SERVICES = "containers";
    teardown.add("environment", () => {
      for (const key of Object.keys(process.env)) if (!(key in saved)) delete process.env[key];
      Object.assign(process.env, saved);
    });
  }
  const prepared = await ensureServiceImages(docker, (line) => process.stderr.write(`[service-images] ${line}\n`));
  process.stderr.write(
    `[service-images] ${prepared.steps.map((s) => `${s.step} ${s.image} ${(s.ms / 1000).toFixed(1)} s`).join(", ")}\n`,
  );
  images = prepared.images;
}, 600_000);

describe("Redis in a container", () => {
  let redis: RedisServer;
  let client: Redis;

  beforeAll(async () => {
    redis = service(await startRedis());
    client = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 0, commandTimeout: 500 });
    teardown.add("redis client", () => client.disconnect());
  });

  it("runs the local image on the host's network, reached at 127.0.0.1", async () => {
    expect(redis.url).toBe(`redis://127.0.0.1:${redis.port}`);
    expect(await containersOf(images.redis)).toHaveLength(1);
    await client.connect();
    await client.set("k", "v");
    expect(await client.get("k")).toBe("v");
    expect(await client.info("server")).toMatch(/redis_version:7\./);
  });

  it("hangs when paused (the command times out) and answers again when resumed", async () => {
    await redis.pause();
    await expect(client.get("k")).rejects.toThrow(/timed out/i);
    await redis.resume();
    expect(await client.get("k")).toBe("v");
  });

  it("dies when killed and comes back empty on the same port, in a new container", async () => {
    client.disconnect(); // it would try to reconnect to the dead server for the rest of the file
    const before = await containersOf(images.redis);
    await redis.kill();
    expect(await containersOf(images.redis)).toEqual(before); // exited, not yet removed
    await redis.start();
    // The killed container was removed; the new one is a different container.
    const after = await containersOf(images.redis);
    expect(after).toHaveLength(1);
    expect(after).not.toEqual(before);
    const fresh = new Redis(redis.url, { maxRetriesPerRequest: 0, commandTimeout: 2_000 });
    try {
      expect(await fresh.get("k")).toBeNull();
    } finally {
      fresh.disconnect();
    }
    await redis.stop();
    expect(await containersOf(images.redis)).toEqual([]);
  });
});

describe("the upstream registry in a container", () => {
  let registry: Registry;

  beforeAll(async () => {
    registry = service(await startRegistry());
  });

  it("stores pushed images on the host and logs the requests that reached it", async () => {
    expect(await containersOf(images.registry)).toHaveLength(1);
    const image = buildImage({ layers: [randomLayer(2_000)], format: "oci" });
    await pushImage(registry.url, "selftest/in-container", "v1", image);
    expect(existsSync(join(registry.rootDir, "docker/registry/v2/repositories/selftest/in-container"))).toBe(true);
    registry.clearRequests();
    const res = await fetch(`${registry.url}/v2/selftest/in-container/manifests/v1`, {
      headers: { accept: MediaTypes.ociManifest },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("docker-content-digest")).toBe(image.digest);
    await res.arrayBuffer();
    await registry.sync();
    expect(registry.count({ method: "GET", kind: "manifests", repo: "selftest/in-container" })).toBe(1);
  });

  it("keeps its storage across stop() and start()", async () => {
    await registry.stop();
    expect(await containersOf(images.registry)).toEqual([]);
    await registry.start();
    const res = await fetch(`${registry.url}/v2/selftest/in-container/tags/list`);
    expect(await res.json()).toEqual({ name: "selftest/in-container", tags: ["v1"] });
  });
});

describe("the token-authenticated registry in a container", () => {
  let tokens: TokenServer;
  let registry: Registry;

  beforeAll(async () => {
    tokens = teardown.track(await startTokenServer({ users: { admin: "pw" }, admins: ["admin"] }));
    registry = service(await startRegistry({ auth: { token: tokens } }));
  });

  it("challenges with the host's token server as realm and accepts its tokens (the certificate is mounted)", async () => {
    const anonymous = await fetch(`${registry.url}/v2/`);
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get("www-authenticate")).toContain(`realm="${tokens.realm}"`);
    await anonymous.arrayBuffer();
    await pushImage(registry.url, "selftest/token", "v1", buildImage({ layers: [randomLayer(500)], format: "oci" }), {
      username: "admin",
      password: "pw",
    });
    expect(tokens.requests().filter((r) => r.user === "admin" && r.status === 200).length).toBeGreaterThan(0);
    const authorized = await fetch(`${registry.url}/v2/selftest/token/tags/list`, {
      headers: { authorization: registry.harnessAuthorization("selftest/token")! },
    });
    expect(await authorized.json()).toEqual({ name: "selftest/token", tags: ["v1"] });
  });
});

describe("the S3 server (Ceph RADOS Gateway) in containers", () => {
  let s3: S3Server;
  let client: S3Client;

  beforeAll(async () => {
    s3 = await startS3();
    service({ stop: () => s3.dispose(), dispose: () => s3.dispose() });
    client = new S3Client({
      endpoint: s3.endpoint,
      region: s3.region,
      forcePathStyle: true,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
    });
    teardown.add("s3 client", () => client.destroy());
  }, 180_000);

  const read = async (key: string) =>
    Buffer.from(
      await (await client.send(new GetObjectCommand({ Bucket: "selftest", Key: key }))).Body!.transformToByteArray(),
    ).toString();

  it("runs mon, OSD, gateway and admin tools as containers of the ceph image, on 127.0.0.1", async () => {
    expect(new URL(s3.endpoint).hostname).toBe("127.0.0.1");
    expect(await containersOf(images.ceph)).toHaveLength(4);
    await client.send(new CreateBucketCommand({ Bucket: "selftest" }));
    await client.send(new PutObjectCommand({ Bucket: "selftest", Key: "before", Body: "kept" }));
    expect(await read("before")).toBe("kept");
    // A second user, made with radosgw-admin in the tools container.
    const other = await s3.createUser("selftest-other");
    expect(other.accessKeyId).toMatch(/^K[0-9A-F]{19}$/);
  });

  it("stops the gateway's container alone: the endpoint refuses, and a new one serves the kept data", async () => {
    const before = await containersOf(images.ceph);
    await s3.stopGateway();
    const during = await containersOf(images.ceph);
    expect(during).toHaveLength(3);
    expect(before).toEqual(expect.arrayContaining(during));
    await expect(fetch(`${s3.endpoint}/`, { signal: AbortSignal.timeout(2_000) })).rejects.toThrow();
    await s3.startGateway();
    const after = await containersOf(images.ceph);
    expect(after).toHaveLength(4);
    expect(after.filter((id) => !before.includes(id))).toHaveLength(1);
    expect(await read("before")).toBe("kept");
  });
});

describe("teardown", () => {
  it("leaves no container behind once the services are disposed", async () => {
    expect((await containersOf(images.registry)).length).toBe(2);
    for (const s of services) await s.dispose();
    expect(await containersOf(images.redis)).toEqual([]);
    expect(await containersOf(images.registry)).toEqual([]);
    expect(await containersOf(images.ceph)).toEqual([]);
  });
});
