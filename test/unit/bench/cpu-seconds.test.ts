/**
 * BenchProcess.cpuSeconds (bench/targets.ts), which the bench divides by the requests of a load run for S4 and S5's
 * "server CPU per request": it must count the process's own threads and, for nginx, the workers it forked.
 * Real processes: a Node parent that spins, then forks a child that spins while the parent sleeps.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import { BenchProcess } from "../../../bench/targets.ts";

/** Busy-waits until the process has used `ms` milliseconds of CPU time (not wall time: a busy machine shares cores). */
const SPIN = (ms: number) => `for (;;) { const u = process.cpuUsage(); if (u.user + u.system >= ${ms * 1000}) break; }`;

describe("BenchProcess.cpuSeconds", () => {
  let dir: string | undefined;
  let proc: BenchProcess | undefined;

  afterEach(async () => {
    await proc?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it("counts the process's CPU time and that of the children it forked while they run", async () => {
    dir = await mkdtemp(join(tmpdir(), "cpu-seconds-"));
    // The parent spins for 400 ms of CPU, then forks a child that spins 400 ms more and stays alive; the parent
    // then only waits, so the second 400 ms can only be counted through the child. Stopping the parent (SIGTERM,
    // afterEach) stops the child too.
    const child = `${SPIN(400)} console.log("child spun"); setTimeout(() => {}, 30_000);`;
    const parent = `${SPIN(400)} console.log("parent spun");
      const c = require("node:child_process").spawn(process.execPath, ["-e", ${JSON.stringify(child)}], { stdio: "inherit" });
      process.on("SIGTERM", () => { c.kill(); process.exit(0); });
      setTimeout(() => {}, 30_000);`;
    proc = BenchProcess.start("spinner", process.execPath, ["-e", parent], {
      env: {},
      cwd: dir,
      logPath: join(dir, "log"),
    });
    const started = performance.now();
    while (!(await proc.log()).includes("child spun")) {
      if (performance.now() - started > 20_000) throw new Error(`the child never spun: ${await proc.log()}`);
      await sleep(20);
    }
    // Both counted: 0.8 s of CPU time at least (the kernel counts in 10 ms ticks, each process rounded down).
    expect(await proc.cpuSeconds()).toBeGreaterThanOrEqual(0.78);
    expect(await proc.cpuSeconds()).toBeLessThan(5);
  });
});
