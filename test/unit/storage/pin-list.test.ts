import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { PIN_FILE, PinFileDamagedError, PinList } from "../../../src/storage/pin-list.ts";

const A = `sha256:${"a".repeat(64)}`;
const B = `sha256:${"b".repeat(64)}`;
const C = `sha256:${"c".repeat(64)}`;

describe("PinList", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "pins-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("holds no pins without a file, and the pins it was given across instances (a restart)", async () => {
    expect(await new PinList(dir).list()).toEqual([]);
    await new PinList(dir).set([{ reference: "docker.io/team/app:1", digest: A }]);
    expect((await new PinList(dir).list()).map((p) => [p.reference, p.digest])).toEqual([["docker.io/team/app:1", A]]);
  });

  for (const [what, content] of [
    ["empty", ""],
    ["torn", '{"version": 1, "pins": [{"reference": "docker.io/te'],
    ["of another shape", '{"pins": {}}'],
    ["holding a pin without a digest", '{"version": 1, "pins": [{"reference": "docker.io/team/app:1"}]}'],
  ] as const) {
    it(`fails loudly on a file that is ${what}, and never overwrites it`, async () => {
      await writeFile(join(dir, PIN_FILE), content);
      const pins = new PinList(dir);
      await expect(pins.list()).rejects.toBeInstanceOf(PinFileDamagedError);
      await expect(pins.list()).rejects.toThrow(/pins\.json is damaged/);
      await expect(pins.set([{ reference: "docker.io/team/app:2", digest: B }])).rejects.toBeInstanceOf(
        PinFileDamagedError,
      );
      expect(await readFile(join(dir, PIN_FILE), "utf8")).toBe(content);
    });
  }

  it("fails loudly on a file it cannot read", async () => {
    await mkdir(join(dir, PIN_FILE)); // EISDIR: present, but not readable as a file
    await expect(new PinList(dir).list()).rejects.toBeInstanceOf(PinFileDamagedError);
  });

  it("replaces the file whole through a temp file that does not remain", async () => {
    const pins = new PinList(dir);
    await pins.set([{ reference: "docker.io/team/app:1", digest: A }]);
    await pins.set([{ reference: "docker.io/team/app:2", digest: B }]);
    expect(await readdir(dir)).toEqual([PIN_FILE]);
    const doc = JSON.parse(await readFile(join(dir, PIN_FILE), "utf8")) as {
      version: number;
      pins: Array<{ reference: string }>;
    };
    expect(doc.version).toBe(1);
    expect(doc.pins.map((p) => p.reference)).toEqual(["docker.io/team/app:1", "docker.io/team/app:2"]);
  });

  it("reconciles: records what resolved, keeps what did not, drops what is no longer covered, writes only on change", async () => {
    const pins = new PinList(dir);
    await pins.set([
      { reference: "docker.io/team/app:1", digest: A },
      { reference: "docker.io/team/app:2", digest: B },
      { reference: "docker.io/team/gone:1", digest: C },
    ]);
    const covered = (reference: string) => reference.startsWith("docker.io/team/app:");
    // app:1 moved to C; app:2's pointer is gone (not resolved): it stays; team/gone is no longer pinned.
    await pins.reconcile(new Map([["docker.io/team/app:1", C]]), covered);
    expect((await pins.list()).map((p) => [p.reference, p.digest])).toEqual([
      ["docker.io/team/app:1", C],
      ["docker.io/team/app:2", B],
    ]);
    const before = await stat(join(dir, PIN_FILE));
    await pins.reconcile(new Map([["docker.io/team/app:1", C]]), covered);
    expect((await stat(join(dir, PIN_FILE))).ino).toBe(before.ino); // nothing changed: not rewritten
  });
});
