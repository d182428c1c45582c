/**
 * Glob patterns over repository names, for access rules and per-upstream allow/deny lists:
 *   `*`  any run of characters within one path component (`library/*` matches `library/alpine`, not `a/b/c`)
 *   `**` any run of characters across components (`myorg/**` matches `myorg/a` and `myorg/a/b`)
 * Everything else is literal. Deliberately this small (no braces, classes or negation, as a general glob
 * library would add): rules an operator writes must read the same to every reader.
 */
export type RepositoryMatcher = (repository: string) => boolean;

export function compilePattern(pattern: string): RepositoryMatcher {
  let source = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === "*" && pattern[i + 1] === "*") {
      source += ".*";
      i++;
    } else if (c === "*") {
      source += "[^/]*";
    } else {
      source += c.replace(/[.+?^${}()|[\]\\]/g, "\\$&");
    }
  }
  const re = new RegExp(`^${source}$`);
  return (repository) => re.test(repository);
}

export function compilePatterns(patterns: readonly string[]): RepositoryMatcher {
  const matchers = patterns.map(compilePattern);
  return (repository) => matchers.some((m) => m(repository));
}
