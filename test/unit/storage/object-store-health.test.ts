/**
 * ObjectStoreHealth alone: the S3 client is AWS's real one, talking to a loopback HTTP server that plays the
 * object store's part (answers chosen per test: 200, 404, 503, no answer, or a closed port).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { GetObjectCommand, HeadObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { afterEach, describe, expect, it } from "vitest";
import { StoreUnavailableError } from "../../../src/storage/content-store.ts";
import { isStoreFailure, ObjectStoreHealth } from "../../../src/storage/object-store-health.ts";

type Answer = (req: IncomingMessage, res: ServerResponse) => void;

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A loopback server answering every request with `answer` (replaceable); its port. */
async function fakeStore(initial: Answer): Promise<{ url: string; answer: (a: Answer) => void; close(): void }> {
  let answer = initial;
  const server: Server = createServer((req, res) => {
    req.resume();
    answer(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const close = () => {
    server.closeAllConnections();
    server.close();
  };
  cleanups.push(close);
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    answer: (a) => (answer = a),
    close,
  };
}

const status =
  (code: number): Answer =>
  (_req, res) => {
    res.writeHead(code, { "content-length": "0" });
    res.end();
  };

function clientFor(url: string): S3Client {
  const client = new S3Client({
    endpoint: url,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: { accessKeyId: "AKIDTEST", secretAccessKey: "secret" },
    maxAttempts: 1,
  });
  cleanups.push(() => client.destroy());
  return client;
}

function watch(client: S3Client, probeTimeoutMs?: number) {
  const changes: boolean[] = [];
  let failures = 0;
  const health = new ObjectStoreHealth({
    client,
    bucket: "b",
    ...(probeTimeoutMs !== undefined ? { probeTimeoutMs } : {}),
    onFailure: () => failures++,
    onChange: (up) => changes.push(up),
  });
  return { health, changes, failures: () => failures };
}

describe("isStoreFailure", () => {
  it("counts no answer and 5xx as failures, not 404, 403 or an abort", () => {
    expect(isStoreFailure(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }))).toBe(true);
    expect(isStoreFailure({ name: "ServiceUnavailable", $metadata: { httpStatusCode: 503 } })).toBe(true);
    expect(isStoreFailure({ name: "NoSuchKey", $metadata: { httpStatusCode: 404 } })).toBe(false);
    expect(isStoreFailure({ name: "AccessDenied", $metadata: { httpStatusCode: 403 } })).toBe(false);
    expect(isStoreFailure({ name: "AbortError" })).toBe(false);
  });
});

describe("ObjectStoreHealth", () => {
  it("is left up by a 404 (an answer about the object), which stays the SDK's own error", async () => {
    const store = await fakeStore(status(404));
    const client = clientFor(store.url);
    const { health, failures } = watch(client);
    const watched = await client.send(new HeadObjectCommand({ Bucket: "b", Key: "k" })).catch((e: unknown) => e);
    expect(watched).not.toBeInstanceOf(StoreUnavailableError);
    expect((watched as { name: string }).name).toBe("NotFound");
    expect(health.up).toBe(true);
    expect(failures()).toBe(0);
  });

  it("goes down on a 503 with the reason, fails reads at once, and comes up when the probe is answered", async () => {
    const store = await fakeStore(status(503));
    const client = clientFor(store.url);
    const { health, changes, failures } = watch(client);
    const err = await client.send(new GetObjectCommand({ Bucket: "b", Key: "k" })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreUnavailableError);
    expect(health.up).toBe(false);
    expect(health.reason).toMatch(/^HTTP 503/);
    expect(failures()).toBe(1);
    expect(() => health.assertUp()).toThrow(StoreUnavailableError);

    await health.probe(); // still 503: still down
    expect(health.up).toBe(false);
    store.answer(status(200));
    await health.probe();
    expect(health.up).toBe(true);
    expect(health.reason).toBeUndefined();
    expect(changes).toEqual([false, true]);
    expect(() => health.assertUp()).not.toThrow();
  });

  it("goes down when the store refuses connections", async () => {
    const store = await fakeStore(status(200));
    const client = clientFor(store.url);
    const { health } = watch(client);
    store.close();
    await expect(client.send(new HeadObjectCommand({ Bucket: "b", Key: "k" }))).rejects.toBeInstanceOf(
      StoreUnavailableError,
    );
    expect(health.reason).toMatch(/ECONNREFUSED/);
  });

  it("counts a probe that gets no answer within its timeout as down", async () => {
    const store = await fakeStore(() => undefined); // accepts, never answers
    const { health, changes } = watch(clientFor(store.url), 200);
    await health.probe();
    expect(health.up).toBe(false);
    expect(health.reason).toBe("no answer within 200 ms");
    expect(changes).toEqual([false]);
  });
});
