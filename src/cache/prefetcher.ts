/**
 * Pulls an image into the cache ahead of time, through the same caches as client pulls: the manifest (by tag
 * or digest), every platform of an index (or the selected ones), and every config and layer. Runs as a job
 * whose progress can be polled; blob downloads already running for clients are joined, not repeated.
 */
import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import type { ManifestReference } from "../oci/reference.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import type { BlobCache } from "./blob-cache.ts";
import { walkImage } from "./image-walker.ts";
import type { ManifestCache } from "./manifest-cache.ts";
import { errorMessage } from "../caught-errors.ts";

export interface PrefetchRequest {
  upstream: UpstreamClient;
  repository: string;
  reference: ManifestReference;
  /** `os/architecture[/variant]`; empty: every platform of an index. */
  platforms: readonly string[];
}

export interface JobStatus {
  id: string;
  reference: string;
  state: "running" | "done" | "failed";
  manifests: number;
  blobs: { total: number; done: number };
  bytes: { total: number; done: number };
  errors: string[];
  /** The digest the reference named when its manifest was fetched (absent until then). */
  digest?: string;
  startedAt: string;
  finishedAt?: string;
}

/** Blob downloads one job runs at once: enough to overlap latency, few enough not to crowd clients out. */
const PARALLEL_BLOBS = 3;
/** Finished jobs kept for polling, the first finished dropped first. Running jobs are never dropped: they answer until they end. */
const FINISHED_JOBS_KEPT = 1000;

export class Prefetcher {
  private readonly manifests: ManifestCache;
  private readonly blobs: BlobCache;
  private readonly log: Logger;
  /** Every running job (in start order) and the last `finishedJobsKept` finished ones (in the order they finished). */
  private readonly jobs = new Map<string, JobStatus>();
  private readonly finishedJobsKept: number;
  /** Each job's end, for callers that wait on it (warm-up sets) rather than poll. */
  private readonly endings = new WeakMap<JobStatus, Promise<JobStatus>>();

  constructor(opts: { manifests: ManifestCache; blobs: BlobCache; log: Logger; finishedJobsKept?: number }) {
    this.manifests = opts.manifests;
    this.blobs = opts.blobs;
    this.log = opts.log;
    this.finishedJobsKept = opts.finishedJobsKept ?? FINISHED_JOBS_KEPT;
  }

  /** Starts a job and returns its status object at once (it keeps changing until the job ends). */
  start(req: PrefetchRequest): JobStatus {
    const ref = req.reference.kind === "tag" ? `:${req.reference.tag}` : `@${req.reference.digest}`;
    const job: JobStatus = {
      id: randomUUID(),
      reference: `${req.upstream.name}/${req.repository}${ref}`,
      state: "running",
      manifests: 0,
      blobs: { total: 0, done: 0 },
      bytes: { total: 0, done: 0 },
      errors: [],
      startedAt: new Date().toISOString(),
    };
    this.jobs.set(job.id, job);
    const ending = this.runJob(req, job)
      .then(
        () => {
          job.state = job.errors.length > 0 ? "failed" : "done";
        },
        (err: unknown) => {
          job.errors.push(errorMessage(err));
          job.state = "failed";
        },
      )
      .finally(() => {
        job.finishedAt = new Date().toISOString();
        // Re-inserted, so finished jobs are in the order they finished: the one that just ended is dropped last.
        this.jobs.delete(job.id);
        this.jobs.set(job.id, job);
        this.forgetOldFinishedJobs();
        this.log.info(
          { job: job.id, reference: job.reference, state: job.state, bytes: job.bytes.done, errors: job.errors.length },
          "prefetch finished",
        );
      })
      .then(() => job);
    this.endings.set(job, ending);
    return job;
  }

  /** Runs a job to its end: the same job as `start` (listed, pollable), awaited. Never rejects. */
  run(req: PrefetchRequest): Promise<JobStatus> {
    const job = this.start(req);
    return this.endings.get(job)!;
  }

  status(id: string): JobStatus | undefined {
    return this.jobs.get(id);
  }

  private forgetOldFinishedJobs(): void {
    let finished = 0;
    for (const job of this.jobs.values()) if (job.state !== "running") finished++;
    for (const [id, job] of this.jobs) {
      if (finished <= this.finishedJobsKept) return;
      if (job.state === "running") continue;
      this.jobs.delete(id);
      finished--;
    }
  }

  private async runJob(req: PrefetchRequest, job: JobStatus): Promise<void> {
    const { upstream, repository } = req;
    const walked = await walkImage(
      this.manifests,
      upstream,
      repository,
      req.reference,
      req.platforms,
      () => job.manifests++,
    );
    job.digest = walked.top.digest;
    const blobs = new Map([...walked.blobs].map(([digest, d]) => [digest, d.size ?? 0]));
    job.blobs.total = blobs.size;
    job.bytes.total = [...blobs.values()].reduce((a, b) => a + b, 0);
    const queue = [...blobs.entries()];
    const worker = async () => {
      for (let next = queue.shift(); next; next = queue.shift()) {
        const [digest, size] = next;
        try {
          await this.fetchBlob(upstream, repository, digest);
          job.blobs.done++;
          job.bytes.done += size;
        } catch (err) {
          job.errors.push(`${digest}: ${errorMessage(err)}`);
        }
      }
    };
    await Promise.all(Array.from({ length: PARALLEL_BLOBS }, worker));
  }

  /** Makes sure a blob is committed: already cached, or a download (ours or a client's) finished. */
  private async fetchBlob(upstream: UpstreamClient, repo: string, digest: string): Promise<void> {
    await this.blobs.ensureCached(upstream, repo, digest);
  }
}
