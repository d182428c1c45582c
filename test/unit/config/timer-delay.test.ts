import { describe, expect, it } from "vitest";
import { MAX_TIMER_MS, timerDelay } from "../../../src/config/timer-delay.ts";

/** The TimeoutOverflowWarnings Node emits (on the next tick) for a timer set with `delay`. */
async function overflowWarnings(delay: number): Promise<string[]> {
  const seen: string[] = [];
  const onWarning = (warning: Error) => {
    if (warning.name === "TimeoutOverflowWarning") seen.push(warning.message);
  };
  process.on("warning", onWarning);
  try {
    clearTimeout(setTimeout(() => undefined, delay));
    await new Promise((resolve) => setImmediate(resolve));
  } finally {
    process.off("warning", onWarning);
  }
  return seen;
}

describe("timerDelay", () => {
  it("keeps a delay a timer honours, and gives the longest one for anything longer", () => {
    expect(timerDelay(0)).toBe(0);
    expect(timerDelay(30_000)).toBe(30_000);
    expect(timerDelay(MAX_TIMER_MS)).toBe(MAX_TIMER_MS);
    expect(timerDelay(MAX_TIMER_MS + 1)).toBe(MAX_TIMER_MS);
    expect(timerDelay(25 * 86_400_000)).toBe(MAX_TIMER_MS);
  });

  it("is a delay Node keeps: 25 days as such is cut to 1 ms, through timerDelay it is not", async () => {
    // The first line shows the check can fail (Node also prints that warning on stderr).
    expect(await overflowWarnings(25 * 86_400_000)).toHaveLength(1);
    expect(await overflowWarnings(timerDelay(25 * 86_400_000))).toEqual([]);
  });
});
