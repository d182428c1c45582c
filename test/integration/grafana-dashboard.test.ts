/**
 * The dashboard may only query metrics the mirror exports: names are read from a live /metrics after a real
 * pull, so the dashboard and the code cannot drift apart.
 */
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, fetchRaw } from "./client.ts";
import { parsePrometheusText } from "./prometheus-text.ts";

interface Panel {
  type: string;
  title: string;
  datasource?: { uid?: string };
  targets?: Array<{ expr: string }>;
}

let upstream: Registry;
let mirror: TestMirror;
beforeAll(async () => {
  upstream = await startRegistry();
  // With a budget: mirror_cache_budget_bytes, which the dashboard shows, is exported only for a bounded cache.
  mirror = await startTestMirror({
    upstreams: { "docker.io": { url: upstream.url, default: true } },
    extra: { storage: { maxSize: "1GiB" } },
  });
});
afterAll(async () => {
  await mirror?.stop();
  await upstream?.dispose();
});

describe("grafana dashboard", () => {
  it("is importable with the datasource as a variable, and queries only exported metrics", async () => {
    const dashboard = JSON.parse(
      await readFile(new URL("../../grafana/registry-mirror.json", import.meta.url), "utf8"),
    ) as {
      templating: { list: Array<{ name: string; type: string }> };
      panels: Panel[];
    };
    expect(dashboard.templating.list).toContainEqual(
      expect.objectContaining({ name: "datasource", type: "datasource" }),
    );
    const queried = dashboard.panels.filter((p) => p.type !== "row");
    expect(queried.length).toBeGreaterThan(10);
    for (const p of queried) expect(p.datasource?.uid, p.title).toBe("${datasource}");

    // A real pull, so that labelled series exist.
    const layer = randomLayer(50_000);
    const image = buildImage({ format: "oci", layers: [layer] });
    await pushImage(upstream.url, "team/dash", "v1", image);
    await fetchRaw(`${mirror.url}/v2/team/dash/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
    await fetchRaw(`${mirror.url}/v2/team/dash/blobs/${layer.digest}`);
    await new Promise((r) => setTimeout(r, 50));
    const text = (await fetchRaw(`${mirror.url}/metrics`)).body.toString();
    // A family is exported once declared (`# TYPE`), even before it has a series (e.g. rate limits, which only
    // upstreams that send the headers produce); histograms export _bucket, _sum and _count.
    const exported = new Set(parsePrometheusText(text).map((s) => s.name));
    for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
      exported.add(name!);
      if (type === "histogram") for (const suffix of ["_bucket", "_sum", "_count"]) exported.add(`${name!}${suffix}`);
    }

    const used = new Set<string>();
    for (const p of queried) {
      for (const t of p.targets ?? []) {
        for (const name of t.expr.match(/\bmirror_[a-z0-9_]+/g) ?? []) used.add(name);
      }
    }
    expect(used.size).toBeGreaterThan(10);
    const missing = [...used].filter((name) => !exported.has(name));
    expect(missing, `queried by the dashboard but not exported: ${missing.join(", ")}`).toEqual([]);
  });
});
