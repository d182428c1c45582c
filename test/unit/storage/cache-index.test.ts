import { describe, expect, it } from "vitest";
import { CacheIndex, type IndexSource } from "../../../src/storage/cache-index.ts";

/** A store of `found` objects that records the accesses it is told of. */
function source(found: Array<{ digest: string; size: number; lastAccess: number }> = []) {
  const recorded: Array<{ digest: string; when: number }> = [];
  const src: IndexSource = {
    scan: async () => found.map((f) => ({ ...f })),
    recordAccess: (digest, when) => void recorded.push({ digest, when: when.getTime() }),
  };
  return { src, recorded };
}

const lru = (index: CacheIndex) => [...index.leastRecentlyUsed()].map((e) => e.digest);
const mru = (index: CacheIndex) => [...index.mostRecentlyUsed()].map((e) => e.digest);

describe("CacheIndex", () => {
  it("rebuilds oldest access first, and counts every object and byte", async () => {
    const { src } = source([
      { digest: "a", size: 10, lastAccess: 3000 },
      { digest: "b", size: 20, lastAccess: 1000 },
      { digest: "c", size: 30, lastAccess: 2000 },
    ]);
    const index = new CacheIndex(src);
    expect(await index.rebuild()).toMatchObject({ objects: 3, bytes: 60 });
    expect(lru(index)).toEqual(["b", "c", "a"]);
    expect(mru(index)).toEqual(["a", "c", "b"]);
    expect([...index.leastRecentlyUsed()][0]).toEqual({ digest: "b", size: 20, usedAt: 1000 });
    expect([...index.mostRecentlyUsed()][0]).toEqual({ digest: "a", size: 10, lastAccess: 3000 });
    expect(index.bytes).toBe(60);
    expect(index.objects).toBe(3);
  });

  it("moves a used entry to the most recent end, and tells the store at most once per touch interval", async () => {
    let now = 10_000;
    const { src, recorded } = source([
      { digest: "a", size: 1, lastAccess: 1000 },
      { digest: "b", size: 1, lastAccess: 2000 },
    ]);
    const index = new CacheIndex(src, { touchIntervalMs: 5000, now: () => now });
    await index.rebuild();
    index.touch("a");
    expect(lru(index)).toEqual(["b", "a"]);
    expect(recorded).toEqual([{ digest: "a", when: 10_000 }]);
    now = 12_000;
    index.touch("a"); // within the interval: used, not recorded again
    expect(recorded).toHaveLength(1);
    expect([...index.leastRecentlyUsed()].at(-1)).toEqual({ digest: "a", size: 1, usedAt: 12_000 });
    index.touch("b");
    expect(lru(index)).toEqual(["a", "b"]);
    index.touch("missing"); // not indexed: nothing happens
    expect(index.objects).toBe(2);
  });

  it("keeps its byte count true through additions, replacements and removals", () => {
    const index = new CacheIndex(source().src);
    index.add("a", 100);
    index.add("b", 50);
    index.add("a", 100); // committed again: counted once, now the most recent
    expect(lru(index)).toEqual(["b", "a"]);
    expect(index.bytes).toBe(150);
    index.add("empty", 0); // an empty blob still counts as one byte, as an entry
    expect(index.bytes).toBe(151);
    index.remove("b");
    index.remove("b");
    expect(index.bytes).toBe(101);
    expect(index.has("b")).toBe(false);
    expect(index.sizeOf("a")).toBe(100);
    expect(index.sizeOf("b")).toBeUndefined();
    expect(index.objects).toBe(2);
  });

  it("tells observers of additions and uses, not of what a rebuild finds", async () => {
    const { src } = source([{ digest: "old", size: 5, lastAccess: 1 }]);
    const index = new CacheIndex(src);
    const seen: string[] = [];
    index.observe({ added: (d, size) => seen.push(`added ${d} ${size}`), used: (d) => seen.push(`used ${d}`) });
    await index.rebuild();
    index.touch("old");
    index.add("new", 7);
    expect(seen).toEqual(["used old", "added new 7"]);
  });

  it("walks the most recent first from a copy, so uses while the caller awaits do not repeat or skip entries", async () => {
    const index = new CacheIndex(source().src);
    for (const d of ["a", "b", "c", "d"]) index.add(d, 1);
    const walked: string[] = [];
    for (const e of index.mostRecentlyUsed()) {
      walked.push(e.digest);
      index.touch("a"); // a use during the walk
      await Promise.resolve();
    }
    expect(walked).toEqual(["d", "c", "b", "a"]);
  });

  it("a rebuild replaces what the index held", async () => {
    const { src } = source([{ digest: "x", size: 3, lastAccess: 1 }]);
    const index = new CacheIndex(src);
    index.add("stale", 100);
    await index.rebuild();
    expect(lru(index)).toEqual(["x"]);
    expect(index.bytes).toBe(3);
  });

  it("keeps what it learns while a rebuild's scan runs, as the most recently used, and is complete only after", async () => {
    const { src } = source();
    let now = 10_000;
    const index = new CacheIndex(src, { now: () => now });
    let scanned!: (found: Array<{ digest: string; size: number; lastAccess: number }>) => void;
    const rebuilt = index.rebuild(() => new Promise((resolve) => (scanned = resolve)));
    let complete = false;
    void index.complete.then(() => (complete = true));
    // While the scan runs: one object committed, one found by a read (both also in the scan, with older times),
    // and one the scan does not know.
    index.add("read", 5);
    now += 1;
    index.add("committed", 7);
    index.add("new", 9);
    index.touch("read");
    await Promise.resolve();
    expect(complete).toBe(false);
    scanned([
      { digest: "old", size: 1, lastAccess: 100 },
      { digest: "committed", size: 7, lastAccess: 50 },
      { digest: "read", size: 5, lastAccess: 300 },
      { digest: "older", size: 2, lastAccess: 20 },
    ]);
    await rebuilt;
    await index.complete;
    expect(complete).toBe(true);
    expect(lru(index)).toEqual(["older", "old", "committed", "new", "read"]);
    expect(index.bytes).toBe(2 + 1 + 7 + 9 + 5);
    expect(index.objects).toBe(5);
    expect([...index.leastRecentlyUsed()].at(-1)).toEqual({ digest: "read", size: 5, usedAt: 10_001 });
  });

  it("fills a large index in steps, letting the event loop run between them (the store may be serving)", async () => {
    const found = Array.from({ length: 25_000 }, (_, i) => ({ digest: `d${i}`, size: 2, lastAccess: i }));
    const index = new CacheIndex(source(found).src);
    const rebuilt = index.rebuild();
    let complete = false;
    void index.complete.then(() => (complete = true));
    // One turn of the event loop: the rebuild is part-way through its entries, not done.
    await new Promise((resolve) => setImmediate(resolve));
    expect(complete).toBe(false);
    index.add("meanwhile", 7);
    expect(await rebuilt).toMatchObject({ objects: 25_000, bytes: 50_000 });
    await index.complete;
    expect(complete).toBe(true);
    expect(mru(index).slice(0, 2)).toEqual(["meanwhile", "d24999"]);
    expect(lru(index)[0]).toBe("d0");
    expect(index.objects).toBe(25_001);
    expect(index.bytes).toBe(50_007);
  });
});
