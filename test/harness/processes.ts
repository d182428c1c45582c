// Child processes for integration tests: start them, keep their recent output for error messages,
// wait for them to become ready, and stop them by PID (TERM, bounded wait, KILL).
import { spawn, type ChildProcess } from "node:child_process";
import { randomInt } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";
import { constants } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";

// Teardown lives in its own file; re-exported here because "track everything started" belongs with starting.
export { Teardown } from "./teardown.ts";

/** Keep this much of a process's combined output: enough for a useful failure message, bounded in memory. */
const OUTPUT_TAIL_BYTES = 64 * 1024;

/** How long stop() lets a process handle SIGTERM before it sends SIGKILL, unless the caller says otherwise. */
const DEFAULT_STOP_TIMEOUT_MS = 10_000;

/** After a process exits, how long to wait for the rest of its output still in the pipes. */
const PIPE_DRAIN_MS = 1_000;

/** After SIGKILL the kernel ends the process at once; this only bounds the wait for Node to observe it. */
const KILL_WAIT_MS = 5_000;

/** Asks the kernel for a free TCP port on 127.0.0.1 (bind to port 0, read it, close). */
export function freePort(): Promise<number> {
  return bindAndRelease(0);
}

/** Binds 127.0.0.1:`port` (0: any the kernel picks), closes it again, and resolves with the port bound. */
function bindAndRelease(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen({ host: "127.0.0.1", port, exclusive: true }, () => {
      const address = server.address();
      if (address === null || typeof address === "string") {
        server.close();
        reject(new Error("could not read the bound address"));
        return;
      }
      server.close((err) => (err ? reject(err) : resolve(address.port)));
    });
  });
}

/**
 * A free TCP port on 127.0.0.1 below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), for a server
 * that binds it only seconds after the port was chosen (Ceph's monitor and gateway bind theirs after the cluster's
 * set-up, ~5-15 s). A port from `freePort` lies in that range, where the kernel may meanwhile give it to any
 * outgoing connection or to another test's `freePort`, and the server then fails with "Address already in use".
 * Below the range only an explicit bind takes a port: a random one there that binds now stays free.
 */
export async function freePortBelowEphemeral(): Promise<number> {
  const range = await readFile("/proc/sys/net/ipv4/ip_local_port_range", "utf8").catch(() => "32768 60999");
  const low = Number(range.trim().split(/\s+/)[0]);
  const floor = 10_000;
  if (!Number.isInteger(low) || low - floor < 1_000) return freePort();
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = floor + randomInt(low - floor);
    if (
      await bindAndRelease(port).then(
        () => true,
        () => false,
      )
    )
      return port;
  }
  throw new Error(`freePortBelowEphemeral: no free port in ${floor}-${low - 1} after 100 tries`);
}

export interface StartProcessOptions {
  /** The child's COMPLETE environment (not merged with process.env); when absent the child inherits process.env. */
  env?: Record<string, string>;
  cwd?: string;
  /** Used in error messages and thrown errors, e.g. "docker-registry". */
  name: string;
  /** Called with every complete line the child prints, stdout and stderr alike (without the newline). */
  onLine?: (line: string) => void;
  /** Grace period between SIGTERM and SIGKILL in stop(); default 10 s. */
  stopTimeoutMs?: number;
}

export interface ManagedProcess {
  readonly name: string;
  readonly pid: number;
  /** The last ~64 KiB of combined stdout and stderr, for error messages. */
  output(): string;
  /** Resolves with the exit code (null when ended by a signal or when spawning failed); never rejects. */
  readonly exited: Promise<number | null>;
  /** True until the process has exited. */
  running(): boolean;
  /** SIGTERM, wait up to the stop timeout, then SIGKILL. Idempotent; an already-exited process counts as stopped. */
  stop(): Promise<void>;
}

/**
 * Starts `cmd args` with stdin closed and stdout+stderr captured.
 * Throws synchronously if the process could not be spawned at all (e.g. the command does not exist).
 */
export function startProcess(cmd: string, args: string[], opts: StartProcessOptions): ManagedProcess {
  const child: ChildProcess = spawn(cmd, args, {
    cwd: opts.cwd,
    env: opts.env ?? process.env,
    stdio: ["ignore", "pipe", "pipe"],
  });

  // A failed spawn has no PID; the 'error' event follows asynchronously and must not go unhandled.
  if (child.pid === undefined) {
    child.once("error", () => undefined);
    throw new Error(`${opts.name}: could not start ${cmd} (is it installed and on PATH?)`);
  }
  const pid = child.pid;

  const tail = new OutputTail(OUTPUT_TAIL_BYTES);
  // Separate line buffers so a partial stdout line is never glued to a stderr line.
  for (const stream of [child.stdout, child.stderr]) {
    if (stream === null) continue;
    const lines = new LineSplitter(opts.onLine);
    stream.on("data", (chunk: Buffer) => {
      tail.append(chunk);
      lines.push(chunk);
    });
    stream.on("end", () => lines.flush());
  }

  let hasExited = false;
  let pipesClosed = false;
  child.once("close", () => {
    pipesClosed = true;
  });
  // Resolve on 'exit', after giving the pipes a moment to drain so output() is complete. Not plainly on
  // 'close': grandchildren that inherited our pipes (dockerd's containerd) can hold them open long after
  // the process itself is gone. Node reaps the child, so no zombie is left behind either way.
  const exited = new Promise<number | null>((resolve) => {
    child.once("exit", (code) => {
      hasExited = true;
      const drained = pipesClosed ? Promise.resolve() : new Promise<void>((r) => child.once("close", () => r()));
      void exitsWithin(drained, PIPE_DRAIN_MS).then(() => resolve(code));
    });
    child.once("error", (err) => {
      tail.append(Buffer.from(`\n[harness] ${opts.name}: ${err.message}\n`));
      // An 'error' after a successful spawn (e.g. a failed kill) does not mean the process ended.
      if (child.exitCode !== null || child.signalCode !== null) {
        hasExited = true;
        resolve(child.exitCode);
      }
    });
  });

  const stopTimeoutMs = opts.stopTimeoutMs ?? DEFAULT_STOP_TIMEOUT_MS;
  let stopping: Promise<void> | undefined;

  const stop = (): Promise<void> => {
    // Idempotent: every caller waits on the same shutdown.
    stopping ??= (async () => {
      if (hasExited) return;
      // child.kill rather than process.kill(pid): Node knows whether it has reaped the child, so a
      // recycled PID can never be hit.
      child.kill("SIGTERM");
      if (await exitsWithin(exited, stopTimeoutMs)) return;
      tail.append(
        Buffer.from(`\n[harness] ${opts.name}: no exit ${stopTimeoutMs} ms after SIGTERM; sending SIGKILL\n`),
      );
      child.kill("SIGKILL");
      if (!(await exitsWithin(exited, KILL_WAIT_MS))) {
        throw new Error(`${opts.name} (pid ${pid}) did not exit after SIGKILL`);
      }
    })();
    return stopping;
  };

  return {
    name: opts.name,
    pid,
    output: () => tail.toString(),
    exited,
    running: () => !hasExited,
    stop,
  };
}

export interface WaitForOptions {
  timeoutMs: number;
  /** What is being waited for, in words: it is the subject of the timeout error. */
  what: string;
  /** Pause between checks; default 100 ms. */
  intervalMs?: number;
  /** Give up at once (with this process's output in the error) if it exits while we wait. */
  whileRunning?: ManagedProcess;
}

/**
 * Polls `check` until it returns true. A check that throws counts as "not yet", and its last error is
 * quoted in the timeout error, because that is usually the real reason (e.g. ECONNREFUSED).
 */
export async function waitFor(check: () => Promise<boolean>, opts: WaitForOptions): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  const intervalMs = opts.intervalMs ?? 100;
  let lastError: unknown;
  for (let attempt = 1; ; attempt++) {
    const proc = opts.whileRunning;
    if (proc !== undefined && !proc.running()) {
      throw new Error(
        `gave up waiting for ${opts.what}: ${proc.name} (pid ${proc.pid}) exited with ${String(await proc.exited)}\n` +
          `--- ${proc.name} output ---\n${proc.output()}`,
      );
    }
    try {
      if (await check()) return;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() + intervalMs > deadline) {
      const reason = lastError === undefined ? "" : `; last error: ${describeError(lastError)}`;
      const output = proc === undefined ? "" : `\n--- ${proc.name} output ---\n${proc.output()}`;
      throw new Error(
        `timed out after ${opts.timeoutMs} ms (${attempt} checks) waiting for ${opts.what}${reason}${output}`,
      );
    }
    await sleep(intervalMs);
  }
}

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs a short-lived command to completion and collects its output. A command still running after
 * `timeoutMs` is killed (SIGKILL) and the promise rejects with what it had printed so far.
 */
export async function runCommand(
  cmd: string,
  args: string[],
  opts: { env?: Record<string, string>; cwd?: string; timeoutMs: number },
): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => out.push(c));
    child.stderr.on("data", (c: Buffer) => err.push(c));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, opts.timeoutMs);
    child.once("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`${cmd} ${args.join(" ")}: ${e.message}`, { cause: e }));
    });
    // 'close' rather than 'exit': the output is complete only once both pipes are closed.
    child.once("close", (code, sig) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString("utf8");
      const stderr = Buffer.concat(err).toString("utf8");
      if (timedOut) {
        reject(
          new Error(
            `${cmd} ${args.join(" ")} timed out after ${opts.timeoutMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`,
          ),
        );
        return;
      }
      // A signal death has no exit code; report it the way a shell would (128 + signal number).
      resolve({ code: code ?? 128 + signalNumber(sig), stdout, stderr });
    });
  });
}

/**
 * True while `pid` is a live process. A zombie (exited, not yet reaped by its parent) counts as gone:
 * it holds no resources and cannot be killed any further.
 */
export async function isAlive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    // Format: "pid (comm) state ...": comm may contain spaces and parentheses, so read after the last ')'.
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/**
 * Stops a process this harness started indirectly (so it has no ChildProcess, e.g. the containerd that
 * dockerd spawned): SIGTERM, wait up to `timeoutMs`, SIGKILL, wait again. Only ever pass a PID you know is yours.
 */
export async function stopPid(pid: number, name: string, timeoutMs = DEFAULT_STOP_TIMEOUT_MS): Promise<void> {
  if (!(await isAlive(pid))) return;
  signal(pid, "SIGTERM");
  if (await waitUntilGone(pid, timeoutMs)) return;
  signal(pid, "SIGKILL");
  if (!(await waitUntilGone(pid, KILL_WAIT_MS))) throw new Error(`${name} (pid ${pid}) did not exit after SIGKILL`);
}

async function waitUntilGone(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!(await isAlive(pid))) return true;
    await sleep(50);
  }
  return !(await isAlive(pid));
}

function signalNumber(sig: NodeJS.Signals | null): number {
  return sig === null ? 0 : (constants.signals[sig] ?? 0);
}

/** Error text including the cause chain, which is where fetch() puts ECONNREFUSED. */
export function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = err.cause === undefined ? "" : ` (cause: ${describeError(err.cause)})`;
  return `${err.message}${cause}`;
}

/** Sends a signal by PID; a process that is already gone is fine (that is what we wanted). */
function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ESRCH") throw err;
  }
}

/** True if `exited` settles within `ms`; the timer is cleared either way so it cannot hold the event loop. */
async function exitsWithin(exited: Promise<unknown>, ms: number): Promise<boolean> {
  const abort = new AbortController();
  const timedOut = sleep(ms, false, { signal: abort.signal }).catch(() => false);
  try {
    return await Promise.race([exited.then(() => true), timedOut]);
  } finally {
    abort.abort();
  }
}

/** Ring of the most recent output chunks, trimmed to a byte budget. */
class OutputTail {
  private chunks: Buffer[] = [];
  private bytes = 0;
  private readonly limit: number;

  constructor(limit: number) {
    this.limit = limit;
  }

  append(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    // Drop whole chunks only while the rest still fills the budget; toString() trims the excess.
    for (
      let first = this.chunks[0];
      first !== undefined && this.bytes - first.length >= this.limit;
      first = this.chunks[0]
    ) {
      this.chunks.shift();
      this.bytes -= first.length;
    }
  }

  toString(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.limit)).toString("utf8");
  }
}

/** Splits a byte stream into lines for onLine; decodes per line so multi-byte characters are never split. */
class LineSplitter {
  private pending: Buffer = Buffer.alloc(0);
  private readonly onLine: ((line: string) => void) | undefined;

  constructor(onLine: ((line: string) => void) | undefined) {
    this.onLine = onLine;
  }

  push(chunk: Buffer): void {
    if (this.onLine === undefined) return;
    let data = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    for (let nl = data.indexOf(0x0a); nl !== -1; nl = data.indexOf(0x0a)) {
      this.emit(data.subarray(0, nl));
      data = data.subarray(nl + 1);
    }
    this.pending = Buffer.from(data);
  }

  flush(): void {
    if (this.pending.length > 0) this.emit(this.pending);
    this.pending = Buffer.alloc(0);
  }

  private emit(line: Buffer): void {
    const text = line.toString("utf8").replace(/\r$/, "");
    try {
      this.onLine?.(text);
    } catch {
      // A throwing line handler must not break output capture for the rest of the process's life.
    }
  }
}
