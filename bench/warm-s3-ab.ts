/**
 * A/B of the warm read from S3 through one mirror (issue 19: "warm reads from S3 through one replica"), smaller
 * than FLEET: one Ceph RADOS Gateway (test/harness/s3.ts), one upstream registry, and one mirror process per
 * variant named on the command line, all on the same bucket. Each variant is the same code started with
 * `BENCH_S3_READ_VARIANT=<name>` in its environment (nothing reads it unless a change under test does). The
 * `--mib` blob is pushed to the upstream and pulled once through each mirror (the first pull proves it), then
 * `--reps` rounds of one curl GET per variant, in a rotated order, plus a GET straight from the gateway (a
 * presigned URL). Prints MB/s and TTFB per GET and the median per variant.
 *
 *   node bench/warm-s3-ab.ts --variants base,other --mib 256 --reps 6
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir, loadavg } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { CreateBucketCommand, GetObjectCommand } from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import { createS3Client } from "../src/storage/s3-content-store.ts";
import { pushBlob } from "../test/harness/image-builder.ts";
import { freePort, startProcess, waitFor, type ManagedProcess } from "../test/harness/processes.ts";
import { startRegistry } from "../test/harness/registry.ts";
import { startS3 } from "../test/harness/s3.ts";
import { download } from "./measure.ts";

const { values } = parseArgs({
  options: {
    variants: { type: "string", default: "base" },
    mib: { type: "string", default: "256" },
    reps: { type: "string", default: "6" },
    /** Further Node flags for the mirror processes (e.g. --cpu-prof --cpu-prof-dir=/tmp/prof). */
    "mirror-node-arg": { type: "string", multiple: true, default: [] },
  },
});
const nodeArgs = values["mirror-node-arg"];
const variants = values.variants.split(",");
const size = Number(values.mib) * 1024 * 1024;
const reps = Math.min(20, Number(values.reps));
const BUCKET = "warm-ab";

const s3 = await startS3();
const registry = await startRegistry();
const work = await mkdtemp(join(tmpdir(), "warm-s3-ab-"));
const procs: ManagedProcess[] = [];
try {
  const client = await createS3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
  });
  await client.send(new CreateBucketCommand({ Bucket: BUCKET }));
  const bytes = randomBytes(size);
  const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
  await pushBlob(registry.url, "bench/warm", { digest, bytes, mediaType: "application/octet-stream" });

  const urls = new Map<string, string>();
  for (const variant of variants) {
    const port = await freePort();
    const dir = join(work, variant);
    const config = {
      listen: `127.0.0.1:${port}`,
      storage: {
        path: dir,
        s3: {
          endpoint: s3.endpoint,
          region: s3.region,
          bucket: BUCKET,
          prefix: "m/",
          forcePathStyle: true,
          accessKeyId: s3.accessKeyId,
          secretAccessKey: s3.secretAccessKey,
        },
      },
      log: { level: "info" },
      upstreams: { "docker.io": { url: registry.url, default: true } },
    };
    await writeFile(`${dir}.json`, JSON.stringify(config));
    let listening = false;
    // As the bench and the image run it: with the flags of scripts/node-flags.
    const proc = startProcess(
      process.execPath,
      ["--max-semi-space-size=4", ...nodeArgs, "src/main.ts", "--config", `${dir}.json`],
      {
        name: `mirror ${variant}`,
        env: { ...(process.env as Record<string, string>), BENCH_S3_READ_VARIANT: variant },
        onLine: (line) => {
          if (line.includes('"mirror listening"')) listening = true;
        },
      },
    );
    procs.push(proc);
    await waitFor(async () => listening, {
      timeoutMs: 60_000,
      what: `mirror ${variant} to listen`,
      whileRunning: proc,
    });
    const url = `http://127.0.0.1:${port}/v2/bench/warm/blobs/${digest}`;
    urls.set(variant, url);
    await download(url, { expectBytes: size }); // the first: a miss, or a proof from the upstream
    await download(url, { expectBytes: size }); // a hit from now on
  }
  const direct = await getSignedUrl(
    client,
    new GetObjectCommand({ Bucket: BUCKET, Key: `m/blobs/sha256/${digest.slice(7)}` }),
    {
      expiresIn: 3600,
    },
  );
  const targets = [...variants, "s3-direct"];
  const results = new Map<string, Array<{ mbps: number; ttfb: number }>>(targets.map((t) => [t, []]));
  for (let rep = 0; rep < reps; rep++) {
    const order = targets.map((_, i) => targets[(i + rep) % targets.length]!);
    for (const target of order) {
      const d = await download(target === "s3-direct" ? direct : urls.get(target)!, { expectBytes: size });
      results.get(target)!.push({ mbps: d.bytesPerSecond / 1e6, ttfb: d.ttfb * 1000 });
      console.log(
        `rep ${rep + 1} ${target}: ${(d.bytesPerSecond / 1e6).toFixed(0)} MB/s, TTFB ${(d.ttfb * 1000).toFixed(1)} ms, load ${loadavg()[0]!.toFixed(2)}`,
      );
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  for (const [target, rs] of results)
    console.log(
      `${target}: median ${median(rs.map((r) => r.mbps)).toFixed(0)} MB/s (${rs.map((r) => r.mbps.toFixed(0)).join(" ")}), TTFB median ${median(rs.map((r) => r.ttfb)).toFixed(1)} ms`,
    );
  client.destroy();
} finally {
  for (const p of procs) await p.stop();
  await registry.stop();
  await s3.dispose();
  await rm(work, { recursive: true, force: true });
}
