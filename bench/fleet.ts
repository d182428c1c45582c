/**
 * FLEET (issue 19): three mirror replicas sharing one Redis and one S3 bucket (a real Ceph RADOS Gateway from
 * test/harness/s3.ts), next to distribution 2.8's pull-through cache on its `s3` driver against the same gateway
 * (its own bucket), as one instance and as three instances.
 *  - cold: every repetition, `clients` curls spread round-robin over the instances pull a blob no one has fetched
 *    yet (one per target and repetition): upstream bytes ÷ blob (counted in the upstream's log), per-client TTFB
 *    median against as many clients straight to the upstream, wall time;
 *  - warm: the big blob, once stored in the bucket, through one replica against a GET of the same object straight
 *    from the gateway (a presigned URL, so curl needs no signing);
 *  - peak RSS (VmHWM) of each replica and each distribution instance.
 * Benchmarks print; nothing here asserts a timing. Everything listens on 127.0.0.1 and is stopped by its PID.
 */
import { mkdir, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { CreateBucketCommand, GetObjectCommand, HeadObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import { freePort } from "../test/harness/processes.ts";
import { startRedis } from "../test/harness/redis.ts";
import type { Registry } from "../test/harness/registry.ts";
import { startS3, type S3Server } from "../test/harness/s3.ts";
import { download, upstreamBytesOf, type Download } from "./measure.ts";
import { pushBlobFile, writeRandomFile, type SeededBlob } from "./seed.ts";
import { formatRatio, formatSummary, ratio, rotation, summarize, type Summary } from "./stats.ts";
import { MirrorTarget, ProxyRegistryTarget, type DistributionS3, type MirrorTargetOptions } from "./targets.ts";

const MiB = 1024 * 1024;
const MIRROR_BUCKET = "mirror-fleet";
const DISTRIBUTION_BUCKET = "distribution";
const CLUSTER_SECRET = "bench-fleet-secret-0123456789";
/** How long a stored object may take to appear in the bucket after its clients were served. */
const STORED_TIMEOUT_MS = 120_000;

export type FleetTarget = "mirror" | "dist1" | "dist3" | "direct";

export interface FleetContext {
  workDir: string;
  upstream: Registry;
  repo: string;
  /** The big blob (already in the upstream): the warm measurement. */
  big: SeededBlob;
  /** A 1 MiB blob (already in the upstream) every instance serves once first, as a running server has. */
  first: SeededBlob;
  mediumSize: number;
  clients: number;
  reps: number;
  /** What every replica shares with the bench's single mirror: entry script, node flags, environment. */
  mirror: Pick<MirrorTargetOptions, "repoRoot" | "entry" | "nodeArgs" | "env">;
  record(key: string, value: number): void;
  note(key: string, text: string): void;
  noteLoad(): void;
  progress(msg: string): void;
  /** Registers a stop step, run at the end of the bench whatever happens. */
  cleanup(step: () => Promise<void>): void;
}

/** The URL each of `clients` clients asks: client i the instance i mod n. */
export function roundRobin(urls: readonly string[], clients: number): string[] {
  if (urls.length === 0) throw new Error("roundRobin: no instances");
  return Array.from({ length: clients }, (_, i) => urls[i % urls.length]!);
}

/** Where distribution's s3 driver keeps a blob's bytes: its path layout under `rootdirectory`, without a leading "/". */
export function distributionBlobKey(rootDirectory: string, digest: string): string {
  const hex = digest.slice("sha256:".length);
  return `${rootDirectory}/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`.replace(/^\/+/, "");
}

/** Bytes of the regular files under `dir` (0 when it does not exist). */
async function treeBytes(dir: string): Promise<number> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  let total = 0;
  for (const e of entries)
    if (e.isFile())
      total += await stat(join(e.parentPath, e.name)).then(
        (st) => st.size,
        () => 0,
      );
  return total;
}

/** The first line of an error, for a table cell. */
function reason(err: unknown): string {
  return ((err as Error).message ?? String(err)).split("\n")[0]!.slice(0, 160);
}

export async function runFleet(ctx: FleetContext): Promise<void> {
  const { workDir, upstream, repo, clients, reps } = ctx;
  const blobPath = (b: { digest: string }) => `/v2/${repo}/blobs/${b.digest}`;

  // --- the world: S3, Redis, buckets, the blobs ------------------------------------------------------------
  ctx.progress("FLEET: starting Ceph RGW (S3) and Redis");
  // Room for what FLEET stores (see startS3): the mirror's blobs, the big one, and distribution's uploads and
  // copies; a full OSD stalls writes (today's 4 GiB default filled at the fifth repetition).
  const s3: S3Server = await startS3({ memstoreBytes: 16 * 2 ** 30 });
  ctx.cleanup(() => s3.dispose());
  const redis = await startRedis();
  ctx.cleanup(() => redis.dispose());
  const client = new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
  ctx.cleanup(async () => client.destroy());
  for (const bucket of [MIRROR_BUCKET, DISTRIBUTION_BUCKET])
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
  const exists = async (bucket: string, key: string, size: number): Promise<boolean> => {
    try {
      const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
      return head.ContentLength === size;
    } catch {
      return false;
    }
  };
  const waitStored = async (bucket: string, key: string, size: number): Promise<void> => {
    const deadline = performance.now() + STORED_TIMEOUT_MS;
    while (!(await exists(bucket, key, size))) {
      if (performance.now() > deadline)
        throw new Error(`s3://${bucket}/${key} not stored within ${STORED_TIMEOUT_MS} ms`);
      await sleep(100);
    }
  };

  const seedDir = join(workDir, "fleet-seed");
  await mkdir(seedDir, { recursive: true });
  const cold: Record<"mirror" | "dist1" | "dist3", SeededBlob[]> = { mirror: [], dist1: [], dist3: [] };
  ctx.progress(`FLEET: seeding ${3 * reps} × ${ctx.mediumSize / MiB} MiB`);
  for (let rep = 0; rep < reps; rep++)
    for (const target of ["mirror", "dist1", "dist3"] as const) {
      const blob = await writeRandomFile(join(seedDir, `${target}-${rep}`), ctx.mediumSize);
      await pushBlobFile(upstream.url, repo, blob);
      cold[target].push(blob);
    }
  await rm(seedDir, { recursive: true, force: true });

  // --- the servers ------------------------------------------------------------------------------------------
  const replicas: MirrorTarget[] = [];
  for (let i = 0; i < 3; i++) {
    const port = await freePort();
    replicas.push(
      new MirrorTarget({
        ...ctx.mirror,
        workDir,
        port,
        upstreamUrl: upstream.url,
        dataDir: join(workDir, `fleet-replica-${i + 1}`),
        storageS3: {
          endpoint: s3.endpoint,
          region: s3.region,
          bucket: MIRROR_BUCKET,
          forcePathStyle: true,
          accessKeyId: s3.accessKeyId,
          secretAccessKey: s3.secretAccessKey,
        },
        extraConfig: {
          redis: { url: redis.url, keyPrefix: "fleet:" },
          cluster: { advertiseUrl: `http://127.0.0.1:${port}`, secret: CLUSTER_SECRET },
        },
      }),
    );
  }
  for (const r of replicas) ctx.cleanup(() => r.stop());
  await Promise.all(replicas.map((r) => r.start()));
  ctx.progress(`FLEET: replicas ${replicas.map((r) => `${r.url} (pid ${r.process!.pid})`).join(", ")}`);

  const distS3 = (rootDirectory: string): DistributionS3 => ({
    endpoint: s3.endpoint,
    region: s3.region,
    bucket: DISTRIBUTION_BUCKET,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
    rootDirectory,
  });
  // One instance on its own prefix; three instances sharing another (a scaled-out deployment on one bucket).
  const groups: Record<"dist1" | "dist3", { root: string; instances: ProxyRegistryTarget[]; error?: string }> = {
    dist1: { root: "/one", instances: [] },
    dist3: { root: "/three", instances: [] },
  };
  for (const [target, n] of [
    ["dist1", 1],
    ["dist3", 3],
  ] as const) {
    const group = groups[target];
    for (let i = 0; i < n; i++) {
      const proxy = new ProxyRegistryTarget({
        workDir,
        port: await freePort(),
        upstreamUrl: upstream.url,
        id: `${target}-${i + 1}`,
        s3: distS3(group.root),
      });
      ctx.cleanup(() => proxy.stop());
      group.instances.push(proxy);
    }
    try {
      await Promise.all(group.instances.map((p) => p.start()));
      // Starting is not talking to S3 yet: one small blob through each instance proves the driver works here.
      for (const p of group.instances)
        await download(`${p.url}${blobPath(ctx.first)}`, { expectBytes: ctx.first.size });
    } catch (err) {
      group.error = reason(err);
      ctx.note(`${target}-error`, group.error);
      ctx.progress(`FLEET: distribution ${target} unavailable: ${group.error}`);
      for (const p of group.instances) await p.stop();
    }
  }
  for (const r of replicas) await download(`${r.url}${blobPath(ctx.first)}`, { expectBytes: ctx.first.size });

  // --- cold: clients round-robin over the instances ---------------------------------------------------------
  for (let rep = 0; rep < reps; rep++) {
    for (const target of rotation(["mirror", "dist1", "dist3", "direct"] as const, rep)) {
      if ((target === "dist1" || target === "dist3") && groups[target].error !== undefined) continue;
      ctx.noteLoad();
      const blob = target === "direct" ? cold.mirror[rep]! : cold[target][rep]!;
      const urls =
        target === "mirror"
          ? replicas.map((r) => r.url)
          : target === "direct"
            ? [upstream.url]
            : groups[target].instances.map((p) => p.url);
      await upstream.sync();
      upstream.clearRequests();
      const started = performance.now();
      let downloads: Download[];
      try {
        downloads = await Promise.all(
          roundRobin(urls, clients).map((u) => download(`${u}${blobPath(blob)}`, { expectBytes: blob.size })),
        );
        if (target === "dist1" || target === "dist3")
          await waitStored(DISTRIBUTION_BUCKET, distributionBlobKey(groups[target].root, blob.digest), blob.size);
      } catch (err) {
        if (target !== "dist1" && target !== "dist3") throw err;
        // The reference failing here is a result to print, not a reason to lose the mirror's numbers.
        groups[target].error = reason(err);
        ctx.note(`${target}-error`, groups[target].error);
        ctx.progress(`FLEET: distribution ${target} failed: ${groups[target].error}`);
        continue;
      }
      const wall = (performance.now() - started) / 1000;
      if (target === "mirror") await waitStored(MIRROR_BUCKET, `blobs/sha256/${blob.digest.slice(7)}`, blob.size);
      const ttfb = summarize(downloads.map((d) => d.ttfb * 1000))!;
      ctx.record(`${target}-wall-s`, wall);
      ctx.record(`${target}-ttfb-median-ms`, ttfb.median);
      ctx.record(`${target}-upstream-x`, (await upstreamBytesOf(upstream, blob.digest)) / blob.size);
      ctx.progress(
        `FLEET rep ${rep + 1}/${reps} ${target}: wall ${wall.toFixed(2)} s, TTFB median ${ttfb.median.toFixed(1)} ms`,
      );
    }
  }
  for (const [i, r] of replicas.entries())
    ctx.record(`mirror-${i + 1}-cold-MiB`, (await r.process!.memory()).peak / MiB);
  for (const target of ["dist1", "dist3"] as const)
    if (groups[target].error === undefined)
      for (const [i, p] of groups[target].instances.entries())
        ctx.record(`${target}-${i + 1}-cold-MiB`, (await p.process!.memory()).peak / MiB);

  // --- warm big blob: through one replica vs straight from the gateway -----------------------------------------
  /** The warm rows: the big blob stored through replica 1, then read through replica 2 and from the gateway. */
  async function warmRows(): Promise<void> {
    const big = ctx.big;
    const bigKey = `blobs/sha256/${big.digest.slice(7)}`;
    ctx.progress(`FLEET: storing the ${big.size / MiB} MiB blob in the bucket through replica 1`);
    await download(`${replicas[0]!.url}${blobPath(big)}`, { expectBytes: big.size });
    await waitStored(MIRROR_BUCKET, bigKey, big.size);
    const reader = replicas[1]!; // not the replica that downloaded it: its bytes come from the bucket
    await download(`${reader.url}${blobPath(big)}`, { expectBytes: big.size }); // and once, for its JIT
    for (let rep = 0; rep < reps; rep++) {
      for (const target of rotation(["mirror", "s3"] as const, rep)) {
        ctx.noteLoad();
        // A fresh presigned URL (short expiry) per GET, signed for the gateway's path-style address.
        const url =
          target === "mirror"
            ? `${reader.url}${blobPath(big)}`
            : await getSignedUrl(client, new GetObjectCommand({ Bucket: MIRROR_BUCKET, Key: bigKey }), {
                expiresIn: 300,
              });
        const d = await download(url, { expectBytes: big.size });
        ctx.record(`warm-${target}-MBps`, d.bytesPerSecond / 1e6);
        ctx.record(`warm-${target}-ttfb-ms`, d.ttfb * 1000);
        ctx.progress(
          `FLEET warm rep ${rep + 1}/${reps} ${target}: ${(d.bytesPerSecond / 1e6).toFixed(0)} MB/s, TTFB ${(d.ttfb * 1000).toFixed(1)} ms`,
        );
      }
    }
    ctx.record("mirror-warm-reader-MiB", (await reader.process!.memory()).peak / MiB);
  }
  // A failure here (the big blob not stored in time, a broken GET) costs the warm rows, not the rows above.
  try {
    await warmRows();
  } catch (err) {
    ctx.note("warm-error", reason(err));
    ctx.progress(`FLEET: warm rows failed: ${reason(err)}`);
  }
  // With the blobs in the bucket, a replica's directory holds temp files, the journal and pins: its size says so.
  for (const [i, r] of replicas.entries()) ctx.record(`mirror-${i + 1}-disk-MiB`, (await treeBytes(r.dataDir)) / MiB);
  for (const r of replicas) await r.stop();
  for (const g of Object.values(groups)) for (const p of g.instances) await p.stop();
}

/**
 * The FLEET table: our three replicas, distribution ×1 and ×3 (or "n/a" with the reason when its s3 driver could
 * not serve here), the baseline, the mirror's ratio to it, the target.
 */
export function renderFleetTable(
  get: (key: string) => Summary | undefined,
  notes: Readonly<Record<string, string>>,
  opts: { clients: number; mediumMiB: number; bigMiB: number },
): string {
  const s = (key: string, digits = 0) => formatSummary(get(key), digits);
  const dist = (target: "dist1" | "dist3", key: string, digits = 0) =>
    notes[`${target}-error`] !== undefined ? "n/a" : s(`${target}-${key}`, digits);
  const r = (a: string, b: string) => formatRatio(ratio(get(a), get(b)));
  const warmFailed = notes["warm-error"] !== undefined;
  const warm = (key: string, digits = 0) => (warmFailed ? "n/a" : s(key, digits));
  const perInstance = (prefix: string, n: number) =>
    Array.from({ length: n }, (_, i) => s(`${prefix}-${i + 1}-cold-MiB`)).join(" / ");
  const rows: string[][] = [
    [
      `cold ${opts.mediumMiB} MiB, ${opts.clients} clients round-robin: upstream bytes ÷ blob`,
      s("mirror-upstream-x", 2),
      dist("dist1", "upstream-x", 2),
      dist("dist3", "upstream-x", 2),
      `direct ${s("direct-upstream-x", 2)}`,
      "",
      "exactly 1.00",
    ],
    [
      "cold: per-client TTFB median ms",
      s("mirror-ttfb-median-ms", 1),
      dist("dist1", "ttfb-median-ms", 1),
      dist("dist3", "ttfb-median-ms", 1),
      `direct ${s("direct-ttfb-median-ms", 1)}`,
      r("mirror-ttfb-median-ms", "direct-ttfb-median-ms"),
      "≤ 1.5× direct",
    ],
    [
      "cold: wall s",
      s("mirror-wall-s", 2),
      dist("dist1", "wall-s", 2),
      dist("dist3", "wall-s", 2),
      `direct ${s("direct-wall-s", 2)}`,
      r("mirror-wall-s", "direct-wall-s"),
      "",
    ],
    [
      `warm ${opts.bigMiB} MiB from S3 through one replica: MB/s`,
      warm("warm-mirror-MBps"),
      "",
      "",
      `S3 GET ${warm("warm-s3-MBps")}`,
      warmFailed ? "" : r("warm-mirror-MBps", "warm-s3-MBps"),
      "≥ 0.8× S3 GET",
    ],
    [
      "warm: TTFB ms",
      warm("warm-mirror-ttfb-ms", 1),
      "",
      "",
      `S3 GET ${warm("warm-s3-ttfb-ms", 1)}`,
      warmFailed ? "" : r("warm-mirror-ttfb-ms", "warm-s3-ttfb-ms"),
      "",
    ],
    [
      "peak RSS MiB per instance, after the cold runs",
      perInstance("mirror", 3),
      notes["dist1-error"] !== undefined ? "n/a" : perInstance("dist1", 1),
      notes["dist3-error"] !== undefined ? "n/a" : perInstance("dist3", 3),
      "",
      "",
      "",
    ],
    ["peak RSS MiB, the replica serving the warm reads", warm("mirror-warm-reader-MiB"), "", "", "", "", ""],
    [
      "local disk MiB per replica at the end (temp files, journal)",
      Array.from({ length: 3 }, (_, i) => s(`mirror-${i + 1}-disk-MiB`, 1)).join(" / "),
      "",
      "",
      "",
      "",
      "",
    ],
  ];
  const header = ["FLEET", "mirror ×3", "distribution ×1", "distribution ×3", "baseline", "mirror ratio", "target"];
  const lines = [header, header.map(() => "---"), ...rows].map((cells) => `| ${cells.join(" | ")} |`);
  for (const target of ["dist1", "dist3"] as const)
    if (notes[`${target}-error`] !== undefined)
      lines.push("", `distribution ${target === "dist1" ? "×1" : "×3"} n/a: ${notes[`${target}-error`]}`);
  if (warmFailed) lines.push("", `warm rows n/a: ${notes["warm-error"]}`);
  return lines.join("\n");
}
