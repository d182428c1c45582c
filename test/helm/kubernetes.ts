// Checks rendered manifests against the Kubernetes API schemas, in two complementary ways:
//
//  1. the `kubernetes-models` validators (JSON schemas generated from the Kubernetes OpenAPI spec, and the
//     Prometheus Operator CRDs for ServiceMonitor): types, formats, enums and required fields;
//  2. the TypeScript interfaces of the same packages, with TypeScript's excess-property check: the OpenAPI
//     schemas allow unknown fields, which the API server drops (or rejects, with strict field validation),
//     so a misspelt field (`readinesProbe`) would pass (1) and silently do nothing in a cluster.
import { mkdir, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import ts from "typescript";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { DaemonSet, Deployment, StatefulSet } from "kubernetes-models/apps/v1";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1";
import { ConfigMap, Secret, Service } from "kubernetes-models/v1";

interface Kind {
  validate(object: Record<string, unknown>): void;
  /** Module and interface declaring the object's TypeScript type. */
  module: string;
  type: string;
}

/** Every kind the chart may render, by "apiVersion kind". A kind missing here is an error. */
const KINDS: Record<string, Kind> = {
  "v1 ConfigMap": { validate: (o) => new ConfigMap(o).validate(), module: "kubernetes-models/v1/ConfigMap", type: "IConfigMap" },
  "v1 Secret": { validate: (o) => new Secret(o).validate(), module: "kubernetes-models/v1/Secret", type: "ISecret" },
  "v1 Service": { validate: (o) => new Service(o).validate(), module: "kubernetes-models/v1/Service", type: "IService" },
  "apps/v1 StatefulSet": { validate: (o) => new StatefulSet(o).validate(), module: "kubernetes-models/apps/v1/StatefulSet", type: "IStatefulSet" },
  "apps/v1 Deployment": { validate: (o) => new Deployment(o).validate(), module: "kubernetes-models/apps/v1/Deployment", type: "IDeployment" },
  "apps/v1 DaemonSet": { validate: (o) => new DaemonSet(o).validate(), module: "kubernetes-models/apps/v1/DaemonSet", type: "IDaemonSet" },
  "policy/v1 PodDisruptionBudget": {
    validate: (o) => new PodDisruptionBudget(o).validate(),
    module: "kubernetes-models/policy/v1/PodDisruptionBudget",
    type: "IPodDisruptionBudget",
  },
  "monitoring.coreos.com/v1 ServiceMonitor": {
    // Its model's constructor type demands `spec`; the validator is what decides whether it is there.
    validate: (o) => new ServiceMonitor(o as ConstructorParameters<typeof ServiceMonitor>[0]).validate(),
    module: "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor",
    type: "IServiceMonitor",
  },
};

function kindOf(object: Record<string, unknown>): Kind {
  const key = `${String(object.apiVersion)} ${String(object.kind)}`;
  const kind = KINDS[key];
  if (kind === undefined) throw new Error(`no Kubernetes schema known for ${key}`);
  return kind;
}

/** Throws with the validator's message when `object` violates its kind's schema. */
export function validateManifest(object: Record<string, unknown>): void {
  kindOf(object).validate(object);
}

/**
 * Type-checks the manifests as object literals of their kinds' interfaces and returns TypeScript's
 * diagnostics (empty when every field exists and has the right type). The file is written under the
 * repository's .tmp/ so that the packages resolve from its node_modules.
 */
export async function typecheckManifests(repoRoot: string, objects: Array<{ label: string; object: Record<string, unknown> }>): Promise<string[]> {
  const dir = join(repoRoot, ".tmp", `helm-typecheck-${process.pid}-${Date.now()}`);
  await mkdir(dir, { recursive: true });
  try {
    const file = join(dir, "manifests.ts");
    const imports = new Map<string, string>();
    const lines: string[] = [];
    objects.forEach(({ label, object }, i) => {
      const kind = kindOf(object);
      const alias = imports.get(kind.module) ?? `T${imports.size}`;
      imports.set(kind.module, alias);
      lines.push(`// ${label}`, `export const m${i}: ${alias}.${kind.type} = ${JSON.stringify(object, null, 2)};`);
    });
    const header = [...imports].map(([module, alias]) => `import type * as ${alias} from ${JSON.stringify(module)};`);
    await writeFile(file, [...header, ...lines, ""].join("\n"));
    const program = ts.createProgram([file], {
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      types: [],
    });
    return ts.getPreEmitDiagnostics(program).map((d) => {
      const text = ts.flattenDiagnosticMessageText(d.messageText, "\n");
      if (d.file === undefined || d.start === undefined) return text;
      const { line } = d.file.getLineAndCharacterOfPosition(d.start);
      // Name the manifest the offending line belongs to.
      const source = d.file.text.split("\n");
      let at = line;
      while (at > 0 && !source[at]!.startsWith("// ")) at--;
      return `${source[at]!.slice(3)}, line ${line + 1}: ${text}`;
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
