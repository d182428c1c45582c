/**
 * docs/scaling.md against the code it describes: every `yaml mirror` block is a configuration the mirror's own
 * loader accepts (and says what its section claims: Redis, cluster, S3), every `yaml helm` block is accepted by
 * the chart's schema through Helm's engine and renders the S3 fleet (a Deployment, no claim), the lifecycle rule
 * parses and covers the prefix the S3 snippet uses, and every relative link names a file that exists.
 */
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { parse as parseYaml } from "yaml";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.ts";
import { renderChart } from "../helm/helm.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
const PAGE = join(ROOT, "docs", "scaling.md");
const DOC = readFileSync(PAGE, "utf8");

const blocks = (tag: string): string[] => [...DOC.matchAll(new RegExp(`^\`\`\`${tag}\\n([\\s\\S]*?)^\`\`\``, "gm"))].map((m) => m[1]!);

describe("docs/scaling.md", () => {
  it("shows one mirror configuration per shape, each accepted by the mirror's loader", () => {
    const configs = blocks("yaml mirror").map((text) => parseConfig(parseYaml(text)));
    // One node, replicas on their own disks, the fleet, the fleet on S3: in that order.
    expect(configs.map((c) => [c.redis !== undefined, c.cluster !== undefined, c.storage.s3 !== undefined])).toEqual([
      [false, false, false],
      [true, false, false],
      [true, true, false],
      [true, true, true],
    ]);
  });

  it("gives a lifecycle rule that aborts the abandoned uploads under the S3 snippet's prefix", () => {
    const s3 = parseConfig(parseYaml(blocks("yaml mirror")[3]!)).storage.s3!;
    const [rule] = blocks("json").map((text) => JSON.parse(text) as { Rules: Array<Record<string, unknown>> });
    expect(rule?.Rules[0]).toMatchObject({
      Status: "Enabled",
      Filter: { Prefix: s3.prefix },
      AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 },
    });
  });

  it("shows chart values that Helm accepts and that render the fleet on S3: a Deployment without claims", () => {
    const values = blocks("yaml helm");
    expect(values).toHaveLength(1);
    const chart = renderChart(join(ROOT, "helm"), { values: [parseYaml(values[0]!) as Record<string, unknown>] });
    const kinds = chart.manifests.map((m) => m.object.kind);
    expect(kinds).toContain("Deployment");
    expect(kinds).not.toContain("StatefulSet");
    const deployment = chart.manifests.find((m) => m.object.kind === "Deployment")!.object as { spec: { replicas: number } };
    expect(deployment.spec.replicas).toBe(3);
  });

  it("links only to files that exist", () => {
    const links = [...DOC.matchAll(/\]\(([^)#]+)(?:#[^)]*)?\)/g)].map((m) => m[1]!).filter((l) => !/^https?:/.test(l));
    expect(links.length).toBeGreaterThan(0);
    for (const link of links) expect(existsSync(join(dirname(PAGE), link)), link).toBe(true);
  });
});
