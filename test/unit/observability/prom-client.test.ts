/**
 * The mirror's collectDefaultMetrics (src/observability/prom-client.ts) against prom-client's own: the same
 * metrics, in the same order, with the same help, type and labels, and process CPU counters that count.
 */
import { collectDefaultMetrics as promClientDefaults, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { collectDefaultMetrics } from "../../../src/observability/prom-client.ts";

/** What a scrape shows of each metric, values left out (they move between two scrapes). */
async function shape(registry: Registry) {
  const metrics = await registry.getMetricsAsJSON();
  return metrics.map((m) => ({
    name: m.name,
    help: m.help,
    type: m.type,
    labels: [...new Set(m.values.flatMap((v) => Object.keys(v.labels)))].sort(),
  }));
}

describe("collectDefaultMetrics", () => {
  it("registers prom-client's default metrics, in its order, with the same help, types and labels", async () => {
    const ours = new Registry();
    collectDefaultMetrics({ register: ours });
    const theirs = new Registry();
    promClientDefaults({ register: theirs });
    const expected = await shape(theirs);
    // The comparison sees the CPU counters and the rest.
    expect(expected.map((m) => m.name)).toEqual(
      expect.arrayContaining(["process_cpu_seconds_total", "process_start_time_seconds", "nodejs_gc_duration_seconds"]),
    );
    expect(await shape(ours)).toEqual(expected);
  });

  it("adds the CPU time spent between two scrapes to the process CPU counters", async () => {
    const registry = new Registry();
    collectDefaultMetrics({ register: registry });
    const cpu = async () => {
      const json = await registry.getMetricsAsJSON();
      const value = (name: string) => json.find((m) => m.name === name)!.values[0]!.value;
      return {
        user: value("process_cpu_user_seconds_total"),
        system: value("process_cpu_system_seconds_total"),
        total: value("process_cpu_seconds_total"),
      };
    };
    const before = await cpu();
    const started = process.cpuUsage();
    // At least 50 ms of CPU, measured by the same clock the counters read.
    while (process.cpuUsage(started).user < 50_000) Math.sqrt(Math.random());
    const after = await cpu();
    expect(after.user - before.user).toBeGreaterThanOrEqual(0.05);
    expect(after.system).toBeGreaterThanOrEqual(before.system);
    expect(after.total).toBeCloseTo(after.user + after.system, 6);
  });
});
