// A real redis-server for tests: on a free loopback port, no persistence (`--save '' --appendonly no`), its own
// temp dir, stopped by PID. It can be stopped and started again on the same port (an outage), killed (a crash)
// or paused with SIGSTOP (a hung server: the connection stays up, nothing answers). A host process, or with
// TEST_SERVICES=containers a container of the same Debian package (services.ts).
import { mkdtemp, rm } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Redis } from "ioredis";
import { freePort, waitFor } from "./processes.ts";
import { startService, type ServiceProcess } from "./services.ts";

export interface RedisServer {
  readonly name: string;
  /** redis://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  /** PID of the current process (it changes with every start()). */
  readonly pid: number;
  /** SIGTERM (then SIGKILL): a clean shutdown. Data is lost: nothing is persisted. */
  stop(): Promise<void>;
  /** SIGKILL and wait for the exit: a crash. */
  kill(): Promise<void>;
  /** SIGSTOP / SIGCONT: the server hangs with its connections open, then carries on. */
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Starts it again on the same port (empty); a no-op if it is running. */
  start(): Promise<void>;
  /** stop() and delete the temp dir. */
  dispose(): Promise<void>;
  /** Recent server output, for error messages. */
  output(): string;
}

const STARTUP_TIMEOUT_MS = 10_000;

export async function startRedis(opts: { port?: number } = {}): Promise<RedisServer> {
  const workDir = await mkdtemp(join(tmpdir(), "harness-redis-"));
  const port = opts.port ?? (await freePort());
  const name = `redis-server 127.0.0.1:${port}`;
  let proc: ServiceProcess | undefined;
  let previousOutput = "";

  const start = async (): Promise<void> => {
    if (proc?.running()) return;
    if (proc !== undefined) previousOutput = (previousOutput + proc.output()).slice(-64 * 1024);
    // A killed container is still there (exited): remove it. A no-op for an exited host process.
    await proc?.stop();
    const args = [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      workDir,
      "--daemonize",
      "no",
      "--logfile",
      "",
    ];
    const started = await startService({
      image: "redis",
      cmd: "redis-server",
      args,
      name,
      cwd: workDir,
      stopTimeoutMs: 5_000,
      paths: [workDir],
      readyLog: /Ready to accept connections/,
    });
    proc = started;
    try {
      await waitFor(() => answersPing(port), {
        timeoutMs: STARTUP_TIMEOUT_MS,
        what: `${name} to answer PING`,
        whileRunning: started,
      });
    } catch (err) {
      await started.stop();
      throw err;
    }
  };

  const running = (): ServiceProcess => {
    if (proc === undefined || !proc.running()) throw new Error(`${name} is not running`);
    return proc;
  };

  const server: RedisServer = {
    name,
    url: `redis://127.0.0.1:${port}`,
    port,
    get pid() {
      return running().pid;
    },
    async stop() {
      await proc?.stop();
    },
    async kill() {
      if (proc === undefined || !proc.running()) return;
      await proc.signal("SIGKILL");
      await proc.exited;
    },
    pause: () => running().signal("SIGSTOP"),
    resume: () => running().signal("SIGCONT"),
    start,
    async dispose() {
      // A stopped process cannot handle SIGTERM: wake it first.
      if (proc?.running()) await proc.signal("SIGCONT");
      await proc?.stop();
      await rm(workDir, { recursive: true, force: true });
    },
    output: () => previousOutput + (proc?.output() ?? ""),
  };

  try {
    await start();
  } catch (err) {
    await rm(workDir, { recursive: true, force: true });
    throw err;
  }
  return server;
}

/** One inline PING over a fresh connection; true on +PONG. */
async function answersPing(port: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port });
    let reply = "";
    socket.setTimeout(1_000, () => socket.destroy(new Error("no reply to PING within 1 s")));
    socket.once("error", reject);
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk: Buffer) => {
      reply += chunk.toString("latin1");
      if (!reply.includes("\r\n")) return;
      socket.destroy();
      resolve(reply.startsWith("+PONG"));
    });
    socket.once("close", () => resolve(false));
  });
}

/** Every key in the client's database (SCAN, so a big database does not block the server). For assertions. */
export async function allKeys(client: Redis): Promise<string[]> {
  const keys: string[] = [];
  let cursor = "0";
  do {
    const [next, batch] = await client.scan(cursor, "COUNT", 1_000);
    keys.push(...batch);
    cursor = next;
  } while (cursor !== "0");
  return keys;
}
