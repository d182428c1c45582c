import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { ConfigError, loadConfig, longDurationWarnings, parseConfig } from "../../../src/config/load.ts";
import { configSchema } from "../../../src/config/schema.ts";
import { MAX_TIMER_MS } from "../../../src/config/timer-delay.ts";

async function yamlFile(text: string): Promise<string> {
  const file = join(await mkdtemp(join(tmpdir(), "cfg-")), "mirror.yaml");
  await writeFile(file, text);
  return file;
}

describe("configuration", () => {
  it("has embedded defaults: port 5000, ./data, Docker Hub as default upstream with library/ names", () => {
    const config = loadConfig({ env: {}, cwd: "/srv/mirror" });
    expect(config.listen).toBe("0.0.0.0:5000");
    expect(config.storage.path).toBe("/srv/mirror/data"); // ./data of the working directory
    expect(config.redis).toBeUndefined();
    const hub = config.upstreams["docker.io"]!;
    expect(hub).toMatchObject({
      url: "https://registry-1.docker.io",
      default: true,
      libraryPrefix: "library",
      tagTtl: 300_000,
    });
    expect(Object.isFrozen(config) && Object.isFrozen(hub)).toBe(true);
  });

  it("accepts the documented shape from a YAML file", async () => {
    const file = await yamlFile(`
listen: "0.0.0.0:5000"
storage: { path: ./data }
redis: { url: redis://127.0.0.1:6379 }
upstreams:
  docker.io:
    url: https://registry-1.docker.io
    default: true
    aliases: [registry-1.docker.io, index.docker.io]
    tagTtl: 5m
  ghcr.io:
    url: https://ghcr.io
`);
    const config = loadConfig({ file, env: {} });
    expect(config.redis?.url).toBe("redis://127.0.0.1:6379");
    expect(Object.keys(config.upstreams)).toEqual(["docker.io", "ghcr.io"]);
    expect(config.upstreams["docker.io"]!.libraryPrefix).toBe("library");
    expect(config.upstreams["ghcr.io"]).toMatchObject({
      default: false,
      libraryPrefix: null,
      tagTtl: 300_000,
      aliases: [],
    });
  });

  it("gives well-known registries the hosts they redirect blob downloads to, unless an upstream lists its own", () => {
    const config = parseConfig({
      upstreams: {
        "docker.io": { url: "https://registry-1.docker.io", default: true },
        "ghcr.io": { url: "https://ghcr.io" },
        "quay.io": { url: "https://quay.io" },
        "registry.k8s.io": { url: "https://registry.k8s.io" },
        "gcr.io": { url: "https://gcr.io" },
        "own.example": { url: "https://registry.example", redirectHosts: ["*.cloudfront.net", "minio.example:9000"] },
        "ghcr-own": { url: "https://ghcr.io", redirectHosts: [] },
      },
    });
    const redirectHosts = (name: string) => config.upstreams[name]!.redirectHosts;
    expect(redirectHosts("docker.io")).toContain("production.cloudflare.docker.com");
    expect(redirectHosts("ghcr.io")).toEqual(["pkg-containers.githubusercontent.com"]);
    expect(redirectHosts("quay.io")).toContain("cdn*.quay.io");
    expect(redirectHosts("registry.k8s.io")).toContain("*.pkg.dev");
    expect(redirectHosts("gcr.io")).toContain("storage.googleapis.com");
    expect(redirectHosts("own.example")).toEqual(["*.cloudfront.net", "minio.example:9000"]);
    expect(redirectHosts("ghcr-own")).toEqual([]);
    expect(config.upstreams["docker.io"]!.allowPrivateRedirects).toBe(false);
  });

  it("rejects redirectHosts patterns that are no hosts or that would match any host", () => {
    let problems: readonly string[] = [];
    try {
      parseConfig({
        upstreams: {
          a: { url: "https://a.example", redirectHosts: ["cdn.*", "**", "https://cdn.example", "ok.example"] },
        },
      });
      expect.unreachable();
    } catch (err) {
      problems = (err as ConfigError).problems;
    }
    expect(problems).toEqual([
      expect.stringMatching(/^upstreams\.a\.redirectHosts\.0: the last label of a host pattern must be literal/),
      expect.stringMatching(/^upstreams\.a\.redirectHosts\.1: the last label of a host pattern must be literal/),
      expect.stringMatching(/^upstreams\.a\.redirectHosts\.2: expected a lower-case host pattern/),
    ]);
  });

  it("reads MIRROR_CONFIG and applies MIRROR_* overrides by path", async () => {
    const file = await yamlFile("upstreams:\n  ghcr.io:\n    url: https://ghcr.io\n");
    const config = loadConfig({
      env: {
        MIRROR_CONFIG: file,
        MIRROR_LISTEN: "127.0.0.1:6000",
        MIRROR_UPSTREAMS__GHCR_IO__TAG_TTL: "1h",
        MIRROR_UPSTREAMS__GHCR_IO__DEFAULT: "true",
      },
    });
    expect(config.listen).toBe("127.0.0.1:6000");
    expect(config.upstreams["ghcr.io"]).toMatchObject({ tagTtl: 3_600_000, default: true });
  });

  it("lets an override change one field of a default-valued section", () => {
    const config = loadConfig({
      env: { MIRROR_UPSTREAMS__DOCKER_IO__TAG_TTL: "10m", MIRROR_STORAGE__PATH: "/srv/cache" },
    });
    expect(config.upstreams["docker.io"]!.tagTtl).toBe(600_000);
    expect(config.upstreams["docker.io"]!.url).toBe("https://registry-1.docker.io");
    expect(config.storage.path).toBe("/srv/cache");
  });

  it("applies a section's variable before its fields' variables, whatever order the environment lists them in", () => {
    const fields = { MIRROR_STORAGE__PATH: "/srv/cache", MIRROR_UPSTREAMS__DOCKER_IO__TAG_TTL: "10m" };
    const sections = {
      MIRROR_STORAGE: "{path: /srv/other, maxSize: 1GiB}",
      MIRROR_UPSTREAMS__DOCKER_IO: "{url: https://mirror.gcr.io, default: true}",
    };
    for (const env of [
      { ...fields, ...sections },
      { ...sections, ...fields },
    ]) {
      const config = loadConfig({ env });
      // The field's value wins over the section's, and the section's other fields stay.
      expect(config.storage).toMatchObject({ path: "/srv/cache", maxSize: 2 ** 30 });
      expect(config.upstreams["docker.io"]).toMatchObject({ url: "https://mirror.gcr.io", tagTtl: 600_000 });
    }
  });

  it("passes values of string-only keys verbatim, even when they would parse as YAML", () => {
    const config = loadConfig({
      env: {
        MIRROR_REDIS__URL: "redis://127.0.0.1:6379",
        MIRROR_REDIS__KEY_PREFIX: "mirror:",
        MIRROR_STORAGE__PATH: "[not-a-list]",
      },
      cwd: "/srv",
    });
    expect(config.redis?.keyPrefix).toBe("mirror:");
    expect(config.storage.path).toBe("/srv/[not-a-list]");
  });

  it("rejects unknown keys and reports every problem at once", async () => {
    const file = await yamlFile(`
listen: nowhere
storage: { path: ./data, colour: blue }
upstreams:
  a: { url: "ftp://a.example/x", default: true }
  b: { url: "http://b.example", default: true, tagTtl: soon }
`);
    let problems: readonly string[] = [];
    try {
      loadConfig({ file, env: { MIRROR_NOPE: "1" } });
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      problems = (err as ConfigError).problems;
    }
    const text = problems.join("\n");
    expect(text).toMatch(/MIRROR_NOPE/);
    expect(text).toMatch(/^listen:/m);
    expect(text).toMatch(/storage: Unrecognized key: "colour"/);
    expect(text).toMatch(/upstreams\.a\.url: "ftp:\/\/a\.example\/x" is not an http:\/\/ or https:\/\/ URL$/m);
    expect(text).toMatch(/upstreams\.b\.tagTtl: invalid duration "soon"/);
    expect(text).toMatch(/only one upstream may be default/);
    expect(problems.length).toBeGreaterThanOrEqual(6);
  });

  it("refuses an alias claimed by two upstreams and a manifest cap under 4 MiB", () => {
    expect(() =>
      parseConfig({
        upstreams: {
          a: { url: "http://a.example", aliases: ["x.io"] },
          b: { url: "http://b.example", aliases: ["x.io"] },
        },
      }),
    ).toThrow(/x\.io already names upstream a/);
    expect(() => parseConfig({ limits: { manifestMaxBytes: 1024 } })).toThrow(/limits\.manifestMaxBytes/);
  });

  it("takes trustedProxies as addresses and CIDR ranges, none by default, and refuses anything else", () => {
    expect(parseConfig({}).trustedProxies).toEqual([]);
    const list = ["10.0.0.0/8", "192.0.2.7", "fd00::/8", "::1"];
    expect(parseConfig({ trustedProxies: list }).trustedProxies).toEqual(list);
    for (const bad of ["10.0.0.0/33", "fd00::/129", "proxy.internal", "10.0.0.0/8/1", "10.0.0.0/x", "*"]) {
      expect(() => parseConfig({ trustedProxies: [bad] }), bad).toThrow(
        /trustedProxies\.0: expected an IP address or a CIDR range/,
      );
    }
  });

  it("reads `cluster` only beside `redis`, with exactly one secret and an advertised origin", () => {
    const redis = { url: "redis://127.0.0.1:6379" };
    const cluster = { advertiseUrl: "http://10.0.0.12:5000", secret: "s".repeat(16) };
    const config = parseConfig({ redis, cluster });
    expect(config.cluster).toEqual({ ...cluster, leaseTtl: 15_000 });
    expect(problemsOf({ cluster })).toEqual(["cluster: replicas share downloads through Redis: set redis.url too"]);
    expect(problemsOf({ redis, cluster: { advertiseUrl: cluster.advertiseUrl } }).join("\n")).toMatch(
      /set exactly one of secret, secretFile/,
    );
    expect(problemsOf({ redis, cluster: { ...cluster, secret: "short" } }).join("\n")).toMatch(/at least 16/);
    for (const url of ["10.0.0.12:5000", "ftp://10.0.0.12", "http://10.0.0.12:5000/mirror"])
      expect(problemsOf({ redis, cluster: { ...cluster, advertiseUrl: url } }), url).toHaveLength(1);
  });

  it("reports a YAML syntax error with the file name", async () => {
    const file = await yamlFile("listen: [unclosed\n");
    expect(() => loadConfig({ file, env: {} })).toThrow(new RegExp(file.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")));
  });
});

/** The problems a configuration is refused with (none: accepted). */
function problemsOf(input: unknown): readonly string[] {
  try {
    parseConfig(input);
    return [];
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.problems;
  }
}

function unwrap(schema: z.ZodType): z.ZodType {
  let s = schema;
  while (
    s instanceof z.ZodDefault ||
    s instanceof z.ZodOptional ||
    s instanceof z.ZodNullable ||
    s instanceof z.ZodPrefault
  )
    s = s.unwrap() as z.ZodType;
  return s;
}

/** Every duration key of the schema (a number-or-string input that reads "1s" as 1000), with `u.example` for an upstream's name. */
function durationKeys(schema: z.ZodType = configSchema, path: string[] = []): string[][] {
  const inner = unwrap(schema);
  if (inner instanceof z.ZodObject)
    return Object.entries(inner.shape as Record<string, z.ZodType>).flatMap(([key, child]) =>
      durationKeys(child, [...path, key]),
    );
  if (inner instanceof z.ZodRecord) return durationKeys(inner.valueType as z.ZodType, [...path, "u.example"]);
  return inner instanceof z.ZodPipe && inner.in instanceof z.ZodUnion && inner.safeParse("1s").data === 1000
    ? [path]
    : [];
}

/** A valid configuration with `value` at `path` (sections that need a field get it). */
function withValue(path: string[], value: unknown): Record<string, unknown> {
  const input: Record<string, unknown> = {
    redis: { url: "redis://127.0.0.1:6379" },
    upstreams: { "u.example": { url: "https://u.example" } },
    ...(path[0] === "storage" && path[1] === "s3" ? { storage: { s3: { bucket: "mirror" } } } : {}),
  };
  let target = input;
  for (const key of path.slice(0, -1)) target = (target[key] ??= {}) as Record<string, unknown>;
  target[path.at(-1)!] = value;
  return input;
}

/** The value at `path` of a parsed configuration. */
function valueAt(config: unknown, path: string[]): unknown {
  return path.reduce<unknown>((node, key) => (node as Record<string, unknown>)[key], config);
}

describe("durations", () => {
  const keys = durationKeys();
  /** The keys where 0 means off; configuration.md says what 0 does for each. */
  const ZERO_MEANS_OFF = ["upstreams.u.example.tagTtl", "upstreams.u.example.negativeTtl", "shutdownGrace"];
  /** The keys only compared with elapsed time, never a timer delay: honoured at any length. */
  const AGES = [
    "upstreams.u.example.tagTtl",
    "upstreams.u.example.negativeTtl",
    "upstreams.u.example.health.initialBackoff",
    "upstreams.u.example.health.maxBackoff",
    "limits.headersTimeout",
    "storage.maxIdle",
  ];
  const DAY = 86_400_000;

  it("finds the schema's duration keys", () => {
    expect(keys.map((k) => k.join("."))).toEqual(
      expect.arrayContaining([
        "fill.timeout",
        "storage.checkInterval",
        "shutdownGrace",
        "upstreams.u.example.timeouts.headers",
        ...AGES,
      ]),
    );
  });

  it("accepts, at every duration key, a value longer than a timer can wait, and keeps it as written", () => {
    for (const key of keys) {
      const name = key.join(".");
      expect(problemsOf(withValue(key, "25d")), name).toEqual([]);
      expect(valueAt(parseConfig(withValue(key, "25d")), key), name).toBe(25 * DAY);
      expect(valueAt(parseConfig(withValue(key, MAX_TIMER_MS + 1)), key), name).toBe(MAX_TIMER_MS + 1);
      expect(valueAt(parseConfig(withValue(key, "100y")), key), name).toBe(100 * 365.25 * DAY);
    }
  });

  it("refuses, at every duration key, more than 100 years, naming the key", () => {
    for (const key of keys) {
      const name = key.join(".");
      const range = `from ${["storage.checkInterval", "console.historyInterval"].includes(name) ? "1s" : "1ms"} up to 100 years${ZERO_MEANS_OFF.includes(name) ? ", or 0 for off" : ""}`;
      expect(problemsOf(withValue(key, "101y")), name).toEqual([
        `${name}: duration "101y" (${101 * 365.25 * DAY} ms) is out of range: ${range}`,
      ]);
    }
  });

  it("accepts 0 only where it means off, and the docs say what it turns off", () => {
    const docs = readFileSync(new URL("../../../docs/configuration.md", import.meta.url), "utf8");
    for (const key of keys) {
      const name = key.join(".");
      const problems = problemsOf(withValue(key, 0));
      if (ZERO_MEANS_OFF.includes(name)) {
        expect(problems, name).toEqual([]);
        const row = docs.split("\n").find((line) => line.startsWith(`| \`${name.replace("u.example", "<name>")}\``));
        expect(row, `the docs row of ${name}`).toMatch(/`0`/);
      } else {
        expect(problems.join("\n"), name).toMatch(
          new RegExp(`^${name.replace(/\./g, "\\.")}: duration 0 ms is out of range`),
        );
      }
    }
  });

  it("derives an upstream's overall deadline from its other timeouts unless it sets one", () => {
    const derived = parseConfig({
      upstreams: { u: { url: "http://127.0.0.1:1", timeouts: { headers: "1s", bodyIdle: "1s" } } },
    });
    expect(derived.upstreams.u!.timeouts.total).toBe(3_000);
    expect(parseConfig({}).upstreams["docker.io"]!.timeouts.total).toBe(150_000);
    const set = parseConfig({
      upstreams: { u: { url: "http://127.0.0.1:1", timeouts: { headers: "1s", total: "10m" } } },
    });
    expect(set.upstreams.u!.timeouts.total).toBe(600_000);
  });

  it("rounds a fraction of a millisecond before the range check", () => {
    expect(parseConfig({ fill: { timeout: "1.5ms" } }).fill.timeout).toBe(2);
    expect(problemsOf({ fill: { timeout: "0.4ms" } })).toEqual([
      'fill.timeout: duration "0.4ms" (0 ms) is out of range: from 1ms up to 100 years',
    ]);
    expect(parseConfig({ fill: { timeout: "24d" } }).fill.timeout).toBe(24 * DAY);
  });

  it("warns about each timer duration longer than the longest timer, naming the key, the value and what it waits", () => {
    expect(longDurationWarnings(parseConfig({ fill: { timeout: "25d" }, storage: { checkInterval: "30d" } }))).toEqual([
      {
        key: "storage.checkInterval",
        ms: 30 * DAY,
        message:
          "storage.checkInterval 30d (2592000000 ms) is longer than the longest timer Node can set (24.8 days): it is used as 24.8 days",
      },
      {
        key: "fill.timeout",
        ms: 25 * DAY,
        message:
          "fill.timeout 25d (2160000000 ms) is longer than the longest timer Node can set (24.8 days): it is used as 24.8 days",
      },
    ]);
    expect(longDurationWarnings(parseConfig({}))).toEqual([]);
  });

  it("warns at every duration key that is a timer, and at none that is an age", () => {
    for (const key of keys) {
      const name = key.join(".");
      // An upstream's overall deadline, when not set, is derived from its headers and bodyIdle timeouts: warned too.
      const derived = /\.timeouts\.(headers|bodyIdle)$/.test(name) ? ["upstreams.u.example.timeouts.total"] : [];
      const warned = longDurationWarnings(parseConfig(withValue(key, "25d"))).map((w) => w.key);
      expect(warned.sort(), name).toEqual(AGES.includes(name) ? [] : [name, ...derived].sort());
      expect(
        longDurationWarnings(parseConfig(withValue(key, MAX_TIMER_MS))).filter((w) => !derived.includes(w.key)),
        name,
      ).toEqual([]);
    }
  });
});

describe("sizes, ports and environment names", () => {
  it("refuses a size that is 0 bytes once rounded down, or too large to count, naming the key", () => {
    expect(parseConfig({ storage: { maxSize: "1.5KiB" } }).storage.maxSize).toBe(1536);
    expect(problemsOf({ storage: { maxSize: "0.5" } })).toEqual([
      'storage.maxSize: size "0.5" is 0 bytes once rounded down to whole bytes: at least 1 byte',
    ]);
    expect(problemsOf({ storage: { maxSize: "0.0001KB" } })).toEqual([
      'storage.maxSize: size "0.0001KB" is 0 bytes once rounded down to whole bytes: at least 1 byte',
    ]);
    expect(problemsOf({ storage: { maxSize: "99999999TiB" } })).toEqual([
      `storage.maxSize: size "99999999TiB" is more than ${Number.MAX_SAFE_INTEGER} bytes`,
    ]);
    expect(problemsOf({ storage: { maxSize: 0 } }).join("\n")).toMatch(/^storage\.maxSize: /);
  });

  it("refuses a port over 65535 wherever the config takes one, naming the key; listen port 0 means any free port", () => {
    expect(problemsOf({ listen: "0.0.0.0:99999" })).toEqual(["listen: the port must be 0 to 65535 (0: any free port)"]);
    expect(problemsOf({ metrics: { listen: "127.0.0.1:65536" } })).toEqual([
      "metrics.listen: the port must be 0 to 65535 (0: any free port)",
    ]);
    expect(parseConfig({ listen: "127.0.0.1:0", metrics: { listen: "[::1]:65535" } }).listen).toBe("127.0.0.1:0");
    const upstream = { url: "https://r.example" };
    expect(problemsOf({ upstreams: { "r.example:70000": upstream } }).join("\n")).toMatch(
      /^upstreams\.r\.example:70000: /,
    );
    expect(problemsOf({ upstreams: { "r.example": { ...upstream, aliases: ["r.example:0"] } } })).toEqual([
      "upstreams.r.example.aliases.0: the port must be 1 to 65535",
    ]);
    expect(parseConfig({ upstreams: { "r.example:5000": upstream } }).upstreams["r.example:5000"]).toBeDefined();
  });

  it("reports an upstream url that does not parse as a configuration problem, with the others", () => {
    expect(problemsOf({ listen: "x", upstreams: { a: { url: "not a url" } } })).toEqual([
      "listen: expected host:port, e.g. 0.0.0.0:5000 or [::1]:5000",
      'upstreams.a.url: "not a url" is not an http:// or https:// URL',
    ]);
  });

  it("reports each upstream url that is no http(s) origin in one line, suggesting the origin a bare host meant", () => {
    const cases: Array<[string, string]> = [
      ["ghcr.io", '"ghcr.io" is not an http:// or https:// URL (did you mean https://ghcr.io?)'],
      ["ghcr.io:443", '"ghcr.io:443" is not an http:// or https:// URL (did you mean https://ghcr.io:443?)'],
      ["localhost:5000", '"localhost:5000" is not an http:// or https:// URL (did you mean https://localhost:5000?)'],
      ["http:ghcr.io", '"http:ghcr.io" is not an http:// or https:// URL'],
      ["http://", '"http://" is not an http:// or https:// URL'],
      ["", '"" is not an http:// or https:// URL'],
      [
        "https://ghcr.io/v2/",
        '"https://ghcr.io/v2/" must be an origin, e.g. https://ghcr.io (no path, query or fragment)',
      ],
      [
        "https://ghcr.io?x=1",
        '"https://ghcr.io?x=1" must be an origin, e.g. https://ghcr.io (no path, query or fragment)',
      ],
    ];
    for (const [url, message] of cases)
      expect(problemsOf({ upstreams: { a: { url }, b: { url: "https://b.example", bogus: 1 } } }), url).toEqual([
        `upstreams.a.url: ${message}`,
        'upstreams.b: Unrecognized key: "bogus"',
      ]);
    expect(parseConfig({ upstreams: { a: { url: "https://ghcr.io/" } } }).upstreams.a!.url).toBe("https://ghcr.io/");
  });

  it("never throws from inside the schema, whatever the url key holds", () => {
    for (const url of ["%", "http://[::1", "http://a b", "\u0000", "://", "https://", "x:", 5, null, [], {}])
      expect(() => configSchema.safeParse({ upstreams: { a: { url } } }), JSON.stringify(url)).not.toThrow();
  });

  it("refuses an environment override whose segment names two upstreams, applying it to neither", async () => {
    const file = await yamlFile(
      "upstreams:\n  registry-a.example.com:\n    url: https://a.example.com\n  registry.a.example.com:\n    url: https://b.example.com\n",
    );
    const env = { MIRROR_UPSTREAMS__REGISTRY_A_EXAMPLE_COM__OFFLINE: "true" };
    expect(() => loadConfig({ file, env })).toThrow(
      "MIRROR_UPSTREAMS__REGISTRY_A_EXAMPLE_COM__OFFLINE: REGISTRY_A_EXAMPLE_COM is ambiguous: it names registry-a.example.com and registry.a.example.com; set the value in the file instead",
    );
    // One upstream of that name alone: the override applies.
    const single = await yamlFile("upstreams:\n  registry-a.example.com:\n    url: https://a.example.com\n");
    expect(loadConfig({ file: single, env }).upstreams["registry-a.example.com"]!.offline).toBe(true);
  });
});

describe("paths", () => {
  it("reads a relative path in a config file from the file's directory, every other one from the working directory", async () => {
    const dir = await mkdtemp(join(tmpdir(), "cfg-paths-"));
    await mkdir(join(dir, "conf"));
    const file = join(dir, "conf", "mirror.yaml");
    await writeFile(
      file,
      `storage: { path: cache }
tls: { certFile: tls/cert.pem, keyFile: /etc/mirror/key.pem }
admin: { tokenFile: ../secrets/admin }
access:
  anonymous: false
  htpasswdFile: htpasswd
  tokens: [{ name: ci, tokenFile: ci-token }]
upstreams:
  ghcr.io:
    url: https://ghcr.io
    credentials: { usernameFile: user, passwordFile: ./pass }
    tls: { caFile: ca.pem }
`,
    );
    // The file named relative to the working directory, as `--config conf/mirror.yaml` from `dir`.
    const config = loadConfig({ file: "conf/mirror.yaml", cwd: dir, env: {} });
    const conf = join(dir, "conf");
    expect(config.storage.path).toBe(join(conf, "cache"));
    expect(config.tls).toEqual({ certFile: join(conf, "tls/cert.pem"), keyFile: "/etc/mirror/key.pem" });
    expect(config.admin.tokenFile).toBe(join(dir, "secrets/admin"));
    expect(config.access?.htpasswdFile).toBe(join(conf, "htpasswd"));
    expect(config.access?.tokens[0]?.tokenFile).toBe(join(conf, "ci-token"));
    const ghcr = config.upstreams["ghcr.io"]!;
    expect(ghcr.credentials).toEqual({ usernameFile: join(conf, "user"), passwordFile: join(conf, "pass") });
    expect(ghcr.tls.caFile).toBe(join(conf, "ca.pem"));
    // An environment override is the working directory's, even over a key the file set.
    const overridden = loadConfig({ file, cwd: "/srv", env: { MIRROR_STORAGE__PATH: "other" } });
    expect(overridden.storage.path).toBe("/srv/other");
    // A file without storage.path: the default ./data is the working directory's (the image runs in /).
    await writeFile(file, "listen: 127.0.0.1:5000\n");
    expect(loadConfig({ file, cwd: "/", env: {} }).storage.path).toBe("/data");
  });

  it("names the flag or variable and the absolute path of a config file it cannot read, in one line", async () => {
    const dir = await mkdtemp(join(tmpdir(), "cfg-missing-"));
    const problemsWith = (opts: Parameters<typeof loadConfig>[0]) => {
      try {
        loadConfig(opts);
        return [];
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return (err as ConfigError).problems;
      }
    };
    expect(problemsWith({ file: "mirror.yaml", cwd: dir, env: {} })).toEqual([
      `--config ${join(dir, "mirror.yaml")}: no such file or directory`,
    ]);
    expect(problemsWith({ cwd: dir, env: { MIRROR_CONFIG: "conf.yaml" } })).toEqual([
      `MIRROR_CONFIG ${join(dir, "conf.yaml")}: no such file or directory`,
    ]);
    expect(problemsWith({ file: dir, env: {} })).toEqual([`--config ${dir}: is a directory, not a file`]);
    await writeFile(join(dir, "broken.yaml"), "upstreams: [\n  a: b\n");
    const [broken, ...rest] = problemsWith({ file: join(dir, "broken.yaml"), env: {} });
    expect(rest).toEqual([]);
    expect(broken).toMatch(new RegExp(`^--config ${join(dir, "broken.yaml")}: .+`));
    expect(broken).not.toContain("\n");
  });
});
