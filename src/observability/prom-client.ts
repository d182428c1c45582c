/**
 * The parts of prom-client the mirror uses, each required from its own file. The package's index also loads
 * its Pushgateway (node:http and node:https, and through them node:tls) and its cluster aggregator, which the
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
export const collectDefaultMetrics =
  require("prom-client/lib/defaultMetrics") as typeof PromClient.collectDefaultMetrics;
