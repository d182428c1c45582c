// The Kubernetes checks the chart tests rely on: each must fail on what it exists to catch, or the chart
// tests prove nothing.
import { describe, expect, it } from "vitest";
import { typecheckManifests, validateManifest } from "./kubernetes.ts";

const ROOT = new URL("../..", import.meta.url).pathname;

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
