import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { replaceFileDurably } from "../../../src/storage/durable-replace.ts";

describe("replaceFileDurably", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "replace-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("replaces concurrently, each replace whole, and leaves no temp file", async () => {
    const path = join(dir, "deep", "file.json");
    const versions = Array.from({ length: 8 }, (_, i) => JSON.stringify({ version: i, padding: "x".repeat(10_000) }));
    const results = await Promise.allSettled(versions.map((text) => replaceFileDurably(path, text)));
    expect(results.filter((r) => r.status === "rejected")).toEqual([]);
    expect(versions).toContain(await readFile(path, "utf8"));
    expect(await readdir(join(dir, "deep"))).toEqual(["file.json"]);
  });

  it("writes its temp file in tempDir when given one, and removes it when the replace fails", async () => {
    const temps = join(dir, "tmp");
    await mkdir(temps);
    await replaceFileDurably(join(dir, "a.json"), "new", { tempDir: temps });
    expect(await readFile(join(dir, "a.json"), "utf8")).toBe("new");
    // A directory in the way: the rename fails, the error is reported, and nothing is left in either place.
    await mkdir(join(dir, "b.json"));
    await writeFile(join(dir, "b.json", "inside"), "kept");
    await expect(replaceFileDurably(join(dir, "b.json"), "new", { tempDir: temps })).rejects.toThrow();
    expect(await readdir(temps)).toEqual([]);
    expect((await readdir(dir)).sort()).toEqual(["a.json", "b.json", "tmp"]);
    expect(await readFile(join(dir, "b.json", "inside"), "utf8")).toBe("kept");
  });
});
