/**
 * bcrypt comparisons off the event loop. bcrypt is slow on purpose (~80 ms at cost 10 here); on the main thread a
 * dozen wrong passwords a second were enough to hold every other request, probes included, for over a second.
 *
 * A few worker threads (`workers`), each running one comparison at a time; comparisons beyond those wait in a
 * bounded queue (`maxQueued`), and one that finds the queue full is refused at once with 429 TOOMANYREQUESTS
 * (Retry-After: 1) instead of waiting behind a flood. Workers start on first use and never keep the process
 * alive; a worker that dies fails only the comparison it was running and is replaced.
 *
 * This module is also the worker's entry point (see the bottom).
 */
import { availableParallelism } from "node:os";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import bcrypt from "bcryptjs";
import { RegistryError } from "../oci/errors.ts";
import { errorMessage } from "../caught-errors.ts";

type Request = { id: number; password: string; hash: string };
type Reply = { id: number; match: boolean } | { id: number; error: string };

interface Job extends Request {
  resolve: (match: boolean) => void;
  reject: (err: Error) => void;
}

const WORKER_ROLE = "registry-mirror-bcrypt-worker";

export class BcryptPool {
  private readonly size: number;
  private readonly maxQueued: number;
  private readonly idle: Worker[] = [];
  /** Running workers, each with the job it is on (undefined: idle). */
  private readonly running = new Map<Worker, Job | undefined>();
  private readonly queue: Job[] = [];
  private nextId = 1;
  private closed = false;

  /** Defaults: one worker per core but one, at most four (at least one); 64 comparisons waiting. */
  constructor(opts: { workers?: number; maxQueued?: number } = {}) {
    this.size = opts.workers ?? Math.max(1, Math.min(4, availableParallelism() - 1));
    this.maxQueued = opts.maxQueued ?? 64;
  }

  /** Whether `password` matches the bcrypt `hash`. Throws TOOMANYREQUESTS when the queue is full. */
  compare(password: string, hash: string): Promise<boolean> {
    if (this.closed) return Promise.reject(new Error("bcrypt pool is closed"));
    const worker = this.idle.pop() ?? (this.running.size < this.size ? this.spawn() : undefined);
    if (worker === undefined && this.queue.length >= this.maxQueued) {
      return Promise.reject(
        new RegistryError("TOOMANYREQUESTS", "too many logins being checked; retry shortly", {
          headers: { "Retry-After": "1" },
        }),
      );
    }
    return new Promise<boolean>((resolve, reject) => {
      const job: Job = { id: this.nextId++, password, hash, resolve, reject };
      if (worker) this.run(worker, job);
      else this.queue.push(job);
    });
  }

  /** Comparisons running and waiting now. */
  get load(): { running: number; queued: number } {
    let busy = 0;
    for (const job of this.running.values()) if (job !== undefined) busy++;
    return { running: busy, queued: this.queue.length };
  }

  /** Stops the workers; comparisons still running or queued fail. */
  async close(): Promise<void> {
    this.closed = true;
    const failure = new Error("bcrypt pool is closed");
    for (const job of this.queue.splice(0)) job.reject(failure);
    const workers = [...this.running.keys()];
    this.idle.length = 0;
    await Promise.all(workers.map((w) => w.terminate()));
  }

  private run(worker: Worker, job: Job): void {
    this.running.set(worker, job);
    worker.postMessage({ id: job.id, password: job.password, hash: job.hash } satisfies Request);
  }

  /** Gives `worker` the next queued job, or puts it back among the idle ones. */
  private next(worker: Worker): void {
    const job = this.queue.shift();
    if (job) this.run(worker, job);
    else {
      this.running.set(worker, undefined);
      this.idle.push(worker);
    }
  }

  private spawn(): Worker {
    const worker = new Worker(new URL(import.meta.url), { workerData: { role: WORKER_ROLE } });
    worker.unref();
    this.running.set(worker, undefined);
    worker.on("message", (reply: Reply) => {
      const job = this.running.get(worker);
      if (job === undefined || job.id !== reply.id) return;
      if ("match" in reply) job.resolve(reply.match);
      else job.reject(new Error(`bcrypt comparison failed: ${reply.error}`));
      this.next(worker);
    });
    let gone = false;
    const lost = (err: Error) => {
      if (gone) return;
      gone = true;
      const job = this.running.get(worker);
      this.running.delete(worker);
      const at = this.idle.indexOf(worker);
      if (at >= 0) this.idle.splice(at, 1);
      job?.reject(err);
      // Queued jobs were waiting for this worker's capacity: a replacement takes the next one.
      if (!this.closed && this.queue.length > 0) this.next(this.spawn());
    };
    worker.on("error", lost);
    worker.on("exit", (code) => lost(new Error(`bcrypt worker exited with code ${code}`)));
    return worker;
  }
}

// ---- the worker -------------------------------------------------------------------------------------------

function runWorker(port: NonNullable<typeof parentPort>): void {
  port.on("message", (req: Request) => {
    try {
      port.postMessage({ id: req.id, match: bcrypt.compareSync(req.password, req.hash) } satisfies Reply);
    } catch (err) {
      port.postMessage({ id: req.id, error: errorMessage(err) } satisfies Reply);
    }
  });
}

if (!isMainThread && parentPort && (workerData as { role?: unknown } | undefined)?.role === WORKER_ROLE)
  runWorker(parentPort);
