/**
 * The one configuration schema. Every default lives here; unknown keys are rejected (`strict`) so a typo in a
 * YAML file is an error, not a silently ignored setting. Durations accept `ms` strings ("5m", "30s") or
 * milliseconds; sizes accept bytes.
 */
import ms from "ms";
import { z } from "zod";

const duration = z
  .union([z.number().int().nonnegative(), z.string()])
  .transform((value, ctx) => {
    if (typeof value === "number") return value;
    const parsed = ms(value as ms.StringValue) as number | undefined;
    if (typeof parsed !== "number" || !Number.isFinite(parsed) || parsed < 0) {
      ctx.addIssue({ code: "custom", message: `invalid duration ${JSON.stringify(value)} (examples: 30s, 5m, 1h)` });
      return z.NEVER;
    }
    return parsed;
  });

const listenAddress = z.string().regex(/^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):\d{1,5}$/, "expected host:port, e.g. 0.0.0.0:5000 or [::1]:5000");

/** A registry host as clients name it: what containerd sends as `?ns=` and what path-prefix mirrors use. */
const registryHost = z
  .string()
  .regex(/^[a-z0-9]+(?:[.-][a-z0-9]+)*(?::\d{1,5})?$/, "expected a lower-case registry host such as docker.io or registry.example.com:5000");

const upstreamUrl = z
  .string()
  .url()
  .refine((u) => /^https?:$/.test(new URL(u).protocol), "upstream url must be http:// or https://")
  .refine((u) => ["", "/"].includes(new URL(u).pathname) && new URL(u).search === "", "upstream url must be an origin (no path or query)");

export const upstreamSchema = z
  .object({
    /** The registry's API origin, e.g. https://registry-1.docker.io. The only host this upstream ever contacts. */
    url: upstreamUrl,
    /** Serves plain `/v2/<name>/...` requests (dockerd `registry-mirrors`). At most one upstream may be the default. */
    default: z.boolean().default(false),
    /** Other names clients use for this registry (containerd `?ns=` values, path prefixes). */
    aliases: z.array(registryHost).default([]),
    /** How long a tag → digest pointer is trusted without asking the upstream. */
    tagTtl: duration.default(5 * 60_000),
    /**
     * Prefix for single-component names (`alpine` → `library/alpine`), as Docker Hub needs. When absent it comes
     * from the preset for the upstream's host (see UPSTREAM_PRESETS), otherwise none.
     */
    libraryPrefix: z.string().regex(/^[a-z0-9]+(?:[._-][a-z0-9]+)*$/).nullable().optional(),
    timeouts: z
      .object({
        /** TCP + TLS connection set-up. */
        connect: duration.default(10_000),
        /** From request sent to response headers received. */
        headers: duration.default(30_000),
        /** Longest pause between two body chunks. */
        bodyIdle: duration.default(60_000),
      })
      .strict()
      .prefault({}),
    /** Cap on concurrent connections to this upstream. */
    maxConnections: z.number().int().positive().default(32),
  })
  .strict();

export const configSchema = z
  .object({
    /** Address the registry API listens on. */
    listen: listenAddress.default("0.0.0.0:5000"),
    storage: z
      .object({
        /** Cache directory: blobs, manifests, temp files. */
        path: z.string().min(1).default("./data"),
      })
      .strict()
      .prefault({}),
    /** Shared metadata store for several replicas; absent means the embedded in-process store. */
    redis: z.object({ url: z.string().regex(/^rediss?:\/\//, "expected redis:// or rediss:// URL") }).strict().optional(),
    log: z
      .object({ level: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info") })
      .strict()
      .prefault({}),
    limits: z
      .object({
        /** Largest manifest accepted from an upstream (the spec requires at least 4 MiB). */
        manifestMaxBytes: z.number().int().min(4 * 1024 * 1024).default(8 * 1024 * 1024),
        /** Largest tags/list body passed through from an upstream. */
        tagListMaxBytes: z.number().int().positive().default(4 * 1024 * 1024),
      })
      .strict()
      .prefault({}),
    fill: z
      .object({
        /** A blob download that has not finished after this long is abandoned (nothing is committed). */
        timeout: duration.default(60 * 60_000),
      })
      .strict()
      .prefault({}),
    /** How long a graceful shutdown waits for in-flight fills and responses. */
    shutdownGrace: duration.default(25_000),
    upstreams: z.record(registryHost, upstreamSchema).default({
      "docker.io": {
        url: "https://registry-1.docker.io",
        default: true,
        aliases: ["registry-1.docker.io", "index.docker.io"],
        tagTtl: 5 * 60_000,
        timeouts: { connect: 10_000, headers: 30_000, bodyIdle: 60_000 },
        maxConnections: 32,
      },
    }),
  })
  .strict();

/**
 * Checks across upstreams. They run on the raw input, independently of the schema, so that they are reported
 * together with field errors (a schema refinement would be skipped while any field is invalid).
 */
export function crossUpstreamProblems(rawUpstreams: unknown): string[] {
  if (rawUpstreams === null || typeof rawUpstreams !== "object" || Array.isArray(rawUpstreams)) return [];
  const problems: string[] = [];
  const entries = Object.entries(rawUpstreams as Record<string, unknown>).map(([name, u]) => [name, (u ?? {}) as { default?: unknown; aliases?: unknown }] as const);
  const defaults = entries.filter(([, u]) => u.default === true).map(([name]) => name);
  if (defaults.length > 1) problems.push(`upstreams: only one upstream may be default, got ${defaults.join(", ")}`);
  const owners = new Map<string, string>();
  for (const [name, u] of entries) {
    const aliases = Array.isArray(u.aliases) ? u.aliases.filter((a): a is string => typeof a === "string") : [];
    for (const alias of [name, ...aliases]) {
      const owner = owners.get(alias.toLowerCase());
      if (owner !== undefined && owner !== name) problems.push(`upstreams.${name}.aliases: ${alias} already names upstream ${owner}`);
      owners.set(alias.toLowerCase(), name);
    }
  }
  return problems;
}

/**
 * Per-host defaults, as data: the quirks of well-known registries are configuration, not code branches.
 * Applied to an upstream whose url host is listed, for the keys it does not set itself.
 */
export const UPSTREAM_PRESETS: ReadonlyArray<{ hosts: readonly string[]; defaults: { libraryPrefix: string | null } }> = [
  { hosts: ["registry-1.docker.io", "index.docker.io", "docker.io"], defaults: { libraryPrefix: "library" } },
];

export type ConfigInput = z.input<typeof configSchema>;
type ParsedConfig = z.output<typeof configSchema>;
export type UpstreamConfig = Omit<ParsedConfig["upstreams"][string], "libraryPrefix"> & { name: string; libraryPrefix: string | null };
export type Config = Omit<ParsedConfig, "upstreams"> & { upstreams: Readonly<Record<string, UpstreamConfig>> };
