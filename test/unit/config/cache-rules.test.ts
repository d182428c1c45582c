/**
 * The per-repository rules: which rule a request falls under (first match wins, tags only for tag requests),
 * and every problem a bad rule has, reported with the rule's index, all at once, by the config loader.
 */
import { describe, expect, it } from "vitest";
import { CacheRules, matchProblem, tagRegexProblem } from "../../../src/config/cache-rules.ts";
import { ConfigError, parseConfig } from "../../../src/config/load.ts";

const upstreams = {
  "docker.io": { url: "https://registry-1.docker.io", default: true, aliases: ["registry-1.docker.io"] },
  "ghcr.io": { url: "https://ghcr.io" },
};

function rulesOf(rules: unknown[]): CacheRules {
  return new CacheRules(parseConfig({ upstreams, rules }));
}

function problemsOf(input: unknown): readonly string[] {
  try {
    parseConfig(input);
    return [];
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.problems;
  }
}

describe("CacheRules.match", () => {
  const rules = rulesOf([
    { match: "docker.io/library/*", tags: "^v?[0-9]+(\\.[0-9]+)*$", immutable: true },
    { match: "docker.io/library/*", tagTtl: "1h", maxIdle: "90d" },
    { match: "ghcr.io/secret/**", cache: false },
    { match: "registry-1.docker.io/team/*", maxIdle: 0 },
  ]);

  it("applies the first rule whose repository glob and tag regex fit", () => {
    expect(rules.match("docker.io", "library/alpine", "3.20")).toMatchObject({ index: 0, immutable: true });
    expect(rules.match("docker.io", "library/alpine", "v1.2.3")?.index).toBe(0);
    // A tag the regex does not fit falls through to the next rule of the repository.
    expect(rules.match("docker.io", "library/alpine", "latest")).toMatchObject({
      index: 1,
      immutable: false,
      tagTtl: 3_600_000,
      maxIdle: 90 * 86_400_000,
      cache: true,
    });
  });

  it("never applies a rule with tags to a request without a tag (blobs, manifests by digest)", () => {
    expect(rules.match("docker.io", "library/alpine", undefined)?.index).toBe(1);
  });

  it("matches `*` within one path component and `**` across them, per upstream", () => {
    expect(rules.match("docker.io", "library/a/b", "3.20")).toBeUndefined();
    expect(rules.match("ghcr.io", "secret/a/b", undefined)).toMatchObject({ index: 2, cache: false });
    expect(rules.match("ghcr.io", "secretive/a", undefined)).toBeUndefined();
    expect(rules.match("ghcr.io", "library/alpine", "3.20")).toBeUndefined();
  });

  it("reads an upstream alias in match as the upstream it names", () => {
    expect(rules.match("docker.io", "team/tool", undefined)).toMatchObject({ index: 3, maxIdle: 0 });
    expect(rules.maxIdles).toEqual([90 * 86_400_000, 0]);
  });

  it("answers undefined for everything when there are no rules", () => {
    const none = rulesOf([]);
    expect(none.empty).toBe(true);
    expect(none.match("docker.io", "library/alpine", "3.20")).toBeUndefined();
  });
});

describe("rule syntax", () => {
  it("explains what a match must look like", () => {
    expect(matchProblem("docker.io/library/*")).toBeUndefined();
    expect(matchProblem("docker.io")).toMatch(/expected "<upstream>\/<repository glob>"/);
    expect(matchProblem("/library/*")).toMatch(/expected/);
    expect(matchProblem("docker.io/")).toMatch(/expected/);
    expect(matchProblem("docker.io/Library/[ab]")).toMatch(/may hold only lower-case letters/);
    expect(matchProblem("docker.io/a/***")).toMatch(/\*\*\*/);
  });

  it("compiles the tag regex", () => {
    expect(tagRegexProblem("^v[0-9]+$")).toBeUndefined();
    expect(tagRegexProblem("^v[0-9+$")).toMatch(/^not a regular expression: /);
  });
});

describe("rules in the configuration", () => {
  it("refuses every bad rule at once, each problem naming the rule's index", () => {
    const problems = problemsOf({
      upstreams,
      rules: [
        { match: "docker.io/library/*", immutable: true },
        { match: "quay.io/org/*", immutable: true },
        { match: "docker.io/library/*", tags: "^(v" },
        { match: "docker.io", cache: false },
        { match: "docker.io/a/*", tags: "^v", cache: false, maxIdle: "1d" },
        { match: "docker.io/b/*", immutable: true, tagTtl: "1h" },
        { match: "docker.io/c/*", cache: false, immutable: true },
        { match: "docker.io/d/*", maxIdle: "soon", colour: "red" },
      ],
    });
    const withTags =
      "not with tags (a rule with tags covers only manifest requests by tag, not the blobs and manifests by digest an image is pulled with): write a rule without tags for the repository";
    expect([...problems].sort()).toEqual(
      [
        'rules.1.match: "quay.io" is not a configured upstream (known: docker.io, registry-1.docker.io, ghcr.io)',
        "rules.2.tags: not a regular expression: Invalid regular expression: /^(v/: Unterminated group",
        'rules.3.match: expected "<upstream>/<repository glob>", e.g. "docker.io/library/*", got "docker.io"',
        `rules.4.cache: ${withTags}`,
        `rules.4.maxIdle: ${withTags}`,
        "rules.4.maxIdle: nothing is cached under cache: false, so maxIdle means nothing here",
        "rules.5.tagTtl: an immutable tag is never revalidated, so it has no TTL: set one of them",
        "rules.6.immutable: nothing is cached under cache: false, so immutable means nothing here",
        'rules.7.maxIdle: invalid duration "soon" (examples: 30s, 5m, 1h)',
        'rules.7: Unrecognized key: "colour"',
      ].sort(),
    );
  });

  it("accepts the issue's example and defaults to no rules", () => {
    const config = parseConfig({
      upstreams,
      storage: { maxIdle: "30d" },
      rules: [{ match: "docker.io/library/*", tags: "^v?[0-9]+(\\.[0-9]+)*$", immutable: true }],
    });
    expect(config.storage.maxIdle).toBe(30 * 86_400_000);
    expect(config.rules).toEqual([
      { match: "docker.io/library/*", tags: "^v?[0-9]+(\\.[0-9]+)*$", immutable: true, cache: true },
    ]);
    expect(parseConfig({}).rules).toEqual([]);
    expect(parseConfig({}).storage.maxIdle).toBeUndefined();
  });

  it("refuses a storage.maxIdle of 0 (absent means off)", () => {
    expect(problemsOf({ storage: { maxIdle: 0 } })).toEqual([
      "storage.maxIdle: duration 0 ms is out of range: from 1ms up to 100 years",
    ]);
  });
});
