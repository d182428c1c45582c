// The Helm chart, checked as far as this machine allows without a cluster or a helm binary:
//   - values.schema.json is a valid JSON schema (ajv, strict) that accepts values.yaml and every example,
//     and refuses the mistakes it exists to catch;
//   - every key in values.yaml carries a comment;
//   - the chart renders through Helm's template engine (tools/helm-render, see helm.ts), which also judges the
//     values by values.schema.json and the cluster by kubeVersion, with the defaults and with each example, and every manifest passes the Kubernetes schemas (kubernetes-models)
//     and TypeScript's excess-property check against the same API types;
//   - what the pod would load is a valid mirror configuration: the rendered config file plus the container's
//     environment go through the mirror's own loader;
//   - the pieces fit together: selectors, ports, mounts of the files the config names, the dashboard.
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import type { IServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import type { IDaemonSet, IDeployment, IStatefulSet } from "kubernetes-models/apps/v1";
import type { IPodDisruptionBudget } from "kubernetes-models/policy/v1";
import type { IConfigMap, IContainer, IPodSpec, ISecret, IService, IVolume } from "kubernetes-models/v1";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Ajv } from "ajv";
import { isMap, isScalar, isSeq, parseDocument, type Node as YamlNode, type Pair } from "yaml";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { loadConfig } from "../../src/config/load.ts";
import { configSchema, upstreamSchema } from "../../src/config/schema.ts";
import { typecheckManifests, validateManifest } from "./kubernetes.ts";
import { computeValues, HelmError, parseYaml11, renderChart, type RenderedChart } from "./helm.ts";

const ROOT = new URL("../..", import.meta.url).pathname;
const CHART = join(ROOT, "helm");
const EXAMPLES = readdirSync(join(CHART, "examples"))
  .filter((f) => f.endsWith(".yaml"))
  .sort();

type Labels = Record<string, string>;

/** The parts of the chart's values these tests read (values.schema.json has them all). */
interface Values {
  replicaCount: number;
  config: { offline: boolean; tls?: unknown; upstreams: Record<string, unknown> };
  upstreamCredentials: Record<string, { existingSecret: string; usernameKey?: string; passwordKey?: string }>;
  redis: { enabled: boolean; host: string };
  s3: {
    enabled: boolean;
    endpoint: string;
    region: string;
    bucket: string;
    prefix: string;
    forcePathStyle: boolean;
    redirect: boolean;
    redirectEndpoint: string;
    existingSecret: string;
    accessKeyIdKey: string;
    secretAccessKeyKey: string;
    tempSizeLimit: string;
  };
  admin: { existingSecret: string; tokenKey: string; console: boolean };
  service: { port: number };
  persistence: { size: string };
  podDisruptionBudget: { enabled: boolean };
  serviceMonitor: { enabled: boolean; labels: Labels };
  grafanaDashboard: { enabled: boolean };
  containerdHosts: { enabled: boolean; hostPath: string; mirrorUrl: string; removeFiles: boolean };
  preStopSleepSeconds: number;
}

/** Every configuration the tests render: the defaults and each example, as `helm install -f` would. */
const CASES: Array<{ name: string; values: string[] }> = [
  { name: "values.yaml", values: [] },
  ...EXAMPLES.map((f) => ({ name: `examples/${f}`, values: [join(CHART, "examples", f)] })),
];

/** The values Helm would validate: `overrides` coalesced over values.yaml by Helm's engine, unjudged. */
const merged = (...overrides: Array<string | Record<string, unknown>>): Record<string, unknown> => computeValues(CHART, { values: overrides }, true);
/** Helm's own verdict on the values (gojsonschema against values.schema.json): its error, or "" when it accepts. */
function helmVerdict(...overrides: Array<string | Record<string, unknown>>): string {
  try {
    computeValues(CHART, { values: overrides });
    return "";
  } catch (err) {
    if (err instanceof HelmError) return err.message;
    throw err;
  }
}

function schemaValidator() {
  // Strict: unknown keywords and malformed schemas are errors. strictTypes is off: it demands a "type" beside
  // every keyword, which the if/then conditions and string-or-integer durations do not need.
  const ajv = new Ajv({ allErrors: true, strict: true, strictTypes: false });
  return ajv.compile(JSON.parse(readFileSync(join(CHART, "values.schema.json"), "utf8")) as object);
}

const nameOf = (object: Record<string, unknown>): string => String((object.metadata as { name?: string } | undefined)?.name);

/** The manifests of a kind (optionally by name suffix), typed as that kind (they passed its schema). */
function all<T>(chart: RenderedChart, kind: string, nameSuffix = ""): T[] {
  return chart.manifests.filter((m) => m.object.kind === kind && nameOf(m.object).endsWith(nameSuffix)).map((m) => m.object as T);
}

function find<T>(chart: RenderedChart, kind: string, nameSuffix = ""): T {
  const found = all<T>(chart, kind, nameSuffix);
  if (found.length !== 1 || found[0] === undefined) throw new Error(`expected one ${kind} named *${nameSuffix}, found ${found.length}`);
  return found[0];
}

function selects(selector: Labels | undefined, labels: Labels | undefined): boolean {
  return selector !== undefined && Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

/** The mirror pods' workload: a StatefulSet (a volume per replica) or, with s3.enabled, a Deployment. */
function workload(chart: RenderedChart): { kind: "StatefulSet"; object: IStatefulSet } | { kind: "Deployment"; object: IDeployment } {
  const statefulSets = all<IStatefulSet>(chart, "StatefulSet");
  const deployments = all<IDeployment>(chart, "Deployment");
  if (statefulSets.length + deployments.length !== 1) throw new Error(`expected one StatefulSet or Deployment, found ${statefulSets.length + deployments.length}`);
  return statefulSets[0] ? { kind: "StatefulSet", object: statefulSets[0] } : { kind: "Deployment", object: deployments[0]! };
}

const configFile = (chart: RenderedChart): string => find<IConfigMap>(chart, "ConfigMap", "registry-mirror").data?.["config.yaml"] ?? "";

/** Fake Secret contents for the pod's environment: values a real Secret could hold, percent-encoded. */
const SECRET_VALUE = "s3cr3t%2Fpass";
/** The pod's IP as the downward API gives it. */
const POD_IP = "10.42.0.17";

/**
 * The environment the mirror process would see: the container's env list, with secretKeyRef values filled
 * in and $(VAR) references expanded the way the kubelet does (only variables defined earlier in the list).
 */
function podEnvironment(container: IContainer): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of container.env ?? []) {
    const raw = e.valueFrom?.secretKeyRef
      ? SECRET_VALUE
      : e.valueFrom?.fieldRef?.fieldPath === "status.podIP"
        ? POD_IP
        : (e.value ?? "");
    env[e.name] = raw.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (whole, name: string) => env[name] ?? whole);
  }
  return env;
}

/** Where in the container a file path lands: the volume and the key (for Secret/ConfigMap items). */
function mountedFile(pod: IPodSpec, container: IContainer, path: string): { volume: IVolume; key: string } | undefined {
  for (const mount of container.volumeMounts ?? []) {
    const prefix = `${mount.mountPath.replace(/\/$/, "")}/`;
    if (!path.startsWith(prefix) || mount.subPath !== undefined) continue;
    const volume = pod.volumes?.find((v) => v.name === mount.name);
    if (volume === undefined) return undefined;
    const file = path.slice(prefix.length);
    const items = volume.secret?.items ?? volume.configMap?.items;
    // Without items every key of the Secret is a file named after it.
    if (items === undefined) return { volume, key: file };
    const item = items.find((i) => i.path === file);
    return item === undefined ? undefined : { volume, key: item.key };
  }
  return undefined;
}

/** Keys of a zod object schema, through the optional/default/prefault wrappers the config schema uses. */
function zodKeys(schema: z.ZodType): string[] {
  let s: z.ZodType = schema;
  for (let i = 0; i < 10 && !(s instanceof z.ZodObject); i++) {
    if (s instanceof z.ZodOptional || s instanceof z.ZodDefault || s instanceof z.ZodPrefault || s instanceof z.ZodNullable) s = s.unwrap() as z.ZodType;
    else if (s instanceof z.ZodPipe) s = s.in as z.ZodType;
    else break;
  }
  if (!(s instanceof z.ZodObject)) throw new Error("not an object schema");
  return Object.keys(s.shape).sort();
}

describe("values.schema.json", () => {
  const validate = schemaValidator();
  const errors = (): string => JSON.stringify(validate.errors, null, 2);

  it("accepts values.yaml and every example (merged over the defaults, as Helm validates)", () => {
    expect(EXAMPLES.length).toBeGreaterThanOrEqual(3);
    for (const { name, values } of CASES) {
      expect(validate(merged(...values)), `${name}: ${errors()}`).toBe(true);
      expect(helmVerdict(...values), name).toBe("");
    }
  });

  it("accepts a duration longer than a timer can wait, as the mirror does (it waits 24.8 days)", () => {
    const values = { config: { storage: { checkInterval: 30 * 86_400_000 } } };
    expect(validate(merged(values)), errors()).toBe(true);
    expect(helmVerdict(values)).toBe("");
  });

  it.each([
    ["several replicas without Redis", { replicaCount: 3 }],
    ["several replicas without Redis, with S3", { replicaCount: 3, s3: { enabled: true, bucket: "mirror" } }],
    ["several replicas with Redis but each on its own disk (no S3)", { replicaCount: 3, redis: { enabled: true, host: "redis.example" } }],
    ["S3 without a bucket", { s3: { enabled: true } }],
    ["an S3 endpoint that is not an http(s) origin", { s3: { enabled: true, bucket: "mirror", endpoint: "rgw:7480" } }],
    ["an s3 block inside config (the chart owns storage.s3)", { config: { storage: { s3: { bucket: "mirror" } } } }],
    ["a redirect endpoint without redirect", { s3: { enabled: true, bucket: "mirror", redirectEndpoint: "https://s3.example.com" } }],
    ["a redirect endpoint that is not an http(s) origin", { s3: { enabled: true, bucket: "mirror", redirect: true, redirectEndpoint: "s3.example.com" } }],
    ["Redis without a host", { redis: { enabled: true } }],
    ["replicas sharing downloads without Redis", { cluster: { enabled: true, existingSecret: "mirror-cluster" } }],
    ["a misspelt top-level key", { replicas: 2 }],
    ["a replica count that is not a number", { replicaCount: "two" }],
    ["credentials inside the ConfigMap", { config: { upstreams: { "docker.io": { credentials: { username: "u", password: "p" } } } } }],
    ["chart-owned keys in config", { config: { listen: "0.0.0.0:6000" } }],
    ["a storage size that is not a Kubernetes quantity", { persistence: { size: "50GB" } }],
    ["an upstream URL with a path", { config: { upstreams: { "ghcr.io": { url: "https://ghcr.io/v2/" } } } }],
    ["an upstream name that is no registry host", { config: { upstreams: { "GHCR.io": { url: "https://ghcr.io" } } } }],
    ["a containerd-hosts refresh period of 0 (its script would end after one round: a restart loop)", { containerdHosts: { refreshSeconds: 0 } }],
    ["a containerd-hosts refresh period longer than a timer can wait", { containerdHosts: { refreshSeconds: 2147484 } }],
    ["a duration longer than 100 years (the mirror's bound; longer than a timer is accepted and waits 24.8 days)", { config: { shutdownGrace: 3155760000001 } }],
  ])("refuses %s", (_label, values) => {
    expect(validate(merged(values))).toBe(false);
    expect(helmVerdict(values)).toMatch(/^Error: values don't meet the specifications of the schema\(s\)/);
  });

  it("describes exactly the mirror's config keys that the chart does not set itself", () => {
    // When the mirror gains a config key, this fails until the chart's schema (and values.yaml) know it.
    type Properties = { properties: Record<string, Properties>; additionalProperties: Properties };
    const schema = JSON.parse(readFileSync(join(CHART, "values.schema.json"), "utf8")) as Properties;
    const config = schema.properties.config!;
    const chartOwned = ["listen", "redis", "admin", "cluster"];
    expect(Object.keys(config.properties).sort()).toEqual(zodKeys(configSchema).filter((k) => !chartOwned.includes(k)));
    expect(Object.keys(config.properties.storage!.properties).sort()).toEqual(zodKeys(configSchema.shape.storage).filter((k) => !["path", "s3"].includes(k)));
    // ...and the chart's own s3 block sets every key of storage.s3 but the inline credentials (Secrets only).
    const s3 = schema.properties.s3!.properties;
    const s3Keys = zodKeys(configSchema.shape.storage.unwrap().shape.s3);
    const notSet = ["accessKeyId", "secretAccessKey", "accessKeyIdFile", "secretAccessKeyFile"];
    expect(s3Keys.filter((k) => !notSet.includes(k)).filter((k) => !(k in s3))).toEqual([]);
    expect(Object.keys(config.properties.upstreams!.additionalProperties.properties).sort()).toEqual(zodKeys(upstreamSchema).filter((k) => k !== "credentials"));
  });
});

describe("Helm's checks before it renders", () => {
  it("refuses values that break values.schema.json, with the schema's message (helm template --set replicaCount=two)", () => {
    expect(() => renderChart(CHART, { set: ["replicaCount=two"] })).toThrow(HelmError);
    expect(() => renderChart(CHART, { set: ["replicaCount=two"] })).toThrow(/replicaCount: Invalid type\. Expected: integer, given: string/);
    // --set types a number as Helm does (int64), and the schema accepts it (with Redis and S3, as several replicas need).
    const values = renderChart(CHART, { set: ["replicaCount=2", "redis.enabled=true", "redis.host=redis.example", "s3.enabled=true", "s3.bucket=mirror"] }).values;
    expect(values.replicaCount).toBe(2);
  });

  it("writes config.yaml with Helm's toYaml (sigs.k8s.io/yaml: sequences compact, at their key's indentation)", () => {
    // Our former subset renderer indented them ("  - x"), so its text and checksum/config differed from Helm's.
    const text = configFile(renderChart(CHART, { values: [join(CHART, "examples", "replicated-redis.yaml")] }));
    expect(text).toContain("\n    aliases:\n    - registry-1.docker.io\n    - index.docker.io\n");
    // ...and a string YAML would misread plain is single-quoted (go-yaml v2), where the subset wrote "*".
    expect(text).toContain("\n    subjects:\n    - '*'\n");
  });

  it("renders for the oldest Kubernetes that Chart.yaml's kubeVersion admits, and refuses an older one", () => {
    const kubeVersion = (parseYaml11(readFileSync(join(CHART, "Chart.yaml"), "utf8")) as { kubeVersion: string }).kubeVersion;
    expect(kubeVersion).toBe(">=1.25.0-0");
    expect(renderChart(CHART, { kubeVersion: "v1.25.0" }).manifests.length).toBeGreaterThan(0);
    expect(() => renderChart(CHART, { kubeVersion: "v1.24.17" })).toThrow(/chart requires kubeVersion: >=1\.25\.0-0 which is incompatible with Kubernetes v1\.24\.17/);
  });
});

describe("replicas sharing downloads", () => {
  const fleet = { replicaCount: 3, redis: { enabled: true, host: "redis.example" }, s3: { enabled: true, bucket: "mirror" }, cluster: { enabled: true } };

  it("generates the replicas' secret when none is given, kept across upgrades and uninstalls, and mounts it", () => {
    const chart = renderChart(CHART, { values: [fleet], release: { name: "mirror", namespace: "registry" } });
    const secret = find<ISecret>(chart, "Secret", "-cluster");
    expect(secret.metadata?.name).toBe("mirror-registry-mirror-cluster");
    expect(secret.metadata?.annotations?.["helm.sh/resource-policy"]).toBe("keep");
    const value = Buffer.from(secret.data!.secret!, "base64").toString("utf8");
    expect(value).toMatch(/^[A-Za-z0-9]{48}$/);
    const pod = workload(chart).object.spec!.template.spec!;
    const container = pod.containers.find((c) => c.name === "mirror")!;
    const file = podEnvironment(container).MIRROR_CLUSTER__SECRET_FILE!;
    expect(mountedFile(pod, container, file)).toMatchObject({
      volume: { secret: { secretName: "mirror-registry-mirror-cluster" } },
      key: "secret",
    });
  });

  it("uses an existing Secret as it is, and generates none", () => {
    const chart = renderChart(CHART, { values: [fleet, { cluster: { existingSecret: "mine", secretKey: "token" } }] });
    expect(all<ISecret>(chart, "Secret")).toEqual([]);
    const pod = workload(chart).object.spec!.template.spec!;
    const container = pod.containers.find((c) => c.name === "mirror")!;
    const file = podEnvironment(container).MIRROR_CLUSTER__SECRET_FILE!;
    expect(mountedFile(pod, container, file)).toMatchObject({ volume: { secret: { secretName: "mine" } }, key: "token" });
  });
});

describe("S3 redirect mode", () => {
  it("hands s3.redirectEndpoint to the mirror, whose loader accepts it beside the in-cluster endpoint", async () => {
    const s3 = { enabled: true, bucket: "mirror", endpoint: "http://rgw.rook-ceph.svc:80", redirect: true, redirectEndpoint: "https://s3.example.com" };
    const chart = renderChart(CHART, { values: [{ s3 }] });
    const container = workload(chart).object.spec!.template.spec!.containers.find((c) => c.name === "mirror")!;
    const dir = await mkdtemp(join(tmpdir(), "helm-config-"));
    try {
      const file = join(dir, "config.yaml");
      await writeFile(file, configFile(chart));
      const config = loadConfig({ file, env: podEnvironment(container) });
      expect(config.storage.s3).toMatchObject({ endpoint: s3.endpoint, redirect: true, redirectEndpoint: s3.redirectEndpoint, readTimeout: 10_000 });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    // Without one, the variable is not set at all: the mirror signs for `endpoint`.
    const plain = renderChart(CHART, { values: [{ s3: { ...s3, redirectEndpoint: "" } }] });
    const env = podEnvironment(workload(plain).object.spec!.template.spec!.containers.find((c) => c.name === "mirror")!);
    expect(env).not.toHaveProperty("MIRROR_STORAGE__S3__REDIRECT_ENDPOINT");
    expect(env.MIRROR_STORAGE__S3__REDIRECT).toBe("true");
    const patient = renderChart(CHART, { values: [{ s3: { ...s3, readTimeout: "30s" } }] });
    expect(podEnvironment(workload(patient).object.spec!.template.spec!.containers.find((c) => c.name === "mirror")!).MIRROR_STORAGE__S3__READ_TIMEOUT).toBe("30s");
  });
});

describe("values.yaml", () => {
  it("has a comment on every key", () => {
    const doc = parseDocument(readFileSync(join(CHART, "values.yaml"), "utf8"));
    const missing: string[] = [];
    const walk = (node: YamlNode | null | undefined, path: string): void => {
      if (!isMap(node)) return;
      node.items.forEach((pair: Pair, i) => {
        const key = isScalar(pair.key) ? String(pair.key.value) : "?";
        const keyNode = pair.key as YamlNode | null;
        const value = pair.value as YamlNode | null;
        // A comment line above the key (the first key's may be attached to the map or the document) or
        // at the end of the line.
        const commented =
          Boolean(keyNode?.commentBefore) ||
          Boolean(isScalar(value) || isSeq(value) ? value.comment : undefined) ||
          (i === 0 && Boolean(node.commentBefore)) ||
          (i === 0 && path === "" && Boolean(doc.commentBefore));
        if (!commented) missing.push(`${path}${key}`);
        walk(value, `${path}${key}.`);
      });
    };
    walk(doc.contents, "");
    expect(missing).toEqual([]);
  });
});

describe.each(CASES)("rendered with $name", ({ name, values }) => {
  const chart = renderChart(CHART, { values, release: { name: "mirror", namespace: "registry" } });
  const { kind, object: sts } = workload(chart);
  const pod = sts.spec!.template.spec!;
  const container = pod.containers[0]!;
  const podLabels = sts.spec!.template.metadata!.labels;
  const merged = chart.values as unknown as Values;
  const daemonSet = all<IDaemonSet>(chart, "DaemonSet")[0];

  it("passes the Kubernetes schemas, with no unknown field", async () => {
    for (const { template, object } of chart.manifests) {
      expect(() => validateManifest(object), `${template} ${String(object.kind)}`).not.toThrow();
    }
    const labelled = chart.manifests.map((m) => ({ label: `${m.template} ${String(m.object.kind)}`, object: m.object }));
    expect(await typecheckManifests(ROOT, labelled)).toEqual([]);
  }, 60_000);

  it("gives the mirror a configuration its own loader accepts, with the chart's listen, storage and Redis", async () => {
    const dir = await mkdtemp(join(tmpdir(), "helm-config-"));
    try {
      const file = join(dir, "config.yaml");
      await writeFile(file, configFile(chart));
      const env = podEnvironment(container);
      expect(env.MIRROR_CONFIG).toBe("/etc/registry-mirror/config.yaml");
      const config = loadConfig({ file, env });
      expect(config.listen).toBe("0.0.0.0:5000");
      expect(config.storage.path).toBe("/data");
      expect(Object.keys(config.upstreams).sort()).toEqual(Object.keys(merged.config.upstreams).sort());
      expect(config.offline).toBe(merged.config.offline);
      if (merged.redis.enabled) {
        // The password from the Secret ends up in the URL, where ioredis reads it back percent-decoded.
        expect(config.redis?.url).toBe(`redis://:${SECRET_VALUE}@${merged.redis.host}:6379/0`);
        expect(decodeURIComponent(new URL(config.redis!.url).password)).toBe("s3cr3t/pass");
        expect(config.redis?.keyPrefix).toBe("mirror:");
        expect(configFile(chart)).not.toContain("redis");
      } else {
        expect(config.redis).toBeUndefined();
      }
      if (merged.s3.enabled) {
        // The content in the bucket, from the chart's s3 block; the key files (if any) from the Secret, by key.
        expect(config.storage.s3).toMatchObject({
          bucket: merged.s3.bucket,
          region: merged.s3.region,
          prefix: merged.s3.prefix,
          forcePathStyle: merged.s3.forcePathStyle,
          redirect: merged.s3.redirect,
        });
        expect(config.storage.s3?.endpoint).toBe(merged.s3.endpoint || undefined);
        expect(config.storage.s3?.redirectEndpoint).toBe(merged.s3.redirectEndpoint || undefined);
        expect(config.storage.s3?.accessKeyId).toBeUndefined();
        expect(config.storage.s3?.secretAccessKey).toBeUndefined();
        expect(configFile(chart)).not.toContain("s3");
        if (merged.s3.existingSecret) {
          const id = mountedFile(pod, container, config.storage.s3!.accessKeyIdFile!);
          const key = mountedFile(pod, container, config.storage.s3!.secretAccessKeyFile!);
          expect(id).toMatchObject({ volume: { secret: { secretName: merged.s3.existingSecret } }, key: merged.s3.accessKeyIdKey });
          expect(key).toMatchObject({ volume: { secret: { secretName: merged.s3.existingSecret } }, key: merged.s3.secretAccessKeyKey });
        } else {
          // No Secret: the AWS SDK's default chain (web identity, instance role...).
          expect(config.storage.s3?.accessKeyIdFile).toBeUndefined();
          expect(config.storage.s3?.secretAccessKeyFile).toBeUndefined();
        }
      } else {
        expect(config.storage.s3).toBeUndefined();
      }
      const cluster = (chart.values as { cluster: { enabled: boolean; existingSecret: string } }).cluster;
      if (cluster.enabled) {
        // Each replica advertises its own pod IP, on the scheme it serves; its secret comes from the Secret.
        const scheme = merged.config.tls !== undefined ? "https" : "http";
        expect(config.cluster?.advertiseUrl).toBe(`${scheme}://${POD_IP}:5000`);
        const secret = mountedFile(pod, container, config.cluster!.secretFile!);
        // An existing Secret, or the one the chart generates (and keeps) for the release.
        expect(secret?.volume.secret?.secretName).toBe(cluster.existingSecret || "mirror-registry-mirror-cluster");
      } else {
        expect(config.cluster).toBeUndefined();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("mounts every file the configuration names (credentials, admin token, TLS, access) from a Secret", async () => {
    const dir = await mkdtemp(join(tmpdir(), "helm-config-"));
    try {
      const file = join(dir, "config.yaml");
      await writeFile(file, configFile(chart));
      const config = loadConfig({ file, env: podEnvironment(container) });
      for (const [upstream, creds] of Object.entries(merged.upstreamCredentials)) {
        const c = config.upstreams[upstream]?.credentials;
        expect(c, upstream).toBeDefined();
        const user = mountedFile(pod, container, c!.usernameFile!);
        const pass = mountedFile(pod, container, c!.passwordFile!);
        expect(user?.volume.secret?.secretName).toBe(creds.existingSecret);
        expect(user?.key).toBe(creds.usernameKey ?? "username");
        expect(pass?.volume.secret?.secretName).toBe(creds.existingSecret);
        expect(pass?.key).toBe(creds.passwordKey ?? "password");
      }
      // Whatever else names a file (tls.certFile, access.htpasswdFile, tokens[].tokenFile, ...) must find one.
      const paths: string[] = [];
      const collect = (v: unknown, key: string): void => {
        if (typeof v === "string" && /File$/.test(key)) paths.push(v);
        else if (Array.isArray(v)) v.forEach((x) => collect(x, key));
        else if (v !== null && typeof v === "object") for (const [k, x] of Object.entries(v)) collect(x, k);
      };
      collect(config, "");
      for (const path of paths) expect(mountedFile(pod, container, path)?.volume.secret, `a Secret mounted at ${path}`).toBeDefined();
      if (merged.admin.existingSecret) {
        const token = mountedFile(pod, container, config.admin.tokenFile!);
        expect(token?.volume.secret?.secretName).toBe(merged.admin.existingSecret);
        expect(token?.key).toBe(merged.admin.tokenKey);
        // The web console is on by default wherever the admin token is (it signs in with it).
        expect(config.console.enabled).toBe(merged.admin.console);
      } else {
        expect(config.admin.tokenFile).toBeUndefined();
        expect(config.console.enabled).toBe(false);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("runs the mirror non-root on a read-only root filesystem, with /data on a claim of the configured size (in S3 mode an emptyDir)", () => {
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000, fsGroup: 1000 });
    expect(container.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } });
    const mounts = Object.fromEntries((container.volumeMounts ?? []).map((m) => [m.mountPath, m.name]));
    expect(mounts["/data"]).toBe("data");
    expect(pod.volumes?.find((v) => v.name === mounts["/tmp"])?.emptyDir).toBeDefined();
    if (merged.s3.enabled) {
      // The content is in the bucket: a Deployment, no claim, /data holds temp files in a bounded emptyDir.
      expect(kind).toBe("Deployment");
      // Nothing to move between pods: a new pod is ready before an old one leaves.
      expect((sts as IDeployment).spec?.strategy).toEqual({ type: "RollingUpdate", rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } });
      expect(pod.volumes?.find((v) => v.name === "data")?.emptyDir).toEqual({ sizeLimit: merged.s3.tempSizeLimit });
      expect(all(chart, "PersistentVolumeClaim")).toEqual([]);
    } else {
      expect(kind).toBe("StatefulSet");
      expect(pod.volumes?.find((v) => v.name === "data")).toBeUndefined();
      const claim = (sts as IStatefulSet).spec!.volumeClaimTemplates?.find((c) => c.metadata?.name === "data");
      expect(claim?.spec?.resources?.requests?.storage).toBe(merged.persistence.size);
    }
    expect(sts.spec!.replicas).toBe(merged.replicaCount);
    const scheme = merged.config.tls ? "HTTPS" : "HTTP";
    expect(container.livenessProbe?.httpGet).toEqual({ path: "/healthz", port: "http", scheme });
    expect(container.readinessProbe?.httpGet).toEqual({ path: "/readyz", port: "http", scheme });
    expect(container.ports).toContainEqual({ name: "http", containerPort: 5000, protocol: "TCP" });
    // The preStop sleep keeps the pod serving while it leaves the Service; then SIGTERM lets responses and
    // downloads finish for shutdownGrace. Kubernetes counts both against its grace period, so it must be longer.
    const sleep = container.lifecycle?.preStop?.exec?.command;
    const sleepSeconds = sleep === undefined ? 0 : Number(sleep[1]);
    if (sleep !== undefined) expect(sleep).toEqual(["sleep", String(merged.preStopSleepSeconds)]);
    expect(sleepSeconds).toBe(merged.preStopSleepSeconds);
    expect((pod.terminationGracePeriodSeconds ?? 30) * 1000).toBeGreaterThan(sleepSeconds * 1000 + loadShutdownGrace(chart));
  });

  it("selects the mirror pods (and only them) from the Service, the PodDisruptionBudget and the ServiceMonitor", () => {
    const service = find<IService>(chart, "Service", "registry-mirror");
    expect(selects(sts.spec!.selector.matchLabels, podLabels)).toBe(true);
    expect(selects(service.spec?.selector, podLabels)).toBe(true);
    // The headless Service governs the StatefulSet (per-pod DNS names); a Deployment has no use for one.
    const headless = all<IService>(chart, "Service", "-headless");
    if (kind === "StatefulSet") expect(sts.spec?.serviceName).toBe(headless[0]?.metadata?.name);
    else expect(headless).toEqual([]);
    expect(service.spec?.ports).toContainEqual(expect.objectContaining({ name: "http", port: merged.service.port, targetPort: "http" }));
    if (daemonSet) expect(selects(service.spec?.selector, daemonSet.spec?.template.metadata?.labels)).toBe(false);
    const pdb = all<IPodDisruptionBudget>(chart, "PodDisruptionBudget")[0];
    expect(pdb !== undefined).toBe(merged.podDisruptionBudget.enabled);
    if (pdb) expect(selects(pdb.spec?.selector?.matchLabels, podLabels)).toBe(true);
    const monitor = all<IServiceMonitor>(chart, "ServiceMonitor")[0];
    expect(monitor !== undefined).toBe(merged.serviceMonitor.enabled);
    if (monitor) {
      // Exactly one Service (not the headless one too, which would double every series).
      const matched = all<IService>(chart, "Service").filter((s) => selects(monitor.spec.selector.matchLabels, s.metadata?.labels));
      expect(matched.map((s) => s.metadata?.name)).toEqual([service.metadata?.name]);
      expect(monitor.spec.endpoints).toContainEqual(expect.objectContaining({ port: "http", path: "/metrics", scheme: merged.config.tls ? "https" : "http" }));
      for (const [k, v] of Object.entries(merged.serviceMonitor.labels)) expect(monitor.metadata?.labels?.[k]).toBe(v);
    }
  });

  it("ships the Grafana dashboard for the sidecar when enabled", () => {
    const dashboard = all<IConfigMap>(chart, "ConfigMap", "-dashboard")[0];
    expect(dashboard !== undefined).toBe(merged.grafanaDashboard.enabled);
    if (dashboard) {
      expect(dashboard.metadata?.labels?.grafana_dashboard).toBe("1");
      const shipped = JSON.parse(dashboard.data?.["registry-mirror.json"] ?? "") as unknown;
      expect(shipped).toEqual(JSON.parse(readFileSync(join(ROOT, "grafana", "registry-mirror.json"), "utf8")));
    }
  });

  it("writes containerd hosts files from a DaemonSet only when enabled, into the configured host path", () => {
    expect(daemonSet !== undefined).toBe(merged.containerdHosts.enabled);
    if (!daemonSet) return;
    const spec = daemonSet.spec!.template.spec!;
    const writer = spec.containers[0]!;
    const hostVolume = spec.volumes?.find((v) => v.hostPath !== undefined);
    expect(hostVolume?.hostPath).toEqual({ path: merged.containerdHosts.hostPath, type: "DirectoryOrCreate" });
    const env = Object.fromEntries((writer.env ?? []).map((e) => [e.name, e.value]));
    expect(env.HOSTS_TOML_CERTS_DIR).toBe(writer.volumeMounts?.find((m) => m.name === hostVolume?.name)?.mountPath);
    expect(env.HOSTS_TOML_SERVICE_HOST).toBe(`${String(find<IService>(chart, "Service", "registry-mirror").metadata?.name)}.registry.svc`);
    expect(env.HOSTS_TOML_MIRROR_URL).toBe(merged.containerdHosts.mirrorUrl);
    // The files it may rewrite or delete are this release's: the owner names namespace and release.
    expect(env.HOSTS_TOML_OWNER).toBe("registry/mirror-registry-mirror");
    expect(env.HOSTS_TOML_REMOVE_ALL).toBe(String(merged.containerdHosts.removeFiles));
    expect(writer.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } });
    // The script the DaemonSet runs is the chart's file, byte for byte.
    const scripts = find<IConfigMap>(chart, "ConfigMap", "-containerd-hosts");
    expect(scripts.data?.["containerd-hosts.mjs"]).toBe(readFileSync(join(CHART, "files", "containerd-hosts.mjs"), "utf8"));
  });

  it("rolls the pods when the configuration changes: checksum/config is the SHA-256 of the ConfigMap's config.yaml", () => {
    // The ConfigMap holds the config as a `|` block, which adds the one newline the hashed text lacks.
    const text = configFile(chart);
    expect(text.endsWith("\n")).toBe(true);
    const sum = createHash("sha256").update(text.slice(0, -1)).digest("hex");
    expect(sts.spec!.template.metadata?.annotations?.["checksum/config"]).toBe(sum);
    if (daemonSet) expect(daemonSet.spec?.template.metadata?.annotations?.["checksum/config"]).toBe(sum);
  });

  it("renders its NOTES", () => {
    expect(chart.notes).toContain(`http://mirror-registry-mirror.registry.svc:${String(merged.service.port)}`);
    if (name === "values.yaml") expect(chart.notes).toContain("containerdHosts.enabled=true");
  });
});

/** config.shutdownGrace as the mirror parses it, in milliseconds. */
function loadShutdownGrace(chart: RenderedChart): number {
  return configSchema.shape.shutdownGrace.parse((parseYaml11(configFile(chart)) as { shutdownGrace?: unknown }).shutdownGrace);
}

describe("the chart's copy of the Grafana dashboard", () => {
  it("is identical to grafana/registry-mirror.json (Helm packages only files inside the chart)", async () => {
    const original = await readFile(join(ROOT, "grafana", "registry-mirror.json"), "utf8");
    const copy = await readFile(join(CHART, "dashboards", "registry-mirror.json"), "utf8");
    expect(copy, "run: cp grafana/registry-mirror.json helm/dashboards/registry-mirror.json").toBe(original);
  });
});
