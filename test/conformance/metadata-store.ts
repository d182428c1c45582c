// The one conformance suite every MetadataStore implementation runs (src/metadata/metadata-store.ts): the embedded
// store with and without its journal, Redis, and the failover wrapper. Behaviour that callers rely on is pinned
// here once, so the implementations cannot drift apart. After every test the store is closed (twice: close is
// idempotent), every directory it was given must hold no temp files, and cleanup must remove those directories.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { MetadataStore, TagPointer } from "../../src/metadata/metadata-store.ts";

export interface MetadataStoreFixture {
  store: MetadataStore;
  /** Releases what the factory made (temp dirs, keys, clients). Called after the suite has closed the store. */
  cleanup(): Promise<void>;
  /** Directories the store writes to: checked for temp files after each test, and for removal by cleanup. */
  dirs?: readonly string[];
}

/** Short enough to keep the suite fast, long enough that a loaded 2-core machine does not expire things early. */
const TTL_MS = 150;
const PAST_TTL_MS = 400;

const UP = "registry.example";
const OTHER_UP = "mirror.example:5000";
const MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const INDEX = "application/vnd.oci.image.index.v1+json";

export function digestOf(text: string): string {
  return `sha256:${createHash("sha256").update(text).digest("hex")}`;
}

function pointer(text: string, checkedAt = 1_700_000_000_000, mediaType = MANIFEST): TagPointer {
  return { digest: digestOf(text), mediaType, checkedAt };
}

export function describeMetadataStore(name: string, factory: () => Promise<MetadataStoreFixture>): void {
  describe(`MetadataStore conformance: ${name}`, () => {
    let fixture: MetadataStoreFixture | undefined;
    let store: MetadataStore;

    beforeEach(async () => {
      fixture = await factory();
      store = fixture.store;
    });

    afterEach(async () => {
      const current = fixture;
      fixture = undefined;
      if (current === undefined) return;
      const dirs = current.dirs ?? [];
      let leftovers: string[];
      try {
        await current.store.close();
        await current.store.close();
        leftovers = (await Promise.all(dirs.map((dir) => tempFilesUnder(dir)))).flat();
      } finally {
        await current.cleanup();
      }
      expect(leftovers, "temp files left in the store's directories").toEqual([]);
      expect(
        dirs.filter((dir) => existsSync(dir)),
        "directories cleanup did not remove",
      ).toEqual([]);
    });

    describe("tag pointers", () => {
      it("returns undefined for a tag never stored", async () => {
        expect(await store.getTag(UP, "library/alpine", "latest")).toBeUndefined();
      });

      it("returns what was stored, field for field", async () => {
        const p = pointer("a", 1_700_000_123_456, INDEX);
        await store.putTag(UP, "library/alpine", "3.20", p);
        expect(await store.getTag(UP, "library/alpine", "3.20")).toEqual(p);
      });

      it("keeps only the three pointer fields", async () => {
        const p = { ...pointer("a"), extra: "not part of a pointer" } as TagPointer;
        await store.putTag(UP, "r", "t", p);
        expect(await store.getTag(UP, "r", "t")).toEqual(pointer("a"));
      });

      it("is not changed by mutating the object passed in or handed out", async () => {
        const p = pointer("a");
        await store.putTag(UP, "r", "t", p);
        p.digest = digestOf("mutated");
        const got = await store.getTag(UP, "r", "t");
        expect(got).toEqual(pointer("a"));
        got!.checkedAt = 0;
        expect(await store.getTag(UP, "r", "t")).toEqual(pointer("a"));
      });

      it("overwrites a pointer, including one with only a newer checkedAt", async () => {
        await store.putTag(UP, "r", "t", pointer("a", 1));
        await store.putTag(UP, "r", "t", pointer("b", 2));
        expect(await store.getTag(UP, "r", "t")).toEqual(pointer("b", 2));
        await store.putTag(UP, "r", "t", pointer("b", 3));
        expect(await store.getTag(UP, "r", "t")).toEqual(pointer("b", 3));
        expect(await store.listTags(UP, "r")).toEqual(["t"]);
      });

      it("never replaces a pointer with one checked earlier; an equally recent one replaces it", async () => {
        await store.putTag(UP, "r", "t", pointer("new", 2_000));
        await store.putTag(UP, "r", "t", pointer("old", 1_000));
        expect(await store.getTag(UP, "r", "t")).toEqual(pointer("new", 2_000));
        await store.putTag(UP, "r", "t", pointer("same-time", 2_000));
        expect(await store.getTag(UP, "r", "t")).toEqual(pointer("same-time", 2_000));
        expect(await store.listTags(UP, "r")).toEqual(["t"]);
      });

      it("keeps the pointer checked last, whatever order concurrent writes arrive in", async () => {
        // Interleaved so that every store sees older writes after newer ones.
        const times = [5, 1, 9, 3, 8, 2, 7, 4, 6].map((n) => 1_700_000_000_000 + n);
        await Promise.all(times.map((t) => store.putTag(UP, "r", "t", pointer(`at ${t}`, t))));
        expect(await store.getTag(UP, "r", "t")).toEqual(pointer(`at ${Math.max(...times)}`, Math.max(...times)));
      });

      it("a deleted pointer is replaced by any later put, even one checked earlier", async () => {
        await store.putTag(UP, "r", "t", pointer("new", 2_000));
        await store.deleteTag(UP, "r", "t");
        await store.putTag(UP, "r", "t", pointer("old", 1_000));
        expect(await store.getTag(UP, "r", "t")).toEqual(pointer("old", 1_000));
      });

      it("deletes a pointer, and deleting a missing one is not an error", async () => {
        await store.putTag(UP, "r", "t", pointer("a"));
        await store.deleteTag(UP, "r", "t");
        expect(await store.getTag(UP, "r", "t")).toBeUndefined();
        await store.deleteTag(UP, "r", "t");
        await store.deleteTag(UP, "never/seen", "t");
        expect(await store.listTags(UP, "r")).toEqual([]);
      });

      it("can store a tag again after deleting it", async () => {
        await store.putTag(UP, "r", "t", pointer("a"));
        await store.deleteTag(UP, "r", "t");
        await store.putTag(UP, "r", "t", pointer("b"));
        expect(await store.getTag(UP, "r", "t")).toEqual(pointer("b"));
        expect(await store.listTags(UP, "r")).toEqual(["t"]);
      });

      it("lists the tags of one repository, and nothing for an unknown one", async () => {
        expect(await store.listTags(UP, "r")).toEqual([]);
        for (const tag of ["latest", "1.0", "1.0.1", "v2_RC-1"]) await store.putTag(UP, "r", tag, pointer(tag));
        await store.putTag(UP, "r/sub", "other", pointer("x"));
        await store.deleteTag(UP, "r", "1.0");
        expect((await store.listTags(UP, "r")).sort()).toEqual(["1.0.1", "latest", "v2_RC-1"]);
        expect(await store.listTags(UP, "unknown")).toEqual([]);
      });

      it("keeps pointers under keys outside the tag grammar (the referrers lists' `referrers:sha256:<hex>`) as any tag", async () => {
        // referrers-cache.ts relies on this: its key cannot collide with a tag, and callers that list tags filter it.
        const key = `referrers:${digestOf("subject")}`;
        await store.putTag(UP, "r", key, pointer("list", 1_700_000_000_000, INDEX));
        await store.putTag(UP, "r", "latest", pointer("image"));
        expect(await store.getTag(UP, "r", key)).toEqual(pointer("list", 1_700_000_000_000, INDEX));
        expect((await store.listTags(UP, "r")).sort()).toEqual(["latest", key]);
        await store.deleteTag(UP, "r", key);
        expect(await store.getTag(UP, "r", key)).toBeUndefined();
        await store.putTag(UP, "r", key, pointer("list", 1_700_000_000_001, INDEX));
        await store.deleteRepository(UP, "r");
        expect(await store.getTag(UP, "r", key)).toBeUndefined();
      });

      it("lists the repositories of an upstream that have tags, and only those", async () => {
        expect(await store.listRepositories(UP)).toEqual([]);
        await store.putTag(UP, "a/one", "v1", pointer("1"));
        await store.putTag(UP, "a/two", "v1", pointer("2"));
        await store.putTag(UP, "a/two", "v2", pointer("3"));
        await store.putTag("other.example", "a/three", "v1", pointer("4"));
        await store.addLinks(UP, "links-only", [pointer("5").digest]);
        expect((await store.listRepositories(UP)).sort()).toEqual(["a/one", "a/two"]);
        await store.deleteTag(UP, "a/one", "v1");
        await store.deleteRepository(UP, "a/two");
        expect(await store.listRepositories(UP)).toEqual([]);
        expect(await store.listRepositories("other.example")).toEqual(["a/three"]);
      });

      it("keeps every one of many concurrent writes", async () => {
        const tags = Array.from({ length: 200 }, (_, i) => `t${i}`);
        await Promise.all(tags.map((tag) => store.putTag(UP, "busy", tag, pointer(tag))));
        await Promise.all(tags.slice(0, 50).map((tag) => store.deleteTag(UP, "busy", tag)));
        expect((await store.listTags(UP, "busy")).sort()).toEqual(tags.slice(50).sort());
        expect(await store.getTag(UP, "busy", "t199")).toEqual(pointer("t199"));
      });

      it("applies a put and a delete of the same tag in call order", async () => {
        const done = [
          store.putTag(UP, "r", "t", pointer("a")),
          store.deleteTag(UP, "r", "t"),
          store.putTag(UP, "r", "u", pointer("b")),
        ];
        done.push(store.deleteTag(UP, "r", "u"), store.putTag(UP, "r", "u", pointer("c")));
        await Promise.all(done);
        expect(await store.getTag(UP, "r", "t")).toBeUndefined();
        expect(await store.getTag(UP, "r", "u")).toEqual(pointer("c"));
      });
    });

    describe("isolation between repositories and upstreams", () => {
      // Names that collide under naive concatenation: prefixes of each other, a port that looks like a path.
      const scopes = [
        [UP, "a"],
        [UP, "a/b"],
        [UP, "a-b"],
        [UP, "a/b/c"],
        ["registry.example:5000", "a"],
        ["registry", "example/a"],
        [OTHER_UP, "a"],
      ] as const;

      it("never shows a tag under another repository or upstream", async () => {
        for (const [i, [up, repo]] of scopes.entries()) await store.putTag(up, repo, "t", pointer(String(i)));
        for (const [i, [up, repo]] of scopes.entries()) {
          expect(await store.getTag(up, repo, "t")).toEqual(pointer(String(i)));
          expect(await store.listTags(up, repo)).toEqual(["t"]);
        }
        await store.deleteTag(UP, "a", "t");
        expect(await store.getTag(UP, "a/b", "t")).toEqual(pointer("1"));
        expect(await store.getTag(OTHER_UP, "a", "t")).toEqual(pointer("6"));
      });

      it("never shows a link under another repository or upstream", async () => {
        const [first, ...others] = scopes;
        await store.addLinks(first[0], first[1], [digestOf("secret")]);
        expect(await store.hasLink(first[0], first[1], digestOf("secret"))).toBe(true);
        for (const [up, repo] of others) expect(await store.hasLink(up, repo, digestOf("secret"))).toBe(false);
      });

      it("never shows a missing-record under another repository or upstream", async () => {
        await store.putMissing(UP, "a", "latest", 60_000);
        expect(await store.isMissing(UP, "a", "latest")).toBe(true);
        for (const [up, repo] of scopes.slice(1)) expect(await store.isMissing(up, repo, "latest")).toBe(false);
      });
    });

    describe("unusual but valid names", () => {
      const repos = ["a/b-c/d__e", "library/x.y", "a0/b.c-d_e/f--g", "x".repeat(200), `${"deep/".repeat(30)}end`];
      const tags = ["latest", "V1.0_RC-1", "_underscore", "a".repeat(128), "1.2.3-alpine3.20"];

      it("stores, lists, links and purges them exactly", async () => {
        for (const repo of repos) {
          for (const tag of tags) await store.putTag(UP, repo, tag, pointer(`${repo}:${tag}`));
          await store.addLinks(UP, repo, [digestOf(repo), `sha512:${"ab".repeat(64)}`]);
          await store.putMissing(UP, repo, digestOf("gone"), 60_000);
        }
        for (const repo of repos) {
          expect((await store.listTags(UP, repo)).sort()).toEqual([...tags].sort());
          expect(await store.getTag(UP, repo, "V1.0_RC-1")).toEqual(pointer(`${repo}:V1.0_RC-1`));
          expect(await store.hasLink(UP, repo, `sha512:${"ab".repeat(64)}`)).toBe(true);
          expect(await store.isMissing(UP, repo, digestOf("gone"))).toBe(true);
        }
        await store.deleteRepository(UP, "a/b-c/d__e");
        expect(await store.listTags(UP, "a/b-c/d__e")).toEqual([]);
        expect(await store.hasLink(UP, "a/b-c/d__e", digestOf("a/b-c/d__e"))).toBe(false);
        expect((await store.listTags(UP, "library/x.y")).length).toBe(tags.length);
      });
    });

    describe("links", () => {
      it("knows only links that were added", async () => {
        expect(await store.hasLink(UP, "r", digestOf("x"))).toBe(false);
        await store.addLinks(UP, "r", [digestOf("x"), digestOf("y")]);
        expect(await store.hasLink(UP, "r", digestOf("x"))).toBe(true);
        expect(await store.hasLink(UP, "r", digestOf("y"))).toBe(true);
        expect(await store.hasLink(UP, "r", digestOf("z"))).toBe(false);
      });

      it("accepts an empty list and duplicates, and adding again is harmless", async () => {
        await store.addLinks(UP, "r", []);
        await store.addLinks(UP, "r", [digestOf("x"), digestOf("x")]);
        await store.addLinks(UP, "r", [digestOf("x")]);
        expect(await store.hasLink(UP, "r", digestOf("x"))).toBe(true);
        expect(await store.hasLink(UP, "r", digestOf("y"))).toBe(false);
      });

      it("are independent of tag pointers", async () => {
        await store.addLinks(UP, "r", [digestOf("x")]);
        await store.putTag(UP, "r", "t", pointer("x"));
        await store.deleteTag(UP, "r", "t");
        expect(await store.hasLink(UP, "r", digestOf("x"))).toBe(true);
      });
    });

    describe("provenance", () => {
      it("knows, per digest, every upstream recorded for it and no other", async () => {
        expect(await store.provenance(digestOf("x"))).toEqual([]);
        await store.addProvenance(UP, [digestOf("x"), digestOf("y")]);
        await store.addProvenance(OTHER_UP, [digestOf("x")]);
        expect((await store.provenance(digestOf("x"))).sort()).toEqual([OTHER_UP, UP].sort());
        expect(await store.provenance(digestOf("y"))).toEqual([UP]);
        expect(await store.provenance(digestOf("z"))).toEqual([]);
      });

      it("accepts an empty list and duplicates, and adding again is harmless", async () => {
        await store.addProvenance(UP, []);
        await store.addProvenance(UP, [digestOf("x"), digestOf("x")]);
        await store.addProvenance(UP, [digestOf("x")]);
        expect(await store.provenance(digestOf("x"))).toEqual([UP]);
      });

      it("never confuses upstreams whose names are prefixes of each other, or digests of other algorithms", async () => {
        const sha512 = `sha512:${"ab".repeat(64)}`;
        await store.addProvenance("registry.example:5000", [digestOf("x"), sha512]);
        expect(await store.provenance(digestOf("x"))).toEqual(["registry.example:5000"]);
        expect(await store.provenance(sha512)).toEqual(["registry.example:5000"]);
        expect(await store.provenance(`sha512:${"ab".repeat(63)}`)).toEqual([]);
      });

      it("is independent of links, and outlives the purge of a repository", async () => {
        await store.addLinks(UP, "r", [digestOf("linked")]);
        expect(await store.provenance(digestOf("linked"))).toEqual([]);
        await store.addProvenance(UP, [digestOf("served")]);
        expect(await store.hasLink(UP, "r", digestOf("served"))).toBe(false);
        await store.deleteRepository(UP, "r");
        expect(await store.provenance(digestOf("served"))).toEqual([UP]);
      });

      it("keeps every one of many concurrent writes", async () => {
        const upstreams = Array.from({ length: 20 }, (_, i) => `up${i}.example`);
        const digests = Array.from({ length: 20 }, (_, i) => digestOf(`d${i}`));
        await Promise.all(upstreams.map((up) => store.addProvenance(up, digests)));
        for (const digest of digests) expect((await store.provenance(digest)).sort()).toEqual([...upstreams].sort());
      });
    });

    describe("missing-records", () => {
      it("remembers a reference as missing, for tags and digests alike", async () => {
        expect(await store.isMissing(UP, "r", "latest")).toBe(false);
        await store.putMissing(UP, "r", "latest", 60_000);
        await store.putMissing(UP, "r", digestOf("gone"), 60_000);
        expect(await store.isMissing(UP, "r", "latest")).toBe(true);
        expect(await store.isMissing(UP, "r", digestOf("gone"))).toBe(true);
        expect(await store.isMissing(UP, "r", "other")).toBe(false);
      });

      it("forgets it after its TTL", async () => {
        await store.putMissing(UP, "r", "latest", TTL_MS);
        await store.putMissing(UP, "r", "kept", 60_000);
        expect(await store.isMissing(UP, "r", "latest")).toBe(true);
        await sleep(PAST_TTL_MS);
        expect(await store.isMissing(UP, "r", "latest")).toBe(false);
        expect(await store.isMissing(UP, "r", "kept")).toBe(true);
      });

      it("takes the TTL of the latest put", async () => {
        await store.putMissing(UP, "r", "short-then-long", TTL_MS);
        await store.putMissing(UP, "r", "short-then-long", 60_000);
        await store.putMissing(UP, "r", "long-then-short", 60_000);
        await store.putMissing(UP, "r", "long-then-short", TTL_MS);
        await sleep(PAST_TTL_MS);
        expect(await store.isMissing(UP, "r", "short-then-long")).toBe(true);
        expect(await store.isMissing(UP, "r", "long-then-short")).toBe(false);
      });

      it("clears a record, and clearing a missing one is not an error", async () => {
        await store.putMissing(UP, "r", "latest", 60_000);
        await store.clearMissing(UP, "r", "latest");
        expect(await store.isMissing(UP, "r", "latest")).toBe(false);
        await store.clearMissing(UP, "r", "latest");
        await store.clearMissing(UP, "never/seen", "x");
      });

      it("are independent of tag pointers", async () => {
        await store.putTag(UP, "r", "latest", pointer("a"));
        await store.putMissing(UP, "r", "latest", 60_000);
        expect(await store.getTag(UP, "r", "latest")).toEqual(pointer("a"));
        await store.clearMissing(UP, "r", "latest");
        expect(await store.getTag(UP, "r", "latest")).toEqual(pointer("a"));
      });
    });

    describe("locks", () => {
      it("are exclusive until unlocked by their owner", async () => {
        const token = await store.tryLock("revalidate/x", 60_000);
        expect(typeof token).toBe("string");
        expect(await store.tryLock("revalidate/x", 60_000)).toBeUndefined();
        await store.unlock("revalidate/x", token!);
        const next = await store.tryLock("revalidate/x", 60_000);
        expect(typeof next).toBe("string");
        expect(next).not.toBe(token);
      });

      it("give exactly one of many concurrent contenders the lock", async () => {
        const tokens = await Promise.all(Array.from({ length: 20 }, () => store.tryLock("contended", 60_000)));
        expect(tokens.filter((t) => t !== undefined)).toHaveLength(1);
      });

      it("are independent by name", async () => {
        expect(await store.tryLock("a", 60_000)).toBeDefined();
        expect(await store.tryLock("b", 60_000)).toBeDefined();
        expect(await store.tryLock("a/b", 60_000)).toBeDefined();
        expect(await store.tryLock("a", 60_000)).toBeUndefined();
      });

      it("are not released by someone else's token", async () => {
        const token = await store.tryLock("x", 60_000);
        await store.unlock("x", "not-the-token");
        await store.unlock("x", "");
        expect(await store.tryLock("x", 60_000)).toBeUndefined();
        const other = await store.tryLock("y", 60_000);
        await store.unlock("x", other!);
        expect(await store.tryLock("x", 60_000)).toBeUndefined();
        await store.unlock("x", token!);
        expect(await store.tryLock("x", 60_000)).toBeDefined();
      });

      it("expire after their TTL, and a stale owner cannot release the next holder", async () => {
        const first = await store.tryLock("x", TTL_MS);
        expect(first).toBeDefined();
        await sleep(PAST_TTL_MS);
        const second = await store.tryLock("x", 60_000);
        expect(second).toBeDefined();
        await store.unlock("x", first!);
        expect(await store.tryLock("x", 60_000)).toBeUndefined();
      });

      it("unlocking a lock nobody holds is not an error", async () => {
        await store.unlock("never-taken", "whatever");
      });
    });

    describe("deleteRepository", () => {
      it("forgets every tag, link and missing-record of that repository", async () => {
        await store.putTag(UP, "r", "a", pointer("a"));
        await store.putTag(UP, "r", "b", pointer("b"));
        await store.addLinks(UP, "r", [digestOf("a"), digestOf("b")]);
        await store.putMissing(UP, "r", "c", 60_000);
        await store.deleteRepository(UP, "r");
        expect(await store.getTag(UP, "r", "a")).toBeUndefined();
        expect(await store.getTag(UP, "r", "b")).toBeUndefined();
        expect(await store.listTags(UP, "r")).toEqual([]);
        expect(await store.hasLink(UP, "r", digestOf("a"))).toBe(false);
        expect(await store.isMissing(UP, "r", "c")).toBe(false);
      });

      it("touches no other repository or upstream", async () => {
        const neighbours = [
          [UP, "r/sub"],
          [UP, "r-2"],
          [UP, "rr"],
          [UP, "x/r"],
          [OTHER_UP, "r"],
        ] as const;
        for (const [up, repo] of [[UP, "r"] as const, ...neighbours]) {
          await store.putTag(up, repo, "t", pointer(`${up}/${repo}`));
          await store.addLinks(up, repo, [digestOf("shared")]);
          await store.putMissing(up, repo, "gone", 60_000);
        }
        const lock = await store.tryLock("r", 60_000);
        await store.deleteRepository(UP, "r");
        for (const [up, repo] of neighbours) {
          expect(await store.getTag(up, repo, "t")).toEqual(pointer(`${up}/${repo}`));
          expect(await store.listTags(up, repo)).toEqual(["t"]);
          expect(await store.hasLink(up, repo, digestOf("shared"))).toBe(true);
          expect(await store.isMissing(up, repo, "gone")).toBe(true);
        }
        expect(lock).toBeDefined();
        expect(await store.tryLock("r", 60_000)).toBeUndefined();
      });

      it("of an unknown repository is not an error, and the repository can be filled again", async () => {
        await store.deleteRepository(UP, "never/seen");
        await store.putTag(UP, "r", "t", pointer("a"));
        await store.deleteRepository(UP, "r");
        await store.putTag(UP, "r", "t", pointer("b"));
        await store.addLinks(UP, "r", [digestOf("b")]);
        expect(await store.getTag(UP, "r", "t")).toEqual(pointer("b"));
        expect(await store.listTags(UP, "r")).toEqual(["t"]);
        expect(await store.hasLink(UP, "r", digestOf("b"))).toBe(true);
      });
    });
  });
}

/** Files under `dir` whose names say they are temporary, as paths relative to `dir`. */
async function tempFilesUnder(dir: string): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(dir, { recursive: true, withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  return entries
    .filter((e) => /(^|[.\-_])(tmp|temp)([.\-_]|$)|~$|\.partial$/i.test(e.name))
    .map((e) => join(e.parentPath, e.name).slice(dir.length + 1));
}
