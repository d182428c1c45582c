/** Summaries of repeated measurements: the median with the min–max range, and ratios of medians. */

export interface Summary {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function summarize(values: readonly number[]): Summary | undefined {
  const finite = values.filter((v) => Number.isFinite(v));
  if (finite.length === 0) return undefined;
  const sorted = [...finite].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const median = sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]!, n: sorted.length };
}

/** `ours / theirs` of two medians, or undefined when either is missing or the divisor is zero. */
export function ratio(ours: Summary | undefined, theirs: Summary | undefined): number | undefined {
  if (ours === undefined || theirs === undefined || theirs.median === 0) return undefined;
  return ours.median / theirs.median;
}

/** "1234 (1100–1300)" with `digits` decimals; "n/a" when nothing was measured. */
export function formatSummary(s: Summary | undefined, digits = 0): string {
  if (s === undefined) return "n/a";
  const f = (v: number) => v.toFixed(digits);
  return s.n === 1 || s.min === s.max ? f(s.median) : `${f(s.median)} (${f(s.min)}–${f(s.max)})`;
}

export function formatRatio(r: number | undefined): string {
  if (r === undefined || !Number.isFinite(r)) return "n/a";
  return r >= 100 ? `${r.toFixed(0)}×` : r >= 10 ? `${r.toFixed(1)}×` : `${r.toFixed(2)}×`;
}

/**
 * The target order for repetition `rep`: rotated each time, so no target always runs first (warm CPU caches,
 * a neighbour's load spike) or always right after a particular other one.
 */
export function rotation<T>(items: readonly T[], rep: number): T[] {
  const k = rep % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}
