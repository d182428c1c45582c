/**
 * docs/metrics.md against src/observability/metrics.ts, so the page cannot rot: every metric the mirror defines
 * is in its table with its type and exactly its labels (and nothing else is), every metric a query on the page
 * names exists, and the recording rules are a Prometheus rule group.
 */
import { readFileSync } from "node:fs";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { parse as parseYaml } from "yaml";
import { describe, expect, it } from "vitest";
import { Metrics } from "../../src/observability/metrics.ts";

const DOC = readFileSync(new URL("../../docs/metrics.md", import.meta.url), "utf8");

interface Defined {
  type: string;
  labels: string[];
}

/** Every metric a Metrics instance defines, registered or not (the budget gauge is registered only with a budget). */
function definedMetrics(): Map<string, Defined> {
  const metrics = new Metrics(new Registry(), { processMetrics: false });
  const out = new Map<string, Defined>();
  for (const value of Object.values(metrics)) {
    if (!(value instanceof Counter || value instanceof Gauge || value instanceof Histogram)) continue;
    const m = value as unknown as { name: string; type: string; labelNames: string[] };
    out.set(m.name, { type: m.type, labels: [...m.labelNames].sort() });
  }
  return out;
}

/** The rows of the "Every metric" table. */
function documentedMetrics(): Map<string, Defined> {
  const out = new Map<string, Defined>();
  for (const m of DOC.matchAll(/^\| `(mirror_[a-z_]+)` \| (counter|gauge|histogram) \|([^|]*)\|/gm)) {
    const labels = m[3]!
      .split(",")
      .map((l) => l.trim().replace(/`/g, ""))
      .filter((l) => l !== "")
      .sort();
    out.set(m[1]!, { type: m[2]!, labels });
  }
  return out;
}

function codeBlocks(lang: string): string[] {
  return [...DOC.matchAll(new RegExp("^```" + lang + "\\n([\\s\\S]*?)^```", "gm"))].map((m) => m[1]!);
}

describe("docs/metrics.md", () => {
  const defined = definedMetrics();

  it("lists every metric metrics.ts defines, with its type and exactly its labels, and no other", () => {
    expect(defined.size).toBeGreaterThanOrEqual(20);
    expect(Object.fromEntries(documentedMetrics())).toEqual(Object.fromEntries(defined));
  });

  it("covers everything a running mirror registers (the budget gauge included, when there is a budget)", async () => {
    const metrics = new Metrics(new Registry(), { processMetrics: false });
    metrics.showOnScrape({
      metadataStore: () => ({ store: "embedded", degraded: false }),
      cache: { state: { bytes: 0, objects: 0, maxSize: 100, writable: true, evictionBlocked: undefined } },
      fills: { inFlight: 0, readers: 0 },
      upstreams: [],
    });
    await metrics.render();
    const registered = metrics.registry.getMetricsAsArray().map((m) => m.name);
    expect(registered).toContain("mirror_cache_budget_bytes");
    expect(registered.filter((name) => !defined.has(name))).toEqual([]);
  });

  it("names only defined metrics, with their own labels, in its queries and recording rules", () => {
    const queries = [...codeBlocks("promql"), ...codeBlocks("yaml")].join("\n");
    const named = [...queries.matchAll(/\b(mirror_[a-z_]+)(\{[^}]*\})?/g)];
    expect(named.length).toBeGreaterThanOrEqual(10);
    for (const [, name, matchers] of named) {
      const metric = defined.get(name!);
      expect(metric, name).toBeDefined();
      for (const [, label] of (matchers ?? "").matchAll(/([a-z_]+)\s*(?:=~|!=|=)/g))
        expect(metric!.labels, `${name} ${matchers}`).toContain(label);
    }
    // `sum by (x)` groups by a label the metric has.
    for (const [, label, name] of queries.matchAll(/by \(([a-z_]+)\) \(rate\((mirror_[a-z_]+)/g))
      expect(defined.get(name!)!.labels).toContain(label);
  });

  it("gives the recording rules as a Prometheus rule group", () => {
    const [rules] = codeBlocks("yaml");
    const parsed = parseYaml(rules!) as { groups: Array<{ name: string; rules: Array<{ record: string; expr: string }> }> };
    expect(parsed.groups).toHaveLength(1);
    const records = parsed.groups[0]!.rules.map((r) => r.record);
    expect(records).toEqual(expect.arrayContaining(["mirror:hit_ratio:rate5m", "mirror:saved_bytes:rate5m"]));
    for (const rule of parsed.groups[0]!.rules) {
      expect(rule.record).toMatch(/^[a-z_]+(:[a-z0-9_]+)+$/);
      expect(rule.expr).toMatch(/mirror_/);
    }
  });
});
