/**
 * The references of a warm-up set (`warmup[].images`, or the lines of `warmup[].file`), read as `mirror export`
 * and the admin prefetch read them (upstream-resolver.ts: `reference`). The same reading checks the config at
 * start-up and a file each time it changes, so a file the mirror accepts at run time would have been accepted
 * at start, and the other way round.
 */
import { readFile } from "node:fs/promises";
import type { Config } from "./schema.ts";
import { UpstreamResolver, type RoutedUpstream } from "./upstream-resolver.ts";
import { errorMessage } from "../caught-errors.ts";

/** Lines read from a warm-up file at most: the file is a list for people to edit, not a data set. */
export const MAX_WARMUP_REFERENCES = 10_000;
/** Bytes read from a warm-up file at most. */
export const MAX_WARMUP_FILE_BYTES = 1024 * 1024;

export interface WarmupList {
  /** The references as written (trimmed), each once, in order. */
  references: string[];
  /** What is wrong with the list, one line per problem; a list with problems is not used. */
  problems: string[];
}

/** Checks references; `where(i)` names entry i in a problem (`images[2]`, `line 7`). */
export function checkReferences(
  entries: ReadonlyArray<{ text: string; where: string }>,
  resolver: UpstreamResolver<RoutedUpstream>,
): WarmupList {
  const references: string[] = [];
  const problems: string[] = [];
  const seen = new Set<string>();
  if (entries.length > MAX_WARMUP_REFERENCES)
    problems.push(`${entries.length} references: at most ${MAX_WARMUP_REFERENCES} per set`);
  for (const { text, where } of entries.slice(0, MAX_WARMUP_REFERENCES)) {
    try {
      resolver.reference(text);
    } catch (err) {
      problems.push(`${where}: ${JSON.stringify(text.slice(0, 300))}: ${errorMessage(err)}`);
      continue;
    }
    if (!seen.has(text)) references.push(text);
    seen.add(text);
  }
  if (problems.length === 0 && references.length === 0) problems.push("no references");
  return { references, problems };
}

/** The lines of a warm-up file: one reference per line; blank lines and `#` comments (whole or trailing) skipped. */
export function parseWarmupText(text: string, resolver: UpstreamResolver<RoutedUpstream>): WarmupList {
  const entries = text
    .split(/\r?\n/)
    .map((line, i) => ({ text: line.replace(/(^|\s)#.*$/, "").trim(), where: `line ${i + 1}` }))
    .filter((e) => e.text !== "");
  return checkReferences(entries, resolver);
}

/** Reads and checks a warm-up file; an unreadable or oversized file is a problem like any other. */
export async function readWarmupFile(path: string, resolver: UpstreamResolver<RoutedUpstream>): Promise<WarmupList> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    return { references: [], problems: [`cannot read ${path}: ${errorMessage(err)}`] };
  }
  if (bytes.length > MAX_WARMUP_FILE_BYTES)
    return { references: [], problems: [`${path} holds ${bytes.length} bytes: at most ${MAX_WARMUP_FILE_BYTES}`] };
  const list = parseWarmupText(bytes.toString("utf8"), resolver);
  return { references: list.references, problems: list.problems.map((p) => `${path}: ${p}`) };
}

/** Problems of the inline `images` of every set, for the config loader (which lists them with every other). */
export function inlineWarmupProblems(config: Pick<Config, "upstreams" | "warmup">): string[] {
  const resolver = UpstreamResolver.ofConfig(config.upstreams);
  const problems: string[] = [];
  for (const [i, set] of config.warmup.entries()) {
    if (set.images === undefined) continue;
    const list = checkReferences(
      set.images.map((text, j) => ({ text: text.trim(), where: `images[${j}]` })),
      resolver,
    );
    problems.push(...list.problems.map((p) => `warmup.${i} (${set.name}): ${p}`));
  }
  return problems;
}

/** Problems of every set's file at start-up: it must be readable and valid then (later, a bad edit is kept out). */
export async function warmupFileProblems(config: Pick<Config, "upstreams" | "warmup">): Promise<string[]> {
  const resolver = UpstreamResolver.ofConfig(config.upstreams);
  const lists = await Promise.all(
    config.warmup.map(async (set, i) =>
      set.file === undefined
        ? []
        : (await readWarmupFile(set.file, resolver)).problems.map((p) => `warmup.${i}.file (${set.name}): ${p}`),
    ),
  );
  return lists.flat();
}

/**
 * Set names used twice, checked on the raw input (as crossUpstreamProblems is), so that they are reported
 * together with field errors in the same sets.
 */
export function warmupNameProblems(rawWarmup: unknown): string[] {
  if (!Array.isArray(rawWarmup)) return [];
  const seen = new Set<string>();
  const problems: string[] = [];
  for (const [i, set] of rawWarmup.entries()) {
    const name = (set as { name?: unknown } | null)?.name;
    if (typeof name !== "string") continue;
    if (seen.has(name)) problems.push(`warmup.${i}.name: warm-up set ${name} is defined twice`);
    seen.add(name);
  }
  return problems;
}
