/**
 * Warm-up lists: references read as `mirror export` reads them, every problem listed at start-up with the set
 * and entry it is in, and the file format (one reference per line, comments).
 */
import { describe, expect, it } from "vitest";
import { ConfigError, longDurationWarnings, parseConfig } from "../../../src/config/load.ts";
import { UpstreamResolver } from "../../../src/config/upstream-resolver.ts";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseWarmupText, warmupFileProblems } from "../../../src/config/warmup-list.ts";

const upstreams = {
  "docker.io": { url: "https://registry-1.docker.io", default: true },
  "ghcr.io": { url: "https://ghcr.io" },
};

function problemsOf(input: unknown): readonly string[] {
  try {
    parseConfig(input);
    return [];
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return err.problems;
  }
}

describe("warmup config", () => {
  it("accepts sets with defaults: every 6h, first run after 30s, all platforms, no pin", () => {
    const config = parseConfig({
      upstreams,
      warmup: [{ name: "base", images: ["alpine:3.20", "ghcr.io/org/tool:2"] }],
    });
    expect(config.warmup).toEqual([
      {
        name: "base",
        images: ["alpine:3.20", "ghcr.io/org/tool:2"],
        every: 6 * 3600_000,
        firstRunAfter: 30_000,
        platforms: "all",
        pin: false,
      },
    ]);
  });

  it("refuses start-up listing every problem: bad references, both or neither source, duplicate names, bad values", () => {
    const problems = problemsOf({
      upstreams,
      warmup: [
        { name: "base", every: "6h", images: ["Not/Valid:tag", "alpine:3.20", "quay.io//x"], platforms: ["linux"] },
        { name: "both", images: ["alpine"], file: "/etc/mirror/warmup.txt" },
        { name: "neither" },
        { name: "base", images: ["alpine"], every: "soon" },
      ],
    });
    const text = problems.join("\n");
    expect(text).toMatch(/warmup\.0\.platforms\.0: expected os\/architecture/);
    expect(text).toMatch(/warmup\.1: set exactly one of images, file/);
    expect(text).toMatch(/warmup\.2: set exactly one of images, file/);
    expect(text).toMatch(/warmup\.3\.every: invalid duration "soon"/);
    expect(text).toMatch(/warmup\.3\.name: warm-up set base is defined twice/);
    // The references are checked once the rest parses, with the set and the entry named.
    const refs = problemsOf({
      upstreams,
      warmup: [
        { name: "base", images: ["Not/Valid:tag", "alpine:3.20", "docker.io/UPPER/x"] },
        { name: "other", images: ["ghcr.io/org/tool:Bad Tag"] },
      ],
    });
    expect(refs).toHaveLength(3);
    expect(refs[0]).toMatch(/^warmup\.0 \(base\): images\[0\]: "Not\/Valid:tag": /);
    expect(refs[1]).toMatch(/^warmup\.0 \(base\): images\[2\]: "docker\.io\/UPPER\/x": /);
    expect(refs[2]).toMatch(/^warmup\.1 \(other\): images\[0\]: /);
  });

  it("warns about an `every` longer than a timer can wait, naming the set's key (timer-delay.ts)", () => {
    const config = parseConfig({ upstreams, warmup: [{ name: "a", images: ["alpine"], every: "30d" }] });
    expect(longDurationWarnings(config).map((w) => w.key)).toEqual(["warmup.0.every"]);
  });

  it("reads a file's lines: comments and blank lines skipped, duplicates once, each problem with its line", () => {
    const resolver = UpstreamResolver.ofConfig(parseConfig({ upstreams }).upstreams);
    expect(
      parseWarmupText("# base images\n\nalpine:3.20   # the small one\nghcr.io/org/tool:2\nalpine:3.20\n", resolver),
    ).toEqual({ references: ["alpine:3.20", "ghcr.io/org/tool:2"], problems: [] });
    const bad = parseWarmupText("alpine:3.20\nNOT VALID\n", resolver);
    expect(bad.problems).toEqual([expect.stringMatching(/^line 2: "NOT VALID": /)]);
    expect(parseWarmupText("# nothing\n", resolver).problems).toEqual(["no references"]);
  });

  it("checks each set's file at start-up: missing, or with a line that does not parse, each named", async () => {
    const dir = await mkdtemp(join(tmpdir(), "warmup-list-"));
    try {
      await writeFile(join(dir, "good.txt"), "alpine:3.20\n");
      await writeFile(join(dir, "bad.txt"), "alpine:3.20\n\nBAD REF\n");
      const config = parseConfig({
        upstreams,
        warmup: [
          { name: "good", file: join(dir, "good.txt") },
          { name: "bad", file: join(dir, "bad.txt") },
          { name: "gone", file: join(dir, "gone.txt") },
        ],
      });
      const problems = await warmupFileProblems(config);
      expect(problems).toHaveLength(2);
      expect(problems[0]).toMatch(/^warmup\.1\.file \(bad\): .*bad\.txt: line 3: "BAD REF": /);
      expect(problems[1]).toMatch(/^warmup\.2\.file \(gone\): cannot read .*gone\.txt: ENOENT/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
