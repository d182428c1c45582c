/**
 * Per-repository cache rules (`rules:` in the configuration): the one place that says which rule a request
 * falls under. A rule's `match` is `<upstream>/<repository glob>` (the glob as repository-pattern.ts reads it,
 * over the repository name as the upstream knows it: `library/alpine` on Docker Hub); `tags` is an optional
 * regular expression over the tag. The first rule that fits decides, and a request is matched once, against its
 * parsed reference (the handlers do it, before the cache is asked).
 *
 * A rule with `tags` fits only a manifest request by tag: blobs and manifests by digest carry no tag, so they
 * fall under the first rule without `tags` that matches their repository. That is why `cache: false` and
 * `maxIdle`, which are about content, are refused on a rule with `tags` (they would silently cover a tag's
 * manifest and not its layers); `immutable` and `tagTtl` are about tags and fit either kind.
 *
 * The syntax checks are here too, so that the schema (schema.ts) reports each with the rule's index in its
 * path, and `ruleProblems` reports what needs the other fields or the configured upstreams, in the form the
 * config loader lists problems: `rules.2.match: ...`.
 */
import { compilePattern, type RepositoryMatcher } from "../oci/repository-pattern.ts";
import type { Config } from "./schema.ts";
import { errorMessage } from "../caught-errors.ts";

/** What a request's rule asks of the caches; every field absent or default means "as the upstream's config says". */
export interface CacheRule {
  /** The rule's position in `rules`, for logs. */
  readonly index: number;
  /** Overrides the upstream's `tagTtl` (ms). */
  readonly tagTtl: number | undefined;
  /** A cached tag is never revalidated. */
  readonly immutable: boolean;
  /** false: passed through verified, never stored. */
  readonly cache: boolean;
  /** Overrides `storage.maxIdle` (ms) for content served under this rule; 0: never idle-expired. */
  readonly maxIdle: number | undefined;
}

/** Repository names (and therefore globs) use these characters, plus `*`. */
const GLOB = /^[a-z0-9._/*-]+$/;

/** Why `match` cannot be a rule's match, or undefined when it can. */
export function matchProblem(match: string): string | undefined {
  const slash = match.indexOf("/");
  if (slash <= 0 || slash === match.length - 1)
    return `expected "<upstream>/<repository glob>", e.g. "docker.io/library/*", got ${JSON.stringify(match.slice(0, 200))}`;
  const glob = match.slice(slash + 1);
  if (!GLOB.test(glob))
    return `the repository glob ${JSON.stringify(glob.slice(0, 200))} may hold only lower-case letters, digits, . _ - / and * (** across path components)`;
  if (/\*{3,}/.test(glob)) return `the repository glob ${JSON.stringify(glob.slice(0, 200))} has *** (use * or **)`;
  return undefined;
}

/** Why `tags` is not a regular expression, or undefined when it is one. */
export function tagRegexProblem(tags: string): string | undefined {
  try {
    new RegExp(tags);
    return undefined;
  } catch (err) {
    return `not a regular expression: ${errorMessage(err)}`;
  }
}

/**
 * Problems across a rule's fields, and with the upstreams it names, on the raw input (so they are listed
 * together with the schema's, whatever else is wrong). `upstreams` are the raw `upstreams` section; absent, the
 * schema's default (docker.io) is what a rule may name.
 */
export function ruleProblems(rawRules: unknown, rawUpstreams: unknown): string[] {
  if (!Array.isArray(rawRules)) return [];
  const names = upstreamNames(rawUpstreams);
  const problems: string[] = [];
  rawRules.forEach((raw, i) => {
    if (raw === null || typeof raw !== "object") return; // the schema says what is wrong
    const rule = raw as Record<string, unknown>;
    if (typeof rule.match === "string" && matchProblem(rule.match) === undefined) {
      const upstream = rule.match.slice(0, rule.match.indexOf("/"));
      if (!names.has(upstream))
        problems.push(
          `rules.${i}.match: ${JSON.stringify(upstream.slice(0, 200))} is not a configured upstream (known: ${[...names.keys()].join(", ")})`,
        );
    }
    if (rule.tags !== undefined) {
      for (const key of ["cache", "maxIdle"])
        if (rule[key] !== undefined)
          problems.push(
            `rules.${i}.${key}: not with tags (a rule with tags covers only manifest requests by tag, not the blobs and manifests by digest an image is pulled with): write a rule without tags for the repository`,
          );
    }
    if (rule.immutable === true && rule.tagTtl !== undefined)
      problems.push(`rules.${i}.tagTtl: an immutable tag is never revalidated, so it has no TTL: set one of them`);
    if (rule.cache === false) {
      for (const key of ["immutable", "tagTtl", "maxIdle"])
        if (rule[key] !== undefined && rule[key] !== false)
          problems.push(`rules.${i}.${key}: nothing is cached under cache: false, so ${key} means nothing here`);
    }
  });
  return problems;
}

/** Upstream names and aliases a rule may name, each mapped to the upstream's name. */
function upstreamNames(rawUpstreams: unknown): Map<string, string> {
  const names = new Map<string, string>();
  if (rawUpstreams === undefined) {
    for (const alias of ["docker.io", "registry-1.docker.io", "index.docker.io"]) names.set(alias, "docker.io");
    return names;
  }
  if (rawUpstreams === null || typeof rawUpstreams !== "object") return names;
  for (const [name, u] of Object.entries(rawUpstreams as Record<string, unknown>)) {
    names.set(name, name);
    const aliases = (u as { aliases?: unknown } | null)?.aliases;
    if (Array.isArray(aliases)) for (const a of aliases) if (typeof a === "string" && !names.has(a)) names.set(a, name);
  }
  return names;
}

interface Compiled {
  upstream: string;
  repository: RepositoryMatcher;
  tags: RegExp | undefined;
  rule: CacheRule;
}

/** The configured rules, compiled: `match` answers which one a request falls under. */
export class CacheRules {
  private readonly rules: readonly Compiled[];
  /** Every `maxIdle` a rule sets (ms), for the janitor's bounds. */
  readonly maxIdles: readonly number[];

  constructor(config: Pick<Config, "rules" | "upstreams">) {
    const names = new Map<string, string>();
    for (const u of Object.values(config.upstreams)) {
      names.set(u.name, u.name);
      for (const a of u.aliases) if (!names.has(a)) names.set(a, u.name);
    }
    this.rules = config.rules.map((r, index) => {
      const slash = r.match.indexOf("/");
      const upstream = r.match.slice(0, slash);
      return {
        upstream: names.get(upstream) ?? upstream,
        repository: compilePattern(r.match.slice(slash + 1)),
        tags: r.tags === undefined ? undefined : new RegExp(r.tags),
        rule: Object.freeze({
          index,
          tagTtl: r.tagTtl,
          immutable: r.immutable,
          cache: r.cache,
          maxIdle: r.maxIdle,
        }),
      };
    });
    this.maxIdles = config.rules.flatMap((r) => (r.maxIdle === undefined ? [] : [r.maxIdle]));
  }

  /** No rules at all: every request is as its upstream's config says. */
  get empty(): boolean {
    return this.rules.length === 0;
  }

  /**
   * The rule a request falls under: for `upstream` (its configured name) and `repository` (as the upstream
   * knows it), with `tag` for a manifest request by tag and undefined for everything else. Undefined: none.
   */
  match(upstream: string, repository: string, tag: string | undefined): CacheRule | undefined {
    for (const r of this.rules) {
      if (r.upstream !== upstream || !r.repository(repository)) continue;
      if (r.tags !== undefined && (tag === undefined || !r.tags.test(tag))) continue;
      return r.rule;
    }
    return undefined;
  }
}
