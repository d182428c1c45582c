/**
 * Loads the configuration: defaults (schema) ← YAML file (`--config FILE` or `MIRROR_CONFIG`) ← `MIRROR_*`
 * environment overrides. Every problem, from every source, is collected and reported in one `ConfigError`.
 *
 * Environment overrides address any key by its path: segments are separated by `__`, and a segment matches a key
 * written in upper snake case with every non-alphanumeric character as `_` (a segment that matches two keys, as
 * two upstream names differing only in `-` and `.` do, is an error). Values are parsed as YAML scalars or flow
 * collections, so `true`, `8080`, `5m` and `[a, b]` all work:
 *   MIRROR_LISTEN=127.0.0.1:5001
 *   MIRROR_STORAGE__PATH=/var/cache/mirror
 *   MIRROR_UPSTREAMS__DOCKER_IO__TAG_TTL=10m
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, resolve } from "node:path";
import ms from "ms";
import type * as Yaml from "yaml";
import { z } from "zod";
import {
  configSchema,
  crossUpstreamProblems,
  durationUseOf,
  isFilePath,
  UPSTREAM_PRESETS,
  type Config,
  type UpstreamConfig,
} from "./schema.ts";
import { ruleProblems } from "./cache-rules.ts";
import { fileErrorText } from "./file-checks.ts";
import { MAX_TIMER_MS } from "./timer-delay.ts";
import { UpstreamResolver } from "./upstream-resolver.ts";
import { inlineWarmupProblems, warmupNameProblems } from "./warmup-list.ts";
import { fallbackProblems } from "./upstream-fallbacks.ts";
import { errorMessage } from "../caught-errors.ts";

const require = createRequire(import.meta.url);

/**
 * The YAML parser is loaded when there is a file to parse, not before: a mirror configured by defaults and
 * `MIRROR_*` variables alone (scripts/start.sh and the image without --config) never needs it, and it is ~70
 * modules, ~25 ms of CPU at start-up (test/integration/lazy-loading.test.ts). Required, not imported: loadConfig
 * stays synchronous, and `import` would give the same CommonJS build (the package's `node` export).
 */
function parseYaml(text: string): unknown {
  return (require("yaml") as typeof Yaml).parse(text);
}

export class ConfigError extends Error {
  readonly problems: readonly string[];
  constructor(problems: string[]) {
    super(`invalid configuration:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
    this.name = "ConfigError";
    this.problems = problems;
  }
}

export interface LoadOptions {
  /** Path of a YAML file (`--config`); when absent `env.MIRROR_CONFIG` is used, and when that is absent too, defaults only. */
  file?: string | undefined;
  env?: NodeJS.ProcessEnv;
  /** What relative paths (the file's name, environment values, defaults) are relative to: the working directory. */
  cwd?: string;
}

/**
 * Paths: the file's name, and paths given by `MIRROR_*` variables or defaults, are relative to the working
 * directory; a relative path written in the file is relative to the file's directory. The configuration that
 * results holds absolute paths only (filePath in schema.ts marks the keys).
 */
export function loadConfig(opts: LoadOptions = {}): Config {
  const env = opts.env ?? process.env;
  const cwd = opts.cwd ?? process.cwd();
  const problems: string[] = [];
  let raw: Record<string, unknown> = {};
  const file = opts.file ?? env.MIRROR_CONFIG;
  if (file !== undefined && file !== "") {
    const label = `${opts.file !== undefined ? "--config" : "MIRROR_CONFIG"} ${resolve(cwd, file)}`;
    let text: string | undefined;
    try {
      text = readFileSync(resolve(cwd, file), "utf8");
    } catch (err) {
      problems.push(`${label}: ${fileErrorText(err)}`);
    }
    if (text !== undefined) {
      try {
        const parsed: unknown = parseYaml(text);
        if (parsed === null || parsed === undefined) raw = {};
        else if (typeof parsed === "object" && !Array.isArray(parsed)) {
          raw = parsed as Record<string, unknown>;
          resolvePaths(configSchema, raw, dirname(resolve(cwd, file)));
        } else problems.push(`${label}: the top level must be a mapping`);
      } catch (err) {
        // The YAML parser's message goes on with a excerpt of the file over several lines: its first line says it.
        problems.push(`${label}: ${errorMessage(err).split("\n")[0]}`);
      }
    }
  }
  applyEnvOverrides(raw, env, problems);
  return finish(raw, problems, cwd);
}

/** Builds a configuration from an in-memory object (tests, embedding), with the same checks as a file. */
export function parseConfig(input: unknown): Config {
  return finish(input, [], process.cwd());
}

function finish(raw: unknown, problems: string[], cwd: string): Config {
  const result = configSchema.safeParse(raw);
  problems.push(...crossUpstreamProblems((raw as { upstreams?: unknown } | null)?.upstreams));
  problems.push(...warmupNameProblems((raw as { warmup?: unknown } | null)?.warmup));
  problems.push(...fallbackProblems((raw as { upstreams?: unknown } | null)?.upstreams));
  problems.push(
    ...ruleProblems((raw as { rules?: unknown } | null)?.rules, (raw as { upstreams?: unknown } | null)?.upstreams),
  );
  let upstreams: Record<string, UpstreamConfig> = {};
  if (result.success) {
    // What the file wrote is already absolute (loadConfig); the rest is the working directory's.
    resolvePaths(configSchema, result.data, cwd);
    // An upstream with credentials behind an open mirror is a door to private images: refuse unless explicit.
    const withCredentials = Object.entries(result.data.upstreams)
      .filter(([, u]) => u.credentials !== undefined)
      .map(([n]) => n);
    if (withCredentials.length > 0 && result.data.access?.anonymous === undefined) {
      problems.push(
        `access.anonymous: upstream ${withCredentials.join(", ")} has credentials, so anonymous access must be decided explicitly: set access.anonymous to false (clients log in) or true (anyone who reaches the mirror pulls with those credentials)`,
      );
    }
    if (result.data.cluster !== undefined && result.data.redis === undefined)
      problems.push("cluster: replicas share downloads through Redis: set redis.url too");
    upstreams = upstreamsOf(result.data);
    // Pins are read as the upstream resolver reads them (aliases, library prefix), so over the finished upstreams.
    const resolver = UpstreamResolver.ofConfig(upstreams);
    for (const pin of result.data.storage.pinned) {
      try {
        resolver.pin(pin);
      } catch (err) {
        problems.push(`storage.pinned: ${errorMessage(err)}`);
      }
    }
    problems.push(...inlineWarmupProblems({ upstreams, warmup: result.data.warmup }));
  }
  if (!result.success) {
    for (const issue of result.error.issues) {
      const path = issue.path.map(String).join(".");
      problems.push(path === "" ? issue.message : `${path}: ${issue.message}`);
    }
  }
  if (problems.length > 0 || !result.success) throw new ConfigError(problems);
  return deepFreeze({ ...result.data, upstreams });
}

/** Each upstream with its name, and what its preset (by URL host) or the global `offline` fills in. */
function upstreamsOf(data: z.output<typeof configSchema>): Record<string, UpstreamConfig> {
  const upstreams: Record<string, UpstreamConfig> = {};
  for (const [name, upstream] of Object.entries(data.upstreams)) {
    const host = new URL(upstream.url).host;
    const preset = UPSTREAM_PRESETS.find((p) => p.hosts.includes(host))?.defaults;
    upstreams[name] = {
      ...upstream,
      name,
      libraryPrefix: upstream.libraryPrefix ?? preset?.libraryPrefix ?? null,
      authHosts: upstream.authHosts ?? preset?.authHosts ?? [],
      redirectHosts: upstream.redirectHosts ?? preset?.redirectHosts ?? [],
      timeouts: {
        ...upstream.timeouts,
        total: upstream.timeouts.total ?? upstream.timeouts.headers + 2 * upstream.timeouts.bodyIdle,
      },
      offline: upstream.offline || data.offline,
    };
  }
  return upstreams;
}

/** A duration the mirror waits for less long than written, for the warning at start-up. */
export interface LongDuration {
  /** The key's path, e.g. `fill.timeout` or `upstreams.docker.io.timeouts.connect`. */
  key: string;
  /** The value as configured, in milliseconds. */
  ms: number;
  message: string;
}

/**
 * The timer durations (schema.ts: `use` "timer") longer than the longest delay a Node.js timer keeps: each waits
 * MAX_TIMER_MS instead (timerDelay), which the operator should hear about once, at start-up. Durations that are
 * only compared with elapsed time (TTLs, back-offs) are honoured at any length and never listed.
 */
export function longDurationWarnings(config: Config): LongDuration[] {
  const found: LongDuration[] = [];
  const longest = `${Math.floor((MAX_TIMER_MS / 86_400_000) * 10) / 10} days`; // 24.8
  const visit = (schema: z.ZodType, value: unknown, path: string[]): void => {
    const inner = unwrapOptional(schema);
    if (durationUseOf(inner) === "timer") {
      if (typeof value === "number" && value > MAX_TIMER_MS) {
        const key = path.join(".");
        found.push({
          key,
          ms: value,
          message: `${key} ${ms(value)} (${value} ms) is longer than the longest timer Node can set (${longest}): it is used as ${longest}`,
        });
      }
    } else if (inner instanceof z.ZodObject && isRecord(value)) {
      for (const [key, child] of Object.entries<z.ZodType>(inner.shape)) visit(child, value[key], [...path, key]);
    } else if (inner instanceof z.ZodRecord && isRecord(value)) {
      for (const [key, child] of Object.entries(value)) visit(inner.valueType as z.ZodType, child, [...path, key]);
    } else if (inner instanceof z.ZodArray && Array.isArray(value)) {
      for (const [i, child] of value.entries()) visit(inner.element as z.ZodType, child, [...path, String(i)]);
    }
  };
  visit(configSchema, config, []);
  return found;
}

/**
 * Makes every relative path (the keys schema.ts marks with filePath) in `value` absolute against `base`, in
 * place. Walks the raw file as well as the parsed result, so it leaves alone anything of the wrong type (the
 * schema reports that).
 */
function resolvePaths(schema: z.ZodType, value: unknown, base: string): void {
  const inner = unwrapOptional(schema);
  if (inner instanceof z.ZodObject && isRecord(value)) {
    for (const [key, child] of Object.entries<z.ZodType>(inner.shape)) {
      const v = value[key];
      if (isFilePath(unwrapOptional(child))) {
        if (typeof v === "string" && v !== "") value[key] = resolve(base, v);
      } else resolvePaths(child, v, base);
    }
  } else if (inner instanceof z.ZodRecord && isRecord(value)) {
    for (const child of Object.values(value)) resolvePaths(inner.valueType as z.ZodType, child, base);
  } else if (inner instanceof z.ZodArray && Array.isArray(value)) {
    for (const child of value) resolvePaths(inner.element as z.ZodType, child, base);
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object";
}

/** Looks through default/optional wrappers only (unwrap below also looks into pipes, where a duration's metadata is not). */
function unwrapOptional(schema: z.ZodType): z.ZodType {
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

/** `tagTtl` → `TAG_TTL`, `docker.io` → `DOCKER_IO`. */
export function envSegment(key: string): string {
  return key
    .replace(/([a-z0-9])([A-Z])/g, "$1_$2")
    .replace(/[^A-Za-z0-9]/g, "_")
    .toUpperCase();
}

function applyEnvOverrides(raw: Record<string, unknown>, env: NodeJS.ProcessEnv, problems: string[]): void {
  // In code-unit order, so that a key's variable comes before its children's (a prefix sorts first): the child's
  // value then overrides that part of the parent's. Not localeCompare: its first use loads ICU's collation data
  // (~25 million instructions and ~2 MiB resident at every start, for a handful of ASCII names).
  const variables = Object.entries(env).filter(([variable]) => variable.startsWith("MIRROR_"));
  for (const [variable, value] of variables.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (variable === "MIRROR_CONFIG" || value === undefined) continue;
    const segments = variable.slice("MIRROR_".length).split("__");
    let schema: z.ZodType | undefined = configSchema;
    let target: Record<string, unknown> = raw;
    for (let i = 0; i < segments.length; i++) {
      const segment = segments[i]!;
      const shape = objectShape(schema);
      const recordValues = recordValueSchema(schema);
      // Keys of a schema object, or the entries already present in a record (upstreams are named by the file).
      const candidates = shape ? Object.keys(shape) : Object.keys(target);
      const matches = candidates.filter((k) => envSegment(k) === segment);
      // `registry-a.example.com` and `registry.a.example.com` are both REGISTRY_A_EXAMPLE_COM: never pick one.
      if (matches.length > 1) {
        problems.push(
          `${variable}: ${segment} is ambiguous: it names ${matches.join(" and ")}; set the value in the file instead`,
        );
        break;
      }
      const key = matches[0];
      if (key === undefined || (!shape && !recordValues)) {
        problems.push(
          `${variable}: ${segment} names no configuration key${shape || recordValues ? ` (known here: ${candidates.map(envSegment).join(", ") || "none"})` : ""}`,
        );
        break;
      }
      if (i === segments.length - 1) {
        // A key that only takes strings gets the value verbatim: as YAML, `mirror:` would be a map.
        const leaf = unwrap(shape ? shape[key] : recordValues);
        target[key] = leaf instanceof z.ZodString ? value : parseEnvValue(value);
        break;
      }
      const childSchema = shape ? shape[key] : recordValues;
      const next = target[key];
      // A key the file left out starts from its schema default, so an override can change one field of it.
      if (next === undefined || next === null) target[key] = structuredClone(defaultOf(childSchema) ?? {});
      else if (typeof next !== "object" || Array.isArray(next)) {
        problems.push(`${variable}: ${key} is not a mapping`);
        break;
      }
      target = target[key] as Record<string, unknown>;
      schema = childSchema;
    }
  }
}

/**
 * A `MIRROR_*` value for a key that takes more than strings, read as YAML: `8080`, `true`, `[a, b]`, `{...}`.
 * The common plain values (a word, a whole number, true/false) are read here, as YAML reads them
 * (test/unit/config/env-values.test.ts checks that against the parser), so that a mirror configured by its
 * environment alone does not load the YAML parser at all; anything else goes to the parser.
 */
export function parseEnvValue(value: string): unknown {
  const plain = plainEnvValue(value);
  if (plain !== undefined) return plain;
  try {
    return parseYaml(value) ?? value;
  } catch {
    return value;
  }
}

/** YAML 1.2's special plain scalars (core schema): null, booleans, .inf and .nan in their spellings. */
const YAML_WORDS = /^(?:~|null|Null|NULL|true|True|TRUE|false|False|FALSE|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$/;

/** A value whose YAML reading is certain without the parser, or undefined. */
function plainEnvValue(value: string): string | number | boolean | undefined {
  if (value === "true") return true;
  if (value === "false") return false;
  // A whole number without a sign or leading zero, of at most 15 digits (a safe integer): YAML's decimal int.
  if (/^(?:0|[1-9][0-9]{0,14})$/.test(value)) return Number(value);
  // A word of letters, digits and _ . / - that starts with a letter and is none of YAML's special scalars.
  if (/^[A-Za-z][A-Za-z0-9_./-]*$/.test(value) && !YAML_WORDS.test(value)) return value;
  return undefined;
}

function defaultOf(schema: z.ZodType | undefined): unknown {
  return schema instanceof z.ZodDefault ? schema.def.defaultValue : undefined;
}

/** Looks through default/optional/pipe wrappers to the object schema underneath, if any. */
function objectShape(schema: z.ZodType | undefined): Record<string, z.ZodType> | undefined {
  const inner = unwrap(schema);
  return inner instanceof z.ZodObject ? inner.shape : undefined;
}

function recordValueSchema(schema: z.ZodType | undefined): z.ZodType | undefined {
  const inner = unwrap(schema);
  return inner instanceof z.ZodRecord ? (inner.valueType as z.ZodType) : undefined;
}

function unwrap(schema: z.ZodType | undefined): z.ZodType | undefined {
  let s = schema;
  for (let i = 0; i < 10 && s !== undefined; i++) {
    if (
      s instanceof z.ZodDefault ||
      s instanceof z.ZodOptional ||
      s instanceof z.ZodNullable ||
      s instanceof z.ZodPrefault
    )
      s = s.unwrap() as z.ZodType;
    else if (s instanceof z.ZodPipe) s = s.in as z.ZodType;
    else break;
  }
  return s;
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
