// Self-tests of the process helpers every other harness module is built on.
import { createServer } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { freePort, isAlive, runCommand, startProcess, stopPid, Teardown, waitFor } from "../harness/processes.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

describe("freePort", () => {
  it("returns a port that can be bound on 127.0.0.1 right away", async () => {
    const port = await freePort();
    expect(port).toBeGreaterThan(1024);
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ host: "127.0.0.1", port }, () => resolve());
    });
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
});

describe("startProcess", () => {
  it("captures output, reports lines and the exit code", async () => {
    const lines: string[] = [];
    const proc = startProcess("sh", ["-c", "echo one; echo two >&2; printf 'three'; exit 3"], {
      name: "sh-exit-3",
      onLine: (l) => lines.push(l),
    });
    expect(proc.pid).toBeGreaterThan(0);
    expect(await proc.exited).toBe(3);
    expect(proc.running()).toBe(false);
    expect(lines.sort()).toEqual(["one", "three", "two"]);
    expect(proc.output()).toContain("one");
    expect(proc.output()).toContain("two");
    await proc.stop(); // already exited: a no-op, not an error
  });

  it("passes exactly the given environment", async () => {
    const lines: string[] = [];
    const proc = startProcess("/usr/bin/env", [], {
      name: "env",
      env: { ONLY_THIS: "1" },
      onLine: (l) => lines.push(l),
    });
    await proc.exited;
    expect(lines).toEqual(["ONLY_THIS=1"]);
  });

  it("keeps only the last ~64 KiB of output", async () => {
    // 200 KiB of output ending in a recognisable line.
    const proc = startProcess("sh", ["-c", "head -c 204800 /dev/zero | tr '\\0' x; echo; echo the-end"], {
      name: "chatty",
    });
    await proc.exited;
    const out = proc.output();
    expect(out.length).toBeLessThanOrEqual(64 * 1024);
    expect(out.length).toBeGreaterThan(60 * 1024);
    expect(out.trimEnd().endsWith("the-end")).toBe(true);
  });

  it("stop() ends a running process with SIGTERM, and is idempotent", async () => {
    const proc = teardown.track(startProcess("sleep", ["30"], { name: "sleep-30" }));
    expect(await isAlive(proc.pid)).toBe(true);
    const t0 = Date.now();
    await Promise.all([proc.stop(), proc.stop()]);
    await proc.stop();
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(proc.running()).toBe(false);
    expect(await isAlive(proc.pid)).toBe(false);
  });

  it("stop() falls back to SIGKILL when SIGTERM is ignored", async () => {
    const proc = teardown.track(
      startProcess("sh", ["-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"], {
        name: "ignores-term",
        stopTimeoutMs: 500,
      }),
    );
    await waitFor(async () => proc.output().includes("ready"), { timeoutMs: 5_000, what: "the trap to be installed" });
    const t0 = Date.now();
    await proc.stop();
    const took = Date.now() - t0;
    expect(took).toBeGreaterThanOrEqual(450);
    expect(took).toBeLessThan(5_000);
    expect(await proc.exited).toBeNull(); // killed by a signal
    expect(proc.output()).toContain("SIGKILL");
  });

  it("throws at once for a command that does not exist", () => {
    expect(() => startProcess("/nonexistent/harness-binary", [], { name: "missing" })).toThrow(
      /missing: could not start/,
    );
  });
});

describe("stopPid and runCommand", () => {
  it("stops a process known only by PID", async () => {
    // A shell that prints the PID of a background sleep and exits: the sleep is not our ChildProcess.
    const result = await runCommand("sh", ["-c", "sleep 30 >/dev/null 2>&1 & echo $!"], { timeoutMs: 5_000 });
    const pid = Number(result.stdout.trim());
    expect(await isAlive(pid)).toBe(true);
    await stopPid(pid, "orphan sleep", 2_000);
    expect(await isAlive(pid)).toBe(false);
  });

  it("returns the exit code and output, and rejects on timeout", async () => {
    expect(await runCommand("sh", ["-c", "echo out; echo err >&2; exit 7"], { timeoutMs: 5_000 })).toEqual({
      code: 7,
      stdout: "out\n",
      stderr: "err\n",
    });
    await expect(runCommand("sleep", ["10"], { timeoutMs: 200 })).rejects.toThrow(/timed out after 200 ms/);
  });
});

describe("waitFor", () => {
  it("resolves once the check passes", async () => {
    let calls = 0;
    await waitFor(async () => ++calls >= 3, { timeoutMs: 2_000, what: "three calls", intervalMs: 10 });
    expect(calls).toBe(3);
  });

  it("times out with `what` and the last error in the message", async () => {
    await expect(
      waitFor(
        async () => {
          throw new Error("ECONNREFUSED-ish");
        },
        { timeoutMs: 200, what: "the unicorn service", intervalMs: 20 },
      ),
    ).rejects.toThrow(/waiting for the unicorn service; last error: ECONNREFUSED-ish/);
  });

  it("gives up at once when the watched process exits", async () => {
    const proc = startProcess("sh", ["-c", "echo dying-words; exit 1"], { name: "short-lived" });
    const t0 = Date.now();
    await expect(
      waitFor(async () => false, { timeoutMs: 10_000, what: "something that never comes", whileRunning: proc }),
    ).rejects.toThrow(/short-lived \(pid \d+\) exited with 1[\s\S]*dying-words/);
    expect(Date.now() - t0).toBeLessThan(5_000);
  });
});

describe("Teardown", () => {
  it("runs steps last-first, runs all of them despite failures, and reports every failure", async () => {
    const order: string[] = [];
    const t = new Teardown();
    t.add("first", () => {
      order.push("first");
    });
    t.add("broken", () => {
      throw new Error("boom");
    });
    t.track({ name: "tracked", stop: async () => void order.push("tracked.stop") });
    t.track(
      { stop: async () => void order.push("never"), dispose: async () => void order.push("disposed") },
      "disposable",
    );
    await expect(t.run()).rejects.toThrow(/teardown step "broken" failed: boom/);
    expect(order).toEqual(["disposed", "tracked.stop", "first"]);
    await t.run(); // nothing left to run
    expect(order).toHaveLength(3);
  });
});
