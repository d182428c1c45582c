/**
 * Checks of `upstreams.<name>.fallbacks` across upstreams: each entry names another configured upstream (by its
 * name, not an alias: the list is about upstreams, not about what clients call them), never the upstream
 * itself, at most once; and fallbacks never form a cycle (a → b → a), which would make "who answers when both
 * are down" a question without an end. Run on the raw input, like crossUpstreamProblems, so that every problem
 * is reported together with field errors.
 */
export function fallbackProblems(rawUpstreams: unknown): string[] {
  if (rawUpstreams === null || typeof rawUpstreams !== "object" || Array.isArray(rawUpstreams)) return [];
  const upstreams = rawUpstreams as Record<string, unknown>;
  const names = new Set(Object.keys(upstreams));
  const edges = new Map<string, string[]>();
  const problems: string[] = [];
  for (const [name, u] of Object.entries(upstreams)) {
    const list = (u as { fallbacks?: unknown } | null)?.fallbacks;
    if (!Array.isArray(list)) continue;
    const seen = new Set<string>();
    const valid: string[] = [];
    for (const [i, entry] of list.entries()) {
      if (typeof entry !== "string") continue; // the schema reports it
      const where = `upstreams.${name}.fallbacks.${i}`;
      if (entry === name) problems.push(`${where}: ${entry} is this upstream itself`);
      else if (!names.has(entry))
        problems.push(`${where}: ${entry} names no configured upstream (${[...names].join(", ")})`);
      else if (seen.has(entry)) problems.push(`${where}: ${entry} is listed twice`);
      else valid.push(entry);
      seen.add(entry);
    }
    edges.set(name, valid);
  }
  problems.push(...cycles(edges));
  return problems;
}

/** Each cycle of the fallback graph once, as `upstreams.a.fallbacks: a → b → a form a cycle`. */
function cycles(edges: ReadonlyMap<string, readonly string[]>): string[] {
  const found: string[] = [];
  const reported = new Set<string>();
  const done = new Set<string>();
  const visit = (node: string, path: string[]): void => {
    const at = path.indexOf(node);
    if (at >= 0) {
      const cycle = path.slice(at);
      const key = [...cycle].sort().join("\u0000");
      if (!reported.has(key)) {
        reported.add(key);
        found.push(`upstreams.${cycle[0]}.fallbacks: ${[...cycle, cycle[0]].join(" → ")} form a cycle`);
      }
      return;
    }
    if (done.has(node)) return;
    for (const next of edges.get(node) ?? []) visit(next, [...path, node]);
    done.add(node);
  };
  for (const node of edges.keys()) visit(node, []);
  return found;
}
