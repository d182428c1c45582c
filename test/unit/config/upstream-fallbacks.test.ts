/**
 * `upstreams.<name>.fallbacks` at start-up: an unknown upstream, the upstream itself, a name listed twice and
 * every cycle are refused, all listed together with the config's other problems.
 */
import { describe, expect, it } from "vitest";
import { ConfigError, parseConfig } from "../../../src/config/load.ts";

function problemsOf(input: unknown): readonly string[] {
  try {
    parseConfig(input);
    return [];
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.problems;
  }
}

describe("upstreams.<name>.fallbacks", () => {
  it("accepts other configured upstreams, in order, and defaults to none", () => {
    const config = parseConfig({
      upstreams: {
        "docker.io": {
          url: "https://registry-1.docker.io",
          default: true,
          fallbacks: ["mirror.gcr.io", "harbor.local"],
        },
        "mirror.gcr.io": { url: "https://mirror.gcr.io" },
        "harbor.local": { url: "https://harbor.local", fallbacks: ["mirror.gcr.io"] },
      },
    });
    expect(config.upstreams["docker.io"]!.fallbacks).toEqual(["mirror.gcr.io", "harbor.local"]);
    expect(config.upstreams["mirror.gcr.io"]!.fallbacks).toEqual([]);
  });

  it("refuses start-up listing every problem: unknown, itself, twice, cycles, with the other errors", () => {
    const problems = problemsOf({
      listen: "nowhere",
      upstreams: {
        a: { url: "https://a.example", fallbacks: ["b", "nosuch", "a", "b"] },
        b: { url: "https://b.example", fallbacks: ["c"] },
        c: { url: "https://c.example", fallbacks: ["a"] },
        d: { url: "https://d.example", fallbacks: ["e"] },
        e: { url: "https://e.example", fallbacks: ["d"] },
        f: { url: "https://f.example", fallbacks: ["Not A Host"] },
      },
    });
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^listen: /),
        expect.stringMatching(/^upstreams\.a\.fallbacks\.1: nosuch names no configured upstream \(a, b, c, d, e, f\)$/),
        "upstreams.a.fallbacks.2: a is this upstream itself",
        "upstreams.a.fallbacks.3: b is listed twice",
        "upstreams.a.fallbacks: a → b → c → a form a cycle",
        "upstreams.d.fallbacks: d → e → d form a cycle",
        expect.stringMatching(/^upstreams\.f\.fallbacks\.0: expected a lower-case registry host/),
      ]),
    );
    expect(problems.filter((p) => p.includes("cycle"))).toHaveLength(2);
  });
});
