/**
 * Graceful shutdown of a mirror with a download in progress: each part is stopped once, in order. New
 * connections are refused before anything else; running fills get their grace; clients still connected are cut
 * off after it; then the upstream pools, the metadata store and the data directory's lock, in that order.
 *
 * Then SIGTERM to the real process (`node src/main.ts`) with real clients reading large blobs: a node http client
 * that holds its reading until the shutdown has begun, then reads in paced steps, so the transfer spans the
 * signal whatever the machine's speed. It gets every byte (sha256) within the grace, cached or following a fill
 * that is committed; past a short grace it is cut and nothing is committed. The process logs one line at the
 * start of the shutdown and one at its end, and exits 0.
 */
import { createHash } from "node:crypto";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { Agent, get as httpGet, type IncomingHttpHeaders } from "node:http";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Janitor } from "../../src/cache/janitor.ts";
import { FillCoordinator } from "../../src/fill/fill-coordinator.ts";
import { EmbeddedMetadataStore } from "../../src/metadata/embedded-metadata-store.ts";
import { BlobStore } from "../../src/storage/blob-store.ts";
import { DataDirLock } from "../../src/storage/data-dir-lock.ts";
import { UpstreamClient } from "../../src/upstream/upstream-client.ts";
import { buildImage, pushImage, randomLayer, type Blob } from "../harness/image-builder.ts";
import { startTestMirror } from "../harness/mirror.ts";
import { startProcess, Teardown, waitFor, type ManagedProcess } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { fetchRaw } from "./client.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());
let upstream: Registry;
let relay: Relay;

beforeAll(async () => {
  upstream = teardown.track(await startRegistry());
  relay = teardown.track(await startRelay(upstream.url));
});

/** Whether a TCP connection to the port is accepted. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

describe("shutdown", () => {
  it("stops each part once: accepting, then fills (with their grace), then clients, the index saved, upstream pools, metadata and the lock", async () => {
    const layer = randomLayer(1024 * 1024);
    await pushImage(upstream.url, "team/shutdown", "v1", buildImage({ format: "oci", layers: [layer] }));
    // No idle timeout to end the stall below: shutdown must not wait for it once the grace is over.
    const mirror = await startTestMirror({
      upstreams: { "docker.io": { url: relay.url, default: true, timeouts: { bodyIdle: "10m" } } },
      extra: { shutdownGrace: "1s" },
    });
    // The download stalls part-way: the fill is running when the shutdown begins, and outlasts its grace.
    relay.setFault({ kind: "stallBody", afterBytes: 64 * 1024, match: /^GET .*\/blobs\// });
    const events: string[] = [];
    const pulling = fetchRaw(`${mirror.url}/v2/team/shutdown/blobs/${layer.digest}`).then((res) => {
      events.push(res.broken !== undefined ? "client cut off" : `client answered ${res.status}`);
    });
    await waitFor(async () => mirror.mirror.fillsInFlight === 1, { timeoutMs: 10_000, what: "the fill to start" });

    // The real methods, called below with the spied object as `this`.
    /* eslint-disable @typescript-eslint/unbound-method */
    const original = {
      stop: Janitor.prototype.stop,
      drain: FillCoordinator.prototype.drain,
      upstreamClose: UpstreamClient.prototype.close,
      metadataClose: EmbeddedMetadataStore.prototype.close,
      release: DataDirLock.prototype.release,
      saveIndex: BlobStore.prototype.saveIndex,
    };
    /* eslint-enable @typescript-eslint/unbound-method */
    const spies = [
      vi.spyOn(Janitor.prototype, "stop").mockImplementation(function (this: Janitor) {
        events.push("janitor stopped");
        original.stop.call(this);
      }),
      vi.spyOn(FillCoordinator.prototype, "drain").mockImplementation(async function (
        this: FillCoordinator,
        ms: number,
      ) {
        events.push(`fills draining, new connections accepted: ${await accepts(mirror.port)}`);
        await original.drain.call(this, ms);
        events.push("fills drained");
      }),
      vi.spyOn(UpstreamClient.prototype, "close").mockImplementation(async function (this: UpstreamClient) {
        events.push("upstream pool closed");
        await original.upstreamClose.call(this);
      }),
      vi.spyOn(EmbeddedMetadataStore.prototype, "close").mockImplementation(async function (
        this: EmbeddedMetadataStore,
      ) {
        events.push("metadata store closed");
        await original.metadataClose.call(this);
      }),
      vi.spyOn(BlobStore.prototype, "saveIndex").mockImplementation(async function (this: BlobStore) {
        events.push("cache index saved");
        return original.saveIndex.call(this);
      }),
      vi.spyOn(DataDirLock.prototype, "release").mockImplementation(async function (this: DataDirLock) {
        events.push("lock released");
        await original.release.call(this);
      }),
    ];
    try {
      await mirror.stop();
      await mirror.mirror.close(); // again: nothing is stopped twice
      await pulling;
    } finally {
      for (const spy of spies) spy.mockRestore();
      relay.setFault(null);
    }
    expect(events.filter((e) => !e.startsWith("client"))).toEqual([
      "janitor stopped",
      "fills draining, new connections accepted: false",
      "fills drained",
      "cache index saved",
      "upstream pool closed",
      "metadata store closed",
      "lock released",
    ]);
    // The client that was reading the stalled download kept its connection through the grace.
    expect(events.indexOf("client cut off")).toBeGreaterThan(events.indexOf("fills drained"));
  });
});

/** A mirror process (`node src/main.ts`) over `dataDir`, with its JSON log lines parsed as they come. */
interface MirrorProcess {
  proc: ManagedProcess;
  url: string;
  port: number;
  /** Log lines so far, parsed. */
  log: Array<Record<string, unknown>>;
  /** Waits (bounded) for the first log line with this message, and returns it. */
  logLine(msg: string | RegExp): Promise<Record<string, unknown>>;
}

async function startMirrorProcess(dataDir: string, upstreamUrl: string, grace: string): Promise<MirrorProcess> {
  const configFile = join(dataDir, "..", `${dataDir.split("/").pop()!}.yaml`);
  await writeFile(
    configFile,
    `listen: "127.0.0.1:0"\nstorage: { path: ${JSON.stringify(dataDir)} }\nshutdownGrace: ${grace}\nlog: { level: info }\n` +
      `upstreams:\n  docker.io: { url: ${JSON.stringify(upstreamUrl)}, default: true }\n`,
  );
  teardown.add("mirror config", () => rm(configFile, { force: true }));
  const log: Array<Record<string, unknown>> = [];
  const proc = teardown.track(
    startProcess(process.execPath, ["src/main.ts", "--config", configFile], {
      name: "mirror",
      onLine: (line) => {
        try {
          log.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          // not a log line
        }
      },
    }),
  );
  const logLine = async (msg: string | RegExp) => {
    const matches = (l: Record<string, unknown>) =>
      typeof l.msg === "string" && (typeof msg === "string" ? l.msg === msg : msg.test(l.msg));
    await waitFor(async () => log.some(matches), { timeoutMs: 30_000, what: `log line "${String(msg)}"` });
    return log.find(matches)!;
  };
  const listening = await logLine("mirror listening");
  const port = listening.port as number;
  return { proc, url: `http://127.0.0.1:${port}`, port, log, logLine };
}

async function tempDataDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "shutdown-"));
  teardown.add("data dir", () => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Whether the blob is committed in the cache directory (blobs/sha256/<hh>/<hex>). */
async function committed(dataDir: string, digest: string): Promise<boolean> {
  const hex = digest.slice("sha256:".length);
  const files = await readdir(join(dataDir, "blobs", "sha256", hex.slice(0, 2))).catch(() => [] as string[]);
  return files.includes(hex);
}

/** A response whose body is read only when asked, then in paced steps (a slow client). */
interface SlowRead {
  status: number;
  headers: IncomingHttpHeaders;
  /** Whether the request went over a connection the agent had kept alive. */
  reusedSocket: boolean;
  /** Starts reading: a 10 ms pause after every 1 MiB. */
  read(): void;
  /** Settles when the body ended or broke: what arrived, and whether it was complete. */
  done: Promise<{ bytes: number; digest: string; complete: boolean }>;
}

const PACE_BYTES = 1024 * 1024;
const PACE_MS = 10;

function slowGet(url: string, agent: Agent): Promise<SlowRead> {
  return new Promise((resolve, reject) => {
    const req = httpGet(url, { agent }, (res) => {
      const hash = createHash("sha256");
      let bytes = 0;
      const done = new Promise<{ bytes: number; digest: string; complete: boolean }>((settle) => {
        res.on("error", () => undefined); // a cut transfer: told by `complete` below
        res.once("close", () => settle({ bytes, digest: `sha256:${hash.digest("hex")}`, complete: res.complete }));
      });
      resolve({
        status: res.statusCode ?? 0,
        headers: res.headers,
        reusedSocket: req.reusedSocket,
        read() {
          let sincePause = 0;
          res.on("data", (chunk: Buffer) => {
            hash.update(chunk);
            bytes += chunk.length;
            sincePause += chunk.length;
            if (sincePause < PACE_BYTES) return;
            sincePause = 0;
            res.pause();
            setTimeout(() => res.resume(), PACE_MS);
          });
        },
        done,
      });
    });
    req.once("error", reject);
  });
}

describe("SIGTERM to the mirror process", () => {
  const BLOB_BYTES = 48 * 1024 * 1024;
  let big: Blob;

  beforeAll(async () => {
    big = randomLayer(BLOB_BYTES);
    await pushImage(upstream.url, "team/big", "v1", buildImage({ format: "oci", layers: [big] }));
  }, 60_000);

  it("lets a client reading a cached blob finish byte-exact; refuses new connections; answers a request on a live connection, /readyz 503, with Connection: close", async () => {
    const dataDir = await tempDataDir();
    const m = await startMirrorProcess(dataDir, upstream.url, "25s");
    const blobUrl = `${m.url}/v2/team/big/blobs/${big.digest}`;
    // Cached first.
    const warm = await slowGet(blobUrl, new Agent());
    warm.read();
    expect(await warm.done).toEqual({ bytes: big.bytes.length, digest: big.digest, complete: true });
    await waitFor(async () => committed(dataDir, big.digest), { timeoutMs: 10_000, what: "the blob committed" });

    // Two slow clients, each on its own kept-alive connection, both mid-transfer when the signal comes.
    const agents = [new Agent({ keepAlive: true, maxSockets: 1 }), new Agent({ keepAlive: true, maxSockets: 1 })];
    teardown.add("client agents", () => agents.forEach((a) => a.destroy()));
    const [slow, other] = await Promise.all(agents.map((agent) => slowGet(blobUrl, agent)));
    expect([slow!.status, other!.status]).toEqual([200, 200]);
    process.kill(m.proc.pid, "SIGTERM");
    const started = await m.logLine("shutting down");
    expect(started).toMatchObject({ signal: "SIGTERM", responses: 2, fills: 0, graceMs: 25_000 });

    // The listener is closed: a new connection is refused, while the two responses are still in progress.
    expect(await accepts(m.port)).toBe(false);
    expect(m.proc.running()).toBe(true);
    // The second client reads its blob to the end, then asks /readyz on the same connection: answered, not
    // ready, and the connection closes after it.
    other!.read();
    expect(await other!.done).toEqual({ bytes: big.bytes.length, digest: big.digest, complete: true });
    const ready = await new Promise<{ status: number; connection?: string; reused: boolean; body: string }>(
      (resolve, reject) => {
        const req = httpGet(`${m.url}/readyz`, { agent: agents[1] }, (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.once("end", () =>
            resolve({
              status: res.statusCode ?? 0,
              connection: res.headers.connection,
              reused: req.reusedSocket,
              body: Buffer.concat(chunks).toString("utf8"),
            }),
          );
        });
        req.once("error", reject);
      },
    );
    expect(ready.reused).toBe(true);
    expect(ready.status).toBe(503);
    expect(ready.connection).toBe("close");
    expect(JSON.parse(ready.body)).toEqual({ status: "unready", reasons: ["shutting down"] });
    expect(m.proc.running()).toBe(true); // the first client is still held

    // The first client now reads, slowly, to the end: every byte, then the process exits 0, drained.
    slow!.read();
    expect(await slow!.done).toEqual({ bytes: big.bytes.length, digest: big.digest, complete: true });
    expect(await m.proc.exited).toBe(0);
    expect(await m.logLine(/^shut down/)).toMatchObject({ drained: true, responsesCut: 0, fillsCut: 0 });
  });

  it("lets a cold pull in progress finish, and commits its fill: the next start serves it from the cache", async () => {
    const dataDir = await tempDataDir();
    const m = await startMirrorProcess(dataDir, relay.url, "25s");
    const blobUrl = (base: string) => `${base}/v2/team/big/blobs/${big.digest}`;
    // The upstream's body comes slowly enough that the fill is still running when the signal comes.
    relay.setFault({ kind: "throttle", bytesPerSecond: 8 * 1024 * 1024 });
    relay.requests.length = 0;
    try {
      const client = await slowGet(blobUrl(m.url), new Agent());
      expect(client.status).toBe(200);
      process.kill(m.proc.pid, "SIGTERM");
      expect(await m.logLine("shutting down")).toMatchObject({ signal: "SIGTERM", responses: 1, fills: 1 });
      client.read();
      expect(await client.done).toEqual({ bytes: big.bytes.length, digest: big.digest, complete: true });
      expect(await m.proc.exited).toBe(0);
      expect(await m.logLine(/^shut down/)).toMatchObject({ drained: true, responsesCut: 0, fillsCut: 0 });
    } finally {
      relay.setFault(null);
    }
    expect(await committed(dataDir, big.digest)).toBe(true);
    // The index is saved after the drain, the fill's commit in it.
    const saved = await m.logLine("cache index saved for the next start");
    expect(saved.objects).toBeGreaterThanOrEqual(1);
    const upstreamGets = () => relay.requests.filter((r) => r.method === "GET" && r.path.includes("/blobs/")).length;
    expect(upstreamGets()).toBe(1);

    const again = await startMirrorProcess(dataDir, relay.url, "25s");
    // The next start reads that index; the shard the fill committed into during the drain changed too recently
    // before it was saved to be trusted, so it is scanned, and the blob found there.
    const rebuilt = await again.logLine("cache index rebuilt");
    expect(rebuilt).toMatchObject({ objects: saved.objects });
    const snapshot = rebuilt.snapshot as { objects: number; shardsScanned: number };
    expect(snapshot.objects).toBeLessThan(saved.objects as number);
    expect(snapshot.shardsScanned).toBeGreaterThanOrEqual(1);
    const hit = await slowGet(blobUrl(again.url), new Agent());
    hit.read();
    expect(await hit.done).toEqual({ bytes: big.bytes.length, digest: big.digest, complete: true });
    expect(upstreamGets()).toBe(1); // from the cache: nothing more went upstream
    await again.proc.stop();
    expect(await again.proc.exited).toBe(0);
  });

  it("past a grace shorter than the transfer, cuts the client and the fill, says so, and commits nothing", async () => {
    const dataDir = await tempDataDir();
    const m = await startMirrorProcess(dataDir, relay.url, "1s");
    // At this rate the download lasts far longer than the grace.
    relay.setFault({ kind: "throttle", bytesPerSecond: 1024 * 1024 });
    try {
      const client = await slowGet(`${m.url}/v2/team/big/blobs/${big.digest}`, new Agent());
      expect(client.status).toBe(200);
      process.kill(m.proc.pid, "SIGTERM");
      expect(await m.logLine("shutting down")).toMatchObject({ signal: "SIGTERM", responses: 1, fills: 1 });
      client.read();
      const got = await client.done;
      expect(got.complete).toBe(false);
      expect(got.bytes).toBeLessThan(big.bytes.length);
      // Exit status 0 all the same: the stop went as configured (docs/configuration.md, shutdownGrace).
      expect(await m.proc.exited).toBe(0);
      expect(await m.logLine(/^shut down/)).toMatchObject({ drained: false, responsesCut: 1, fillsCut: 1 });
    } finally {
      relay.setFault(null);
    }
    expect(await committed(dataDir, big.digest)).toBe(false);
    // The next start has nothing of it: a miss, downloaded again, and served byte-exact.
    relay.requests.length = 0;
    const again = await startMirrorProcess(dataDir, relay.url, "25s");
    const pull = await slowGet(`${again.url}/v2/team/big/blobs/${big.digest}`, new Agent());
    pull.read();
    expect(await pull.done).toEqual({ bytes: big.bytes.length, digest: big.digest, complete: true });
    expect(relay.requests.filter((r) => r.method === "GET" && r.path.includes("/blobs/")).length).toBe(1);
    await again.proc.stop();
  });
});
