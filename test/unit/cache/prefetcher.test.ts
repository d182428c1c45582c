import { createHash } from "node:crypto";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import type { BlobCache } from "../../../src/cache/blob-cache.ts";
import type { ManifestCache } from "../../../src/cache/manifest-cache.ts";
import { Prefetcher, type JobStatus } from "../../../src/cache/prefetcher.ts";
import { MediaType } from "../../../src/oci/media-types.ts";
import type { UpstreamClient } from "../../../src/upstream/upstream-client.ts";

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** One image per repository; the blob download of repository "slow" stays running until `release()`. */
function fixture() {
  let release = () => undefined as void;
  const held = new Promise<void>((resolve) => (release = resolve));
  const manifests = {
    get: async (_upstream: unknown, repo: string) => {
      const bytes = Buffer.from(
        JSON.stringify({
          mediaType: MediaType.ociManifest,
          config: { digest: digestOf(Buffer.from(repo)), size: repo.length },
          layers: [],
        }),
      );
      return { manifest: { digest: digestOf(bytes), mediaType: MediaType.ociManifest, bytes } };
    },
  } as unknown as ManifestCache;
  const blobs = {
    ensureCached: (_upstream: unknown, repo: string): Promise<void> => (repo === "slow" ? held : Promise.resolve()),
  } as unknown as BlobCache;
  const prefetcher = new Prefetcher({ manifests, blobs, log: pino({ level: "silent" }), finishedJobsKept: 3 });
  const upstream = { name: "docker.io" } as UpstreamClient;
  const start = (repository: string) =>
    prefetcher.start({ upstream, repository, reference: { kind: "tag", tag: "v1" }, platforms: [] });
  return { prefetcher, start, release };
}

async function finished(job: JobStatus): Promise<void> {
  for (let i = 0; i < 100 && job.finishedAt === undefined; i++) await new Promise((r) => setImmediate(r));
  expect(job.finishedAt, `job ${job.reference} did not finish`).toBeDefined();
}

describe("Prefetcher jobs", () => {
  it("keeps a running job however many jobs finish after it, and only the newest finished ones", async () => {
    const { prefetcher, start, release } = fixture();
    const slow = start("slow");
    const quick: JobStatus[] = [];
    for (let i = 0; i < 10; i++) {
      quick.push(start(`quick-${i}`));
      await finished(quick[i]!);
    }
    expect(prefetcher.status(slow.id)).toMatchObject({ state: "running" });
    expect(quick.map((j) => prefetcher.status(j.id) !== undefined)).toEqual([
      ...Array<boolean>(7).fill(false),
      true,
      true,
      true,
    ]);
    release();
    await finished(slow);
    expect(prefetcher.status(slow.id)?.state).toBe("done");
    // The job that finished first of the four kept goes, not the one that just ended.
    expect(prefetcher.status(quick[7]!.id)).toBeUndefined();
    expect(prefetcher.status(quick[8]!.id)).toBeDefined();
  });
});
