/**
 * The parts of prom-client the mirror uses, each required from its own file (its default metrics too: see
 * collectDefaultMetrics). The package's index also loads its Pushgateway (node:http and node:https, and through them node:tls) and its cluster aggregator, which the
 * mirror never uses: ~35 ms of CPU and ~6 MiB resident at every start (test/integration/lazy-loading.test.ts).
 * Same package, same classes: `import { Registry } from "prom-client"` elsewhere (the tests, the CLI) gets the
 * very same Registry, since the index requires these same files.
 */
import { createRequire } from "node:module";
import type * as PromClient from "prom-client";

const require = createRequire(import.meta.url);

export const Registry = require("prom-client/lib/registry") as typeof PromClient.Registry;
export type Registry<T extends PromClient.RegistryContentType = PromClient.PrometheusContentType> =
  PromClient.Registry<T>;
export const Counter = require("prom-client/lib/counter") as typeof PromClient.Counter;
export type Counter<T extends string = string> = PromClient.Counter<T>;
export const Gauge = require("prom-client/lib/gauge") as typeof PromClient.Gauge;
export type Gauge<T extends string = string> = PromClient.Gauge<T>;
export const Histogram = require("prom-client/lib/histogram") as typeof PromClient.Histogram;
export type Histogram<T extends string = string> = PromClient.Histogram<T>;

/** A default metric of prom-client's: registers its collectors in `config.register`. */
type DefaultMetric = (register: Registry | undefined, config: { eventLoopMonitoringPrecision: number }) => void;

/**
 * prom-client's default metrics (`collectDefaultMetrics`), the same ones in the same order, with the same names,
 * help and values (test/unit/observability/prom-client.test.ts compares them), except that the process CPU
 * counters are `processCpuTotal` below: prom-client's own file loads @opentelemetry/api at start-up (51 modules,
 * ~20 ms of CPU and ~3 MiB resident) for exemplars, which the mirror never turns on.
 */
export function collectDefaultMetrics(config: { register?: Registry } = {}): void {
  const options = { eventLoopMonitoringPrecision: 10 };
  processCpuTotal(config.register);
  for (const name of DEFAULT_METRICS) {
    (require(`prom-client/lib/metrics/${name}`) as DefaultMetric)(config.register, options);
  }
}

/** prom-client's default metrics after processCpuTotal, in its order (lib/defaultMetrics.js). */
const DEFAULT_METRICS = [
  "processStartTime",
  "osMemoryHeap",
  "processOpenFileDescriptors",
  "processMaxFileDescriptors",
  "eventLoopLag",
  "processResources",
  "processHandles",
  "processRequests",
  "heapSizeAndUsed",
  "heapSpacesSizeAndUsed",
  "version",
  "gc",
];

/** prom-client's lib/metrics/processCpuTotal.js without exemplars: CPU time since the last scrape, added up. */
function processCpuTotal(register: Registry | undefined): void {
  const registers = register ? [register] : undefined;
  let last = process.cpuUsage();
  const user = new Counter({
    name: "process_cpu_user_seconds_total",
    help: "Total user CPU time spent in seconds.",
    registers,
    // This one metric's collect sets all three.
    collect() {
      const now = process.cpuUsage();
      const userMicros = now.user - last.user;
      const systemMicros = now.system - last.system;
      last = now;
      user.inc(userMicros / 1e6);
      system.inc(systemMicros / 1e6);
      total.inc((userMicros + systemMicros) / 1e6);
    },
  });
  const system = new Counter({
    name: "process_cpu_system_seconds_total",
    help: "Total system CPU time spent in seconds.",
    registers,
  });
  const total = new Counter({
    name: "process_cpu_seconds_total",
    help: "Total user and system CPU time spent in seconds.",
    registers,
  });
}
