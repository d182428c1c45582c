/**
 * sha256 of large writes (downloads, imports), computed off the main thread: hashing on the thread that also
 * moves the bytes halves what one core can stream (measured here: sha256 alone ~1.67 GB/s, a plain HTTP GET
 * ~1.2 GB/s, both on one thread ~540 MB/s).
 *
 * The worker hashes the temp file itself, not copies of the chunks: the main thread only says how far the file
 * has been written ("extend"), in steps of at least a few MiB, and the worker reads that part back (from the page
 * cache, through its own descriptor) and hashes it. So the main thread spends nothing on hashing and nothing on
 * copying, and what is verified is exactly what readers are served: the bytes on disk.
 *
 * One worker per FileHasher (one per content store), started on first use and stopped after a while idle; a job
 * is one temp file, or one range of a file (`hashRange`: a job that starts at an offset). This module is also the worker's entry point (see the
 * bottom).
 */
import { createHash, type Hash } from "node:crypto";
import { closeSync, openSync, readSync } from "node:fs";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { toError, errorMessage } from "../caught-errors.ts";

type Request =
  | { op: "start"; id: number; path: string; from: number }
  | { op: "extend"; id: number; upTo: number }
  | { op: "finish"; id: number; size: number }
  | { op: "abort"; id: number };

type Reply = { id: number; digest: string } | { id: number; error: string };

const WORKER_ROLE = "registry-mirror-hash-worker";
/** The worker is told about progress at most once per this many bytes (messages cost main-thread time too). */
const EXTEND_STEP = 4 * 1024 * 1024;
const IDLE_STOP_MS = 10_000;

/** The hash of one temp file, fed by "the file is now written up to here". */
export interface FileHash {
  /** The file has been written up to `written` bytes (cheap: only every few MiB reaches the worker). */
  extend(written: number): void;
  /** The file is complete at `size` bytes: resolves with `sha256:<hex>` of its content. */
  finish(size: number): Promise<string>;
  /** Stops hashing; the file may be deleted. */
  abort(): void;
}

type Waiters = Map<number, { resolve: (digest: string) => void; reject: (err: Error) => void }>;

interface WorkerState {
  worker: Worker;
  waiting: Waiters;
  /** Why the worker is gone, once it is: jobs on it can no longer finish. */
  failure: Error | undefined;
}

export class FileHasher {
  /** The worker, with the answers its jobs are waiting for (a worker that dies fails only its own jobs). */
  private current: WorkerState | undefined;
  private nextId = 1;
  private jobs = 0;
  private idleTimer: NodeJS.Timeout | undefined;

  /**
   * Starts hashing the file at `path` (which must exist) from byte `from`. The worker hears of the job only with its first
   * progress (or its end): a download's first bytes, and its response's headers, do not wait for a worker to
   * start (a thread and a V8 isolate: milliseconds of this thread) when the file has nothing to hash yet.
   * Measured on the first cold pull after a start: creating the writer 2.4-8.7 ms -> 0.5-3.3 ms (five starts
   * each); `npm run bench -- --compiled --only S1 --reps 5`: time to first byte median 28.2 -> 21.4 and 22.7 ms.
   */
  open(path: string, from = 0): FileHash {
    const id = this.nextId++;
    this.jobs++;
    clearTimeout(this.idleTimer); // a worker idle now is kept for this job
    /** The worker the job runs on, from its first message on. */
    let state: WorkerState | undefined;
    const started = (): WorkerState => {
      if (state === undefined) {
        state = this.ensureWorker();
        state.worker.postMessage({ op: "start", id, path, from } satisfies Request);
      }
      return state;
    };
    let told = 0;
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      if (--this.jobs === 0) this.scheduleStop();
    };
    return {
      extend: (written) => {
        if (ended || written - told < EXTEND_STEP) return;
        told = written;
        started().worker.postMessage({ op: "extend", id, upTo: written } satisfies Request);
      },
      finish: (size) => {
        if (ended) return Promise.reject(new Error("hash already ended"));
        let current: WorkerState;
        try {
          current = started(); // a worker that cannot start (no threads left) fails this job, as an answer
        } catch (err) {
          end();
          return Promise.reject(toError(err));
        }
        const { worker, waiting, failure } = current;
        if (failure) {
          end();
          return Promise.reject(failure);
        }
        const result = new Promise<string>((resolve, reject) => waiting.set(id, { resolve, reject }));
        worker.postMessage({ op: "finish", id, size } satisfies Request);
        return result.finally(end);
      },
      abort: () => {
        if (ended) return;
        if (state !== undefined) {
          state.waiting.get(id)?.reject(new Error("hash aborted"));
          state.waiting.delete(id);
          state.worker.postMessage({ op: "abort", id } satisfies Request);
        }
        end();
      },
    };
  }

  /**
   * `sha256:<hex>` of bytes `[start, end)` of the file at `path`, read and hashed by the worker: the main thread
   * neither hashes nor copies them (the S3 store signs each part of an upload by its sha256).
   */
  hashRange(path: string, start: number, end: number): Promise<string> {
    return this.open(path, start).finish(end);
  }

  /** Whether a worker thread is running now (for tests and diagnostics). */
  get running(): boolean {
    return this.current !== undefined;
  }

  /** Stops the worker now (jobs still running fail). */
  async close(): Promise<void> {
    clearTimeout(this.idleTimer);
    const current = this.current;
    this.current = undefined;
    if (current) await current.worker.terminate();
  }

  private ensureWorker(): WorkerState {
    clearTimeout(this.idleTimer);
    if (this.current) return this.current;
    const worker = new Worker(new URL(import.meta.url), { workerData: { role: WORKER_ROLE } });
    const waiting: Waiters = new Map();
    const current: WorkerState = { worker, waiting, failure: undefined };
    worker.unref(); // hashing never keeps the process alive by itself
    worker.on("message", (reply: Reply) => {
      const waiter = waiting.get(reply.id);
      if (!waiter) return;
      waiting.delete(reply.id);
      if ("digest" in reply) waiter.resolve(reply.digest);
      else waiter.reject(new Error(reply.error));
    });
    const fail = (err: Error) => {
      current.failure ??= err;
      if (this.current === current) this.current = undefined;
      for (const waiter of waiting.values()) waiter.reject(err);
      waiting.clear();
    };
    worker.on("error", fail);
    worker.on("exit", (code) => fail(new Error(`hash worker exited with code ${code}`)));
    this.current = current;
    return current;
  }

  private scheduleStop(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.jobs === 0) void this.close();
    }, IDLE_STOP_MS);
    this.idleTimer.unref();
  }
}

// ---- the worker -------------------------------------------------------------------------------------------

interface Job {
  fd: number;
  hash: Hash;
  hashed: number;
}

function runWorker(port: NonNullable<typeof parentPort>): void {
  const jobs = new Map<number, Job>();
  const buffer = Buffer.allocUnsafe(1024 * 1024);
  /** Hashes the job's file up to `upTo`; false when the file ended first. */
  const advance = (job: Job, upTo: number): boolean => {
    while (job.hashed < upTo) {
      const n = readSync(job.fd, buffer, 0, Math.min(buffer.length, upTo - job.hashed), job.hashed);
      if (n === 0) return false;
      job.hash.update(buffer.subarray(0, n));
      job.hashed += n;
    }
    return true;
  };
  const drop = (id: number) => {
    const job = jobs.get(id);
    jobs.delete(id);
    if (job) closeSync(job.fd);
  };
  port.on("message", (req: Request) => {
    try {
      switch (req.op) {
        case "start":
          jobs.set(req.id, { fd: openSync(req.path, "r"), hash: createHash("sha256"), hashed: req.from });
          break;
        case "extend": {
          const job = jobs.get(req.id);
          if (job) advance(job, req.upTo);
          break;
        }
        case "finish": {
          const job = jobs.get(req.id);
          if (!job) throw new Error("unknown hash job");
          if (!advance(job, req.size)) throw new Error(`file is shorter than ${req.size} bytes`);
          const digest = `sha256:${job.hash.digest("hex")}`;
          drop(req.id);
          port.postMessage({ id: req.id, digest } satisfies Reply);
          break;
        }
        case "abort":
          drop(req.id);
          break;
      }
    } catch (err) {
      drop(req.id);
      port.postMessage({ id: req.id, error: errorMessage(err) } satisfies Reply);
    }
  });
}

if (!isMainThread && parentPort && (workerData as { role?: unknown } | undefined)?.role === WORKER_ROLE)
  runWorker(parentPort);
