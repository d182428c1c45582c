/**
 * The rules' idle limits per digest, on a real temp directory: the most generous limit wins, what is written
 * reads back, a damaged file reads as empty (and says why), and a write happens only when something changed.
 */
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { IDLE_LIMIT_FILE, IdleLimits } from "../../../src/storage/idle-limits.ts";

const A = `sha256:${"a".repeat(64)}`;
const B = `sha256:${"b".repeat(64)}`;
const C = `sha256:${"c".repeat(64)}`;
const HOUR = 3_600_000;

describe("IdleLimits", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "idle-limits-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("keeps the most generous limit per digest (0, never, beats any duration)", () => {
    const limits = new IdleLimits(dir, dir);
    limits.note(A, HOUR);
    limits.note(A, 2 * HOUR);
    limits.note(A, HOUR);
    limits.note(B, 2 * HOUR);
    limits.note(B, 0);
    limits.note(B, 5 * HOUR);
    expect([limits.get(A), limits.get(B), limits.get(C)]).toEqual([2 * HOUR, 0, undefined]);
    expect(limits.shortest()).toBe(2 * HOUR);
  });

  it("writes what changed, reads it back after a restart, and forgets what left the store", async () => {
    const first = new IdleLimits(dir, dir);
    expect(await first.load()).toBeUndefined(); // no file yet: empty, not damaged
    first.note(A, HOUR);
    first.note(B, 0);
    await first.save();
    const path = join(dir, IDLE_LIMIT_FILE);
    const written = (await stat(path)).mtimeMs;
    await new Promise((r) => setTimeout(r, 20));
    await first.save(); // nothing changed: not rewritten
    expect((await stat(path)).mtimeMs).toBe(written);

    const second = new IdleLimits(dir, dir);
    second.note(A, 3 * HOUR); // noted before the file is read: merged, the more generous kept
    await second.load();
    expect([second.get(A), second.get(B)]).toEqual([3 * HOUR, 0]);
    second.forget(B);
    await second.save();
    expect(JSON.parse(await readFile(path, "utf8"))).toEqual({ [A]: 3 * HOUR });
  });

  it("reads a damaged file as empty and says why; entries that are not digests and limits are skipped", async () => {
    const path = join(dir, IDLE_LIMIT_FILE);
    await writeFile(path, "{torn");
    expect((await new IdleLimits(dir, dir).load())?.damaged).toMatch(/JSON/);
    await writeFile(path, "[1, 2]");
    expect(await new IdleLimits(dir, dir).load()).toEqual({ damaged: "not a JSON object" });
    await writeFile(path, JSON.stringify({ [A]: HOUR, "not-a-digest": HOUR, [B]: -1, [C]: "1h" }));
    const limits = new IdleLimits(dir, dir);
    expect(await limits.load()).toBeUndefined();
    expect([limits.get(A), limits.get(B), limits.get(C)]).toEqual([HOUR, undefined, undefined]);
  });
});
