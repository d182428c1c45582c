import { appendFile, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { TagPointer } from "../../../src/metadata/metadata-store.ts";
import {
  decodeRecord,
  encodeRecord,
  JOURNAL_FILE,
  TagJournal,
  type JournalRecord,
  type TagJournalOptions,
} from "../../../src/metadata/tag-journal.ts";

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "tag-journal-"));
  dirs.push(dir);
  return dir;
}

const pointer = (n: number): TagPointer => ({
  digest: `sha256:${n.toString(16).padStart(64, "0")}`,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  checkedAt: 1_700_000_000_000 + n,
});

/** The journal's user in miniature: state that records set, and a snapshot of it. */
class Model {
  readonly tags = new Map<string, TagPointer>();
  readonly links = new Set<string>();

  apply(record: JournalRecord): void {
    if (record.op === "provenance") return; // not part of this model
    const scope = `${record.upstream} ${record.repo}`;
    if (record.op === "tag") this.tags.set(`${scope} ${record.tag}`, record.pointer);
    else if (record.op === "untag") this.tags.delete(`${scope} ${record.tag}`);
    else if (record.op === "link") for (const d of record.digests) this.links.add(`${scope} ${d}`);
    else {
      for (const k of [...this.tags.keys()]) if (k.startsWith(`${scope} `)) this.tags.delete(k);
      for (const k of [...this.links]) if (k.startsWith(`${scope} `)) this.links.delete(k);
    }
  }

  *snapshot(): Generator<JournalRecord> {
    for (const [key, p] of this.tags) {
      const [upstream = "", repo = "", tag = ""] = key.split(" ");
      yield { op: "tag", upstream, repo, tag, pointer: p };
    }
    for (const key of this.links) {
      const [upstream = "", repo = "", digest = ""] = key.split(" ");
      yield { op: "link", upstream, repo, digests: [digest] };
    }
  }
}

async function openWith(
  dir: string,
  model: Model,
  extra: Partial<TagJournalOptions> = {},
): Promise<{ journal: TagJournal; errors: Error[] }> {
  const errors: Error[] = [];
  const journal = await TagJournal.open({
    dir,
    apply: (r) => model.apply(r),
    snapshot: () => model.snapshot(),
    liveEntries: () => model.tags.size + model.links.size,
    onError: (err) => errors.push(err),
    ...extra,
  });
  return { journal, errors };
}

/** Applies in memory first, then journals: what the store does. */
async function write(model: Model, journal: TagJournal, record: JournalRecord): Promise<void> {
  model.apply(record);
  await journal.append(record);
}

async function lines(dir: string): Promise<string[]> {
  return (await readFile(join(dir, JOURNAL_FILE), "utf8")).split("\n").filter((l) => l !== "");
}

describe("journal records", () => {
  const records: JournalRecord[] = [
    { op: "tag", upstream: "docker.io", repo: "library/alpine", tag: "3.20", pointer: pointer(1) },
    { op: "untag", upstream: "docker.io", repo: "library/alpine", tag: "3.20" },
    { op: "link", upstream: "localhost:5000", repo: "a/b-c/d__e", digests: [pointer(1).digest, pointer(2).digest] },
    { op: "purge", upstream: "docker.io", repo: "x" },
    { op: "provenance", upstream: "localhost:5000", digests: [pointer(1).digest, pointer(2).digest] },
  ];

  it("round-trip, one line each", () => {
    for (const record of records) {
      const line = encodeRecord(record);
      expect(line.endsWith("\n")).toBe(true);
      expect(line.slice(0, -1)).not.toContain("\n");
      expect(decodeRecord(line.slice(0, -1))).toEqual(record);
    }
  });

  it("reject anything torn, mistyped or unknown", () => {
    const good = encodeRecord(records[0]!).slice(0, -1);
    for (let cut = 1; cut < good.length; cut += 7) expect(decodeRecord(good.slice(0, cut))).toBeUndefined();
    for (const bad of [
      "",
      "null",
      "{}",
      '["tag","u","r","t","sha256:x","m","not a number"]',
      '["tag","u","r","t","sha256:x","m",1,"extra"]',
      '["untag","u","r"]',
      '["link","u","r"]',
      '["link","u","r",5]',
      '["purge","u","r","x"]',
      '["provenance","u"]',
      '["provenance","u","sha256:x",5]',
      '["provenance",1,"sha256:x"]',
      '["rename","u","r"]',
      '["tag",1,"r","t","d","m",1]',
    ]) {
      expect(decodeRecord(bad), bad).toBeUndefined();
    }
  });
});

describe("TagJournal", () => {
  it("replays what was appended, in order, after a reopen", async () => {
    const dir = await tempDir();
    const model = new Model();
    const { journal } = await openWith(dir, model);
    await write(model, journal, { op: "tag", upstream: "u", repo: "r", tag: "a", pointer: pointer(1) });
    await write(model, journal, { op: "tag", upstream: "u", repo: "r", tag: "a", pointer: pointer(2) });
    await write(model, journal, { op: "link", upstream: "u", repo: "r", digests: ["sha256:1"] });
    await write(model, journal, { op: "tag", upstream: "u", repo: "q", tag: "b", pointer: pointer(3) });
    await write(model, journal, { op: "purge", upstream: "u", repo: "q" });
    await journal.close();

    const reloaded = new Model();
    const { journal: again } = await openWith(dir, reloaded);
    expect(again.loaded).toEqual({ records: 5, skipped: 0, removedTempFiles: 0 });
    expect([...reloaded.tags]).toEqual([["u r a", pointer(2)]]);
    expect([...reloaded.links]).toEqual(["u r sha256:1"]);
    await again.close();
  });

  it("skips a torn last line, starts the next write on a fresh line, and rewrites the garbage away", async () => {
    const dir = await tempDir();
    const model = new Model();
    const { journal } = await openWith(dir, model);
    await write(model, journal, { op: "tag", upstream: "u", repo: "r", tag: "a", pointer: pointer(1) });
    await write(model, journal, { op: "tag", upstream: "u", repo: "r", tag: "b", pointer: pointer(2) });
    await journal.close();
    // What a crash in the middle of a write leaves: half a line, no newline.
    await appendFile(
      join(dir, JOURNAL_FILE),
      encodeRecord({ op: "tag", upstream: "u", repo: "r", tag: "c", pointer: pointer(3) }).slice(0, 20),
    );

    const second = new Model();
    const { journal: reopened, errors } = await openWith(dir, second);
    expect(reopened.loaded).toMatchObject({ records: 2, skipped: 1 });
    expect([...second.tags.keys()]).toEqual(["u r a", "u r b"]);
    await write(second, reopened, { op: "tag", upstream: "u", repo: "r", tag: "d", pointer: pointer(4) });
    await reopened.close();
    expect(errors).toEqual([]);
    for (const line of await lines(dir)) expect(decodeRecord(line), line).toBeDefined();

    const third = new Model();
    const { journal: last } = await openWith(dir, third);
    expect(last.loaded.skipped).toBe(0);
    expect([...third.tags.keys()].sort()).toEqual(["u r a", "u r b", "u r d"]);
    await last.close();
  });

  it("does not glue the next line onto a last line that lacks only its newline", async () => {
    const dir = await tempDir();
    const whole = encodeRecord({ op: "tag", upstream: "u", repo: "r", tag: "a", pointer: pointer(1) });
    await writeFile(join(dir, JOURNAL_FILE), whole.slice(0, -1));
    const model = new Model();
    const { journal } = await openWith(dir, model);
    expect(journal.loaded).toMatchObject({ records: 1, skipped: 0 });
    await write(model, journal, { op: "tag", upstream: "u", repo: "r", tag: "b", pointer: pointer(2) });
    await journal.close();
    const reloaded = new Model();
    const { journal: again } = await openWith(dir, reloaded);
    expect(again.loaded).toMatchObject({ records: 2, skipped: 0 });
    await again.close();
  });

  it("compacts once it holds a multiple of the live entries, keeping exactly the live state", async () => {
    const dir = await tempDir();
    const model = new Model();
    const { journal, errors } = await openWith(dir, model, { compactRatio: 3, compactMinEntries: 10 });
    for (let i = 0; i < 500; i++) {
      await write(model, journal, { op: "tag", upstream: "u", repo: "r", tag: `t${i % 5}`, pointer: pointer(i) });
    }
    await journal.close();
    expect(errors).toEqual([]);
    // Five live tags: the file never holds more than ratio × max(live, floor) entries (plus what came during a rewrite).
    expect((await lines(dir)).length).toBeLessThanOrEqual(31);
    expect(await readdir(dir)).toEqual([JOURNAL_FILE]);
    const reloaded = new Model();
    const { journal: again } = await openWith(dir, reloaded);
    expect(reloaded.tags).toEqual(model.tags);
    await again.close();
  });

  it("loses nothing written while a compaction runs", async () => {
    const dir = await tempDir();
    const model = new Model();
    let compactions = 0;
    const snapshot = () => {
      compactions++;
      return model.snapshot();
    };
    const { journal, errors } = await openWith(dir, model, {
      compactRatio: 2,
      compactMinEntries: 4,
      syncIntervalMs: 1,
      snapshot,
    });
    // Unawaited bursts: appends keep arriving while compactions are writing their snapshots.
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 2_000; i++) {
      const tag = `t${i % 37}`;
      if (i % 11 === 0) writes.push(write(model, journal, { op: "untag", upstream: "u", repo: "r", tag }));
      else writes.push(write(model, journal, { op: "tag", upstream: "u", repo: "r", tag, pointer: pointer(i) }));
      if (i % 3 === 0)
        writes.push(write(model, journal, { op: "link", upstream: "u", repo: `r${i % 13}`, digests: [`sha256:${i}`] }));
      if (i % 97 === 0) writes.push(write(model, journal, { op: "purge", upstream: "u", repo: `r${i % 13}` }));
      if (i % 100 === 0) await Promise.all(writes.splice(0));
    }
    await Promise.all(writes);
    await journal.close();
    expect(errors).toEqual([]);
    // Several compactions ran among the bursts (how many depends on the machine's speed: 5 under a loaded CI,
    // more when idle; each one had bursts of unawaited appends arriving while it wrote its snapshot).
    expect(compactions).toBeGreaterThanOrEqual(2);
    expect(await readdir(dir)).toEqual([JOURNAL_FILE]);
    const reloaded = new Model();
    const { journal: again } = await openWith(dir, reloaded);
    expect(again.loaded.skipped).toBe(0);
    expect(reloaded.tags).toEqual(model.tags);
    expect(reloaded.links).toEqual(model.links);
    await again.close();
  });

  it("removes temp files of an interrupted compaction at open, and nothing else", async () => {
    const dir = await tempDir();
    await writeFile(join(dir, `${JOURNAL_FILE}.1234.abcdef.tmp`), "half a snapshot");
    await writeFile(join(dir, "unrelated.tmp"), "not ours");
    const { journal } = await openWith(dir, new Model());
    expect(journal.loaded.removedTempFiles).toBe(1);
    await journal.close();
    expect((await readdir(dir)).sort()).toEqual([JOURNAL_FILE, "unrelated.tmp"]);
  });

  it("closes once, and refuses appends afterwards", async () => {
    const dir = await tempDir();
    const model = new Model();
    const { journal } = await openWith(dir, model);
    const pending = journal.append({ op: "purge", upstream: "u", repo: "r" });
    await Promise.all([journal.close(), journal.close()]);
    await pending;
    await expect(journal.append({ op: "purge", upstream: "u", repo: "r" })).rejects.toThrow(/closed/);
    expect(await lines(dir)).toHaveLength(1);
  });
});
