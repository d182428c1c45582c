// What the journal gives the embedded store beyond the conformance suite: state that survives a close and
// reopen, a crash (`kill -9` of a real process), a torn journal, and compaction, within the LRU bounds.
import { appendFile, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import {
  EmbeddedMetadataStore,
  type EmbeddedMetadataStoreOptions,
} from "../../../src/metadata/embedded-metadata-store.ts";
import type { TagPointer } from "../../../src/metadata/metadata-store.ts";
import { JOURNAL_FILE } from "../../../src/metadata/tag-journal.ts";
import { startProcess, Teardown, waitFor } from "../../harness/processes.ts";

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});
const teardown = new Teardown();
afterAll(() => teardown.run());

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "memory-metadata-"));
  dirs.push(dir);
  return dir;
}

const UP = "docker.io";
const pointer = (n: number): TagPointer => ({
  digest: `sha256:${n.toString(16).padStart(64, "0")}`,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  checkedAt: 1_700_000_000_000 + n,
});

/** Opens a store whose journal errors fail the test instead of becoming process warnings. */
async function openStore(dir: string, opts: EmbeddedMetadataStoreOptions = {}): Promise<EmbeddedMetadataStore> {
  return EmbeddedMetadataStore.open({
    dir,
    maxLinks: 10_000,
    onError: (err) => {
      throw err;
    },
    ...opts,
  });
}

describe("EmbeddedMetadataStore persistence", () => {
  it("knows its tags and links again after close and reopen; missing-records and locks are not kept", async () => {
    const dir = await tempDir();
    const store = await openStore(dir);
    await store.putTag(UP, "library/alpine", "3.20", pointer(1));
    await store.putTag(UP, "library/alpine", "latest", pointer(2));
    await store.putTag(UP, "a/b-c/d__e", "v1", pointer(3));
    await store.addLinks(UP, "library/alpine", [pointer(1).digest, pointer(9).digest]);
    await store.putMissing(UP, "library/alpine", "gone", 60_000);
    expect(await store.tryLock("x", 60_000)).toBeDefined();
    await store.close();

    const reopened = await openStore(dir);
    expect(await reopened.loadReport()).toEqual({ records: 4, skipped: 0, removedTempFiles: 0 });
    expect(await reopened.getTag(UP, "library/alpine", "3.20")).toEqual(pointer(1));
    expect((await reopened.listTags(UP, "library/alpine")).sort()).toEqual(["3.20", "latest"]);
    expect(await reopened.getTag(UP, "a/b-c/d__e", "v1")).toEqual(pointer(3));
    expect(await reopened.hasLink(UP, "library/alpine", pointer(9).digest)).toBe(true);
    expect(await reopened.hasLink("other.io", "library/alpine", pointer(9).digest)).toBe(false);
    expect(await reopened.isMissing(UP, "library/alpine", "gone")).toBe(false);
    expect(await reopened.tryLock("x", 60_000)).toBeDefined();
    await reopened.close();
  });

  it("knows the provenance of content again after a reopen and after compaction, journalling each entry once", async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { compactRatio: 2, compactMinEntries: 20 });
    for (let i = 0; i < 50; i++) await store.addProvenance(UP, [pointer(1).digest, pointer(2).digest]);
    await store.addProvenance("other.io", [pointer(2).digest]);
    await store.close();
    expect((await readFile(join(dir, JOURNAL_FILE), "utf8")).trim().split("\n")).toHaveLength(2);

    const reopened = await openStore(dir, { compactRatio: 2, compactMinEntries: 20 });
    expect(await reopened.provenance(pointer(1).digest)).toEqual([UP]);
    expect((await reopened.provenance(pointer(2).digest)).sort()).toEqual([UP, "other.io"].sort());
    // Enough tag churn to compact: the snapshot must carry provenance over.
    for (let i = 0; i < 200; i++) await reopened.putTag(UP, "r", `t${i % 5}`, pointer(i));
    await reopened.close();
    expect(
      (await readFile(join(dir, JOURNAL_FILE), "utf8")).trim().split("\n").length,
      "the journal was compacted",
    ).toBeLessThan(100);

    const third = await openStore(dir);
    expect(await third.loadReport()).toMatchObject({ skipped: 0 });
    expect(await third.provenance(pointer(1).digest)).toEqual([UP]);
    expect((await third.provenance(pointer(2).digest)).sort()).toEqual([UP, "other.io"].sort());
    await third.close();
  });

  it("keeps at most maxProvenance (digest, upstream) entries, evicting the least recently used digest", async () => {
    const store = new EmbeddedMetadataStore({ maxProvenance: 3 });
    await store.addProvenance(UP, [pointer(1).digest, pointer(2).digest]);
    await store.addProvenance("other.io", [pointer(2).digest]);
    expect(await store.provenance(pointer(1).digest)).toEqual([UP]); // now the most recent
    await store.addProvenance(UP, [pointer(3).digest]);
    expect(await store.provenance(pointer(2).digest)).toEqual([]);
    expect(await store.provenance(pointer(1).digest)).toEqual([UP]);
    expect(await store.provenance(pointer(3).digest)).toEqual([UP]);
    await store.close();
  });

  it("keeps deletions and purges across a reopen", async () => {
    const dir = await tempDir();
    const store = await openStore(dir);
    await store.putTag(UP, "r", "a", pointer(1));
    await store.putTag(UP, "r", "b", pointer(2));
    await store.deleteTag(UP, "r", "a");
    await store.putTag(UP, "gone", "t", pointer(3));
    await store.addLinks(UP, "gone", [pointer(3).digest]);
    await store.deleteRepository(UP, "gone");
    await store.close();

    const reopened = await openStore(dir);
    expect(await reopened.listTags(UP, "r")).toEqual(["b"]);
    expect(await reopened.getTag(UP, "r", "a")).toBeUndefined();
    expect(await reopened.listTags(UP, "gone")).toEqual([]);
    expect(await reopened.hasLink(UP, "gone", pointer(3).digest)).toBe(false);
    await reopened.close();
  });

  it("journals a link once, however often it is added again", async () => {
    const dir = await tempDir();
    const store = await openStore(dir);
    for (let i = 0; i < 50; i++) await store.addLinks(UP, "r", [pointer(1).digest, pointer(2).digest]);
    for (let i = 0; i < 50; i++) await store.putTag(UP, "r", "t", pointer(1));
    await store.close();
    expect((await readFile(join(dir, JOURNAL_FILE), "utf8")).trim().split("\n")).toHaveLength(2);
  });

  it("replays the journal under the pointer ordering: a line older than the pointer loaded does not roll it back", async () => {
    const dir = await tempDir();
    const store = await openStore(dir);
    await store.putTag(UP, "r", "t", pointer(2));
    await store.putTag(UP, "r", "t", pointer(1)); // refused, and not journalled
    await store.close();
    expect((await readFile(join(dir, JOURNAL_FILE), "utf8")).trim().split("\n")).toHaveLength(1);
    // An older line after a newer one, as written when the store had dropped the newer pointer from its LRU.
    const { digest, mediaType, checkedAt } = pointer(1);
    await appendFile(
      join(dir, JOURNAL_FILE),
      `${JSON.stringify(["tag", UP, "r", "t", digest, mediaType, checkedAt])}\n`,
    );

    const reopened = await openStore(dir);
    expect(await reopened.loadReport()).toMatchObject({ records: 2, skipped: 0 });
    expect(await reopened.getTag(UP, "r", "t")).toEqual(pointer(2));
    await reopened.close();
  });

  it("loads the rest of a journal whose last line was torn by a crash", async () => {
    const dir = await tempDir();
    const store = await openStore(dir);
    await store.putTag(UP, "r", "a", pointer(1));
    await store.addLinks(UP, "r", [pointer(1).digest]);
    await store.close();
    await appendFile(join(dir, JOURNAL_FILE), '["tag","docker.io","r","b","sha256:00');

    const reopened = await openStore(dir);
    expect(await reopened.loadReport()).toMatchObject({ records: 2, skipped: 1 });
    expect(await reopened.listTags(UP, "r")).toEqual(["a"]);
    expect(await reopened.hasLink(UP, "r", pointer(1).digest)).toBe(true);
    await reopened.putTag(UP, "r", "c", pointer(3));
    await reopened.close();

    const third = await openStore(dir);
    expect(await third.loadReport()).toMatchObject({ skipped: 0 });
    expect((await third.listTags(UP, "r")).sort()).toEqual(["a", "c"]);
    await third.close();
  });

  it("compacts: content kept, garbage and superseded lines gone, no temp files left", async () => {
    const dir = await tempDir();
    await writeFile(join(dir, JOURNAL_FILE), "not json at all\n");
    const store = await openStore(dir, { compactRatio: 2, compactMinEntries: 20 });
    for (let i = 0; i < 1_000; i++) await store.putTag(UP, "r", `t${i % 10}`, pointer(i));
    await store.addLinks(UP, "r", [pointer(1).digest]);
    await store.close();
    const { size } = await stat(join(dir, JOURNAL_FILE));
    // 1 000 tag lines would be ~140 KB; at most ratio × floor of them survive.
    expect(size).toBeLessThan(41 * 150);
    expect(await readdir(dir)).toEqual([JOURNAL_FILE]);

    const reopened = await openStore(dir);
    expect(await reopened.loadReport()).toMatchObject({ skipped: 0 });
    for (let t = 0; t < 10; t++) expect(await reopened.getTag(UP, "r", `t${t}`)).toEqual(pointer(990 + t));
    expect(await reopened.hasLink(UP, "r", pointer(1).digest)).toBe(true);
    await reopened.close();
  });

  it("stays within its bounds when the journal holds more than they allow, keeping the most recent", async () => {
    const dir = await tempDir();
    const store = await openStore(dir, { maxTags: 1_000 });
    for (let i = 0; i < 50; i++) await store.putTag(UP, "r", `t${i}`, pointer(i));
    await store.close();
    const small = await openStore(dir, { maxTags: 5 });
    expect((await small.listTags(UP, "r")).sort()).toEqual(["t45", "t46", "t47", "t48", "t49"]);
    expect(await small.getTag(UP, "r", "t0")).toBeUndefined();
    await small.close();
  });

  it("keeps at most maxLinks links, evicting the least recently used", async () => {
    const store = new EmbeddedMetadataStore({ maxLinks: 3 });
    await store.addLinks(UP, "r", [pointer(1).digest, pointer(2).digest, pointer(3).digest]);
    expect(await store.hasLink(UP, "r", pointer(1).digest)).toBe(true); // now the most recent
    await store.addLinks(UP, "r", [pointer(4).digest]);
    expect(await store.hasLink(UP, "r", pointer(2).digest)).toBe(false);
    for (const i of [1, 3, 4]) expect(await store.hasLink(UP, "r", pointer(i).digest)).toBe(true);
    await store.close();
  });

  it("survives kill -9: every write that had resolved is there after a restart", async () => {
    const dir = await tempDir();
    const storeModule = fileURLToPath(new URL("../../../src/metadata/embedded-metadata-store.ts", import.meta.url));
    // A real process, so nothing of it survives but what reached the kernel; it never closes the store.
    const script = `
      const { EmbeddedMetadataStore } = await import(${JSON.stringify(storeModule)});
      const store = await EmbeddedMetadataStore.open({ dir: ${JSON.stringify(dir)}, maxLinks: 1000, syncIntervalMs: 60000 });
      for (let i = 0; i < 200; i++) {
        await store.putTag("docker.io", "library/app", "t" + i, { digest: "sha256:" + String(i).padStart(64, "0"), mediaType: "m", checkedAt: i });
        await store.addLinks("docker.io", "library/app", ["sha256:" + String(i).padStart(64, "0")]);
      }
      console.log("written");
      setInterval(() => {}, 1000);
    `;
    let written = false;
    const child = teardown.track(
      startProcess(process.execPath, ["--input-type=module", "--no-warnings", "-e", script], {
        name: "journal writer",
        onLine: (line) => {
          if (line === "written") written = true;
        },
      }),
    );
    await waitFor(async () => written, { timeoutMs: 20_000, what: "the child to finish writing", whileRunning: child });
    process.kill(child.pid, "SIGKILL");
    expect(await child.exited).toBeNull();

    const reopened = await openStore(dir);
    expect((await reopened.listTags("docker.io", "library/app")).length).toBe(200);
    expect(await reopened.getTag("docker.io", "library/app", "t199")).toEqual({
      digest: `sha256:${"199".padStart(64, "0")}`,
      mediaType: "m",
      checkedAt: 199,
    });
    expect(await reopened.hasLink("docker.io", "library/app", `sha256:${"0".padStart(64, "0")}`)).toBe(true);
    await reopened.close();
  });

  it("reports a journal it cannot open from open(), and from every call of a store built with new", async () => {
    const dir = await tempDir();
    const notADir = join(dir, "file");
    await writeFile(notADir, "x");
    await expect(EmbeddedMetadataStore.open({ dir: notADir })).rejects.toThrow();
    const store = new EmbeddedMetadataStore({ dir: notADir });
    await expect(store.getTag(UP, "r", "t")).rejects.toThrow();
    await store.close();
  });

  it("answers from memory when a journal write fails, and reports the failure instead of throwing", async () => {
    const dir = await tempDir();
    const errors: Error[] = [];
    const store = await EmbeddedMetadataStore.open({ dir, maxLinks: 10, onError: (err) => errors.push(err) });
    await store.close();
    // The journal is closed, so this write cannot reach it: the call still succeeds and the state is in memory.
    await store.putTag(UP, "r", "t", pointer(1));
    expect(await store.getTag(UP, "r", "t")).toEqual(pointer(1));
    expect(errors.map((e) => e.message)).toEqual([expect.stringMatching(/closed/)]);
  });

  it("works without a directory, constructed with no arguments", async () => {
    const store = new EmbeddedMetadataStore();
    await store.putTag(UP, "r", "t", pointer(1));
    expect(await store.getTag(UP, "r", "t")).toEqual(pointer(1));
    expect(await store.loadReport()).toBeUndefined();
    await store.close();
  });
});
