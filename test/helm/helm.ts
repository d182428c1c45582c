// The chart rendered by Helm's template engine: tools/helm-render is `helm template` without helm (Go's
// text/template, sprig, Helm's own functions, values.schema.json and kubeVersion checks), built from Debian's
// packaged Go sources. It is built once per checkout and source version: the binary lives under
// .tmp/helm-render/<hash of its sources>/, and a changed main.go or build.sh builds a new one.
import { createHash } from "node:crypto";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse as parseYaml } from "yaml";

const ROOT = new URL("../..", import.meta.url).pathname;
const SOURCE = join(ROOT, "tools", "helm-render");
const CACHE = join(ROOT, ".tmp", "helm-render");

let binary: string | undefined;

/** The helm-render binary for the current sources, built on first use (about 5 s). */
export function helmRenderBinary(): string {
  if (binary !== undefined) return binary;
  const hash = createHash("sha256");
  for (const file of ["build.sh", "main.go"]) hash.update(`${file}\0`).update(readFileSync(join(SOURCE, file)));
  const dir = join(CACHE, hash.digest("hex").slice(0, 16));
  const path = join(dir, "helm-render");
  if (!existsSync(path)) {
    mkdirSync(CACHE, { recursive: true });
    // Built in a private directory and renamed into place, so that test files starting at the same time in
    // parallel workers never run a half-written binary; whichever rename loses keeps the winner's binary.
    const building = mkdtempSync(join(CACHE, "build-"));
    const built = spawnSync("sh", [join(SOURCE, "build.sh")], {
      env: { ...process.env, HELM_RENDER_OUT: building, GOCACHE: join(CACHE, "gocache") },
      encoding: "utf8",
      timeout: 300_000,
    });
    if (built.status !== 0 || !existsSync(join(building, "helm-render"))) {
      rmSync(building, { recursive: true, force: true });
      throw new Error(
        `tools/helm-render/build.sh failed (${built.error?.message ?? `exit ${String(built.status)}`}): it needs Debian's golang-go and the ` +
          `golang-github-{masterminds-sprig,ghodss-yaml,burntsushi-toml,xeipuuv-gojsonschema}-dev packages ` +
          `(scripts/ensure-test-deps.sh installs them).\n${built.stderr}`,
      );
    }
    try {
      renameSync(building, dir);
    } catch (err) {
      rmSync(building, { recursive: true, force: true });
      if (!existsSync(path)) throw err;
    }
  }
  binary = path;
  return path;
}

/** Helm refused the chart or the values (a schema violation, `required`, `fail`, kubeVersion, a template error). */
export class HelmError extends Error {}

export interface RenderOptions {
  /**
   * Values files, merged over values.yaml in order as `helm template -f a -f b` merges them; an object is
   * written to a file first (JSON is YAML).
   */
  values?: Array<string | Record<string, unknown>>;
  /** `--set key=value` arguments, with Helm's typing of the value. */
  set?: string[];
  release?: { name?: string; namespace?: string };
  /** The Kubernetes version the chart is rendered for (Helm's default for `helm template`: v1.30.0 here). */
  kubeVersion?: string;
}

export interface RenderedChart {
  /** Every manifest in Helm's install order, with the template file it came from ("<chart>/templates/x.yaml"). */
  manifests: Array<{ template: string; text: string; object: Record<string, unknown> }>;
  notes: string;
  /** The values the templates saw: the overrides coalesced over values.yaml (what values.schema.json judged). */
  values: Record<string, unknown>;
}

/** YAML as Helm and Kubernetes read it (sigs.k8s.io/yaml on go-yaml v2: YAML 1.1, so `on`/`yes` are booleans). */
export function parseYaml11(text: string): unknown {
  return parseYaml(text, { version: "1.1" }) as unknown;
}

function run(chartDir: string, opts: RenderOptions, extra: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), "helm-values-"));
  try {
    const args = [chartDir, "--release-name", opts.release?.name ?? "mirror", "--namespace", opts.release?.namespace ?? "registry"];
    (opts.values ?? []).forEach((v, i) => {
      if (typeof v === "string") return args.push("-f", v);
      const file = join(dir, `values-${i}.yaml`);
      writeFileSync(file, JSON.stringify(v));
      return args.push("-f", file);
    });
    for (const s of opts.set ?? []) args.push("--set", s);
    if (opts.kubeVersion !== undefined) args.push("--kube-version", opts.kubeVersion);
    const result = spawnSync(helmRenderBinary(), [...args, ...extra], { encoding: "utf8", timeout: 60_000, maxBuffer: 64 * 1024 * 1024 });
    if (result.error) throw result.error;
    if (result.status !== 0) throw new HelmError(result.stderr.trim() || `helm-render exited with ${String(result.status)}`);
    return result.stdout;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The values the templates would see, without rendering; `skipSchema` to judge them some other way. */
export function computeValues(chartDir: string, opts: RenderOptions = {}, skipSchema = false): Record<string, unknown> {
  return JSON.parse(run(chartDir, opts, ["--show-values", ...(skipSchema ? ["--skip-schema"] : [])])) as Record<string, unknown>;
}

/** `helm template` for the chart: throws HelmError with Helm's message when Helm would refuse. */
export function renderChart(chartDir: string, opts: RenderOptions = {}): RenderedChart {
  const out = run(chartDir, opts, ["--show-notes"]);
  // The output is Helm's: "---\n# Source: <chart>/templates/<file>\n<document>\n" per manifest, then
  // "\nNOTES:\n<notes>\n" when the chart has notes.
  const notesAt = out.indexOf("\nNOTES:\n");
  const body = notesAt === -1 ? out : out.slice(0, notesAt + 1);
  const notes = notesAt === -1 ? "" : out.slice(notesAt + "\nNOTES:\n".length).replace(/\n$/, "");
  const manifests: RenderedChart["manifests"] = [];
  for (const chunk of body.split(/^---\n/m).slice(1)) {
    const source = /^# Source: (.+)\n/.exec(chunk);
    if (source === null) throw new Error(`helm-render: a document without its "# Source:" line:\n${chunk}`);
    const text = chunk.slice(source[0].length).replace(/\n$/, "");
    const object = parseYaml11(text);
    if (object === null || typeof object !== "object" || Array.isArray(object)) throw new Error(`${source[1]!}: a document that is not a mapping`);
    manifests.push({ template: source[1]!, text, object: object as Record<string, unknown> });
  }
  if (body.split(/^---\n/m)[0]!.trim() !== "") throw new Error(`helm-render: output before the first document:\n${body}`);
  return { manifests, notes, values: computeValues(chartDir, opts) };
}
