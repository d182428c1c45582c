// The chart renderer's Go-template semantics, where JavaScript intuition and Helm disagree, and the
// Kubernetes checks themselves: each must fail on what it exists to catch, or the chart tests prove nothing.
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { typecheckManifests, validateManifest } from "./kubernetes.ts";
import { mergeValues, renderChart } from "./render.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
let chartDir: string;

beforeAll(async () => {
  chartDir = await mkdtemp(join(tmpdir(), "render-test-"));
  await mkdir(join(chartDir, "templates"));
  await writeFile(join(chartDir, "Chart.yaml"), "apiVersion: v2\nname: demo\nversion: 1.2.3\nappVersion: '4.5'\n");
  await writeFile(join(chartDir, "files.txt"), "line one\nline two\n");
});
afterAll(() => rm(chartDir, { recursive: true, force: true }));

/** Renders one template (as templates/t.yaml) with the given values and returns the raw text. */
async function render(template: string, values: Record<string, unknown> = {}): Promise<string> {
  await writeFile(join(chartDir, "values.yaml"), "{}\n");
  await writeFile(join(chartDir, "templates", "NOTES.txt"), template);
  return renderChart(chartDir, { values }).notes;
}

describe("the template renderer", () => {
  it("trims whitespace exactly at {{- and -}}", async () => {
    expect(await render("a  \n  {{- 1 }}  \n  b")).toBe("a1  \n  b");
    expect(await render("a  {{ 1 -}}  \n  b")).toBe("a  1b");
    expect(await render("x{{/* comment */}}y")).toBe("xy");
    expect(await render("x\n{{- /* comment */ -}}\ny")).toBe("xy");
  });

  it("prints Helm's float64 numbers as Go does", async () => {
    expect(await render("{{ .Values.a }} {{ .Values.b }} {{ .Values.c }} {{ .Values.d }}", { a: 5000, b: 1_000_000, c: 1_234_567, d: 0.5 })).toBe(
      "5000 1e+06 1.234567e+06 0.5",
    );
  });

  it("treats a missing key as empty but a field of nil as an error", async () => {
    expect(await render("[{{ .Values.missing }}]")).toBe("[]");
    await expect(render("{{ .Values.missing.field }}")).rejects.toThrow(/nil pointer evaluating interface \{\}\.field/);
  });

  it("ranges over maps in key order, with Go's truth and scoping", async () => {
    const text = "{{ range $k, $v := .Values.m }}{{ $k }}={{ $v }};{{ end }}|{{ if .Values.zero }}t{{ else }}f{{ end }}|{{ with .Values.s }}{{ . }}{{ end }}";
    expect(await render(text, { m: { b: 2, a: 1, c: "x" }, zero: 0, s: "dot" })).toBe("a=1;b=2;c=x;|f|dot");
  });

  it("implements the Sprig functions the chart uses as Sprig does", async () => {
    const text = '{{ "a.b.c" | replace "." "-" }} {{ .Values.l | toYaml | nindent 2 }} {{ default "d" .Values.empty }} {{ list | len }}';
    await expect(render(text, { l: ["x"], empty: "" })).rejects.toThrow(/function "list" is outside the supported subset/);
    expect(await render('{{ "a.b.c" | replace "." "-" }}{{ .Values.l | toYaml | nindent 2 }} {{ default "d" .Values.empty }}', { l: ["x", "on"], empty: "" })).toBe(
      // "on" stays a string in YAML 1.1 only when quoted, as Helm's toYaml quotes it.
      'a-b-c\n  - x\n  - "on" d',
    );
    expect(await render('{{ printf "%s-%v" "a" .Values.n | trunc 4 | trimSuffix "-" }}', { n: 12 })).toBe("a-12");
    expect(await render("{{ .Values.m | toJson }}", { m: { b: "<&>", a: 1 } })).toBe('{"a":1,"b":"\\u003c\\u0026\\u003e"}');
  });

  it("refuses constructs whose Helm behaviour it does not reproduce", async () => {
    await expect(render("{{ eq .Values.n 1 }}", { n: 1 })).rejects.toThrow(/outside the supported subset/);
    await expect(render('{{ printf "%d" .Values.n }}', { n: 1 })).rejects.toThrow(/%d of a non-int/);
    await expect(render("{{ .Values.m }}", { m: { a: 1 } })).rejects.toThrow(/use toYaml/);
    await expect(render('{{ template "x" . }}')).rejects.toThrow(/outside the supported subset/);
    await expect(render('{{ .Files.Get "nope.txt" }}')).rejects.toThrow(/does not exist/);
  });

  it("reads chart files and merges values as Helm does (null deletes a default)", async () => {
    expect(await render('{{ .Files.Get "files.txt" | indent 2 }}|{{ .Chart.Name }}-{{ .Chart.AppVersion }}')).toBe("  line one\n  line two\n  |demo-4.5");
    expect(mergeValues({ a: { x: 1, y: 2 }, b: 1 }, { a: { y: null, z: 3 } })).toEqual({ a: { x: 1, z: 3 }, b: 1 });
  });
});

describe("the Kubernetes checks", () => {
  const service = { apiVersion: "v1", kind: "Service", metadata: { name: "s" }, spec: { ports: [{ port: 80 }] } };

  it("reject a wrong type through the kubernetes-models validators", () => {
    expect(() => validateManifest(service)).not.toThrow();
    expect(() => validateManifest({ ...service, spec: { ports: [{ port: "eighty" }] } })).toThrow();
    expect(() => validateManifest({ apiVersion: "v1", kind: "Pod" })).toThrow(/no Kubernetes schema known/);
  });

  it("reject a misspelt field through the TypeScript types (the validators allow unknown fields)", async () => {
    const misspelt = { ...service, spec: { ports: [{ port: 80 }], selectr: { app: "x" } } };
    expect(() => validateManifest(misspelt)).not.toThrow();
    const diagnostics = await typecheckManifests(ROOT, [{ label: "misspelt Service", object: misspelt }]);
    expect(diagnostics.join("\n")).toMatch(/misspelt Service.*'"selectr"' does not exist in type 'IServiceSpec'/s);
  }, 60_000);
});
