// helm.ts and tools/helm-render: the renderer is built once per source version and behaves as Helm's engine
// where our former subset renderer did not (.Chart fields, YAML 1.1 dates, `required`).
import { createHash } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HelmError, helmRenderBinary, renderChart } from "./helm.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
let chartDir: string;

beforeAll(async () => {
  chartDir = await mkdtemp(join(tmpdir(), "helm-engine-test-"));
  await mkdir(join(chartDir, "templates"));
  await writeFile(join(chartDir, "Chart.yaml"), "apiVersion: v2\nname: demo\nversion: 1.2.3\nappVersion: '4.5'\n");
});
afterAll(() => rm(chartDir, { recursive: true, force: true }));

/** Renders `template` as the chart's only template (templates/t.yaml) with the given values. */
async function render(template: string, values: Record<string, unknown> = {}) {
  await writeFile(join(chartDir, "values.yaml"), "date: 2024-01-01\ncount: 5000\n");
  await writeFile(join(chartDir, "templates", "t.yaml"), template);
  return renderChart(chartDir, { values: [values], release: { name: "r", namespace: "ns" } });
}

describe("helm-render", () => {
  it("is built into .tmp/helm-render/<hash of its sources>/, so a changed source builds anew and else it is reused", () => {
    const hash = createHash("sha256");
    for (const file of ["build.sh", "main.go"]) hash.update(`${file}\0`).update(readFileSync(join(ROOT, "tools", "helm-render", file)));
    const path = helmRenderBinary();
    expect(path).toBe(join(ROOT, ".tmp", "helm-render", hash.digest("hex").slice(0, 16), "helm-render"));
    expect(statSync(path).mode & 0o111).not.toBe(0);
  });

  it("gives .Chart's fields their Helm names and refuses an unknown one", async () => {
    const chart = await render("kind: ConfigMap\ndata:\n  v: {{ .Chart.APIVersion }}-{{ .Chart.Name }}-{{ .Chart.AppVersion }}-{{ .Release.Namespace }}\n");
    expect(chart.manifests[0]?.object).toEqual({ kind: "ConfigMap", data: { v: "v2-demo-4.5-ns" } });
    await expect(render("kind: ConfigMap\ndata:\n  v: {{ .Chart.Foo }}\n")).rejects.toThrow(/can't evaluate field Foo/);
  });

  it("reads values as Helm does: an unquoted date is a string, a number a float64", async () => {
    const chart = await render('kind: ConfigMap\ndata:\n  d: {{ .Values.date | quote }}\n  num: {{ .Values.count | quote }}\n  big: {{ .Values.big | quote }}\n', { big: 1_000_000 });
    expect(chart.manifests[0]?.object.data).toEqual({ d: "2024-01-01", num: "5000", big: "1e+06" });
  });

  it("fails with Helm's message for `required`, naming the template and position", async () => {
    const error = await render('kind: ConfigMap\ndata:\n  v: {{ required "v is required" .Values.v }}\n').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HelmError);
    expect((error as Error).message).toMatch(/execution error at \(demo\/templates\/t\.yaml:3:\d+\): v is required/);
  });
});
