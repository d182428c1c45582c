import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { BlobStore } from "../../../src/cache/blob-store.ts";

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

describe("BlobStore", () => {
  it("deletes temp files a previous process left behind, and only those", async () => {
    const dir = await mkdtemp(join(tmpdir(), "store-"));
    dirs.push(dir);
    const bytes = Buffer.from("hello");
    const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
    const first = new BlobStore(dir);
    await first.init();
    await first.putVerified(digest, bytes);
    await mkdir(join(dir, "tmp"), { recursive: true });
    await writeFile(join(dir, "tmp", "deadbeef.123"), "partial");
    const second = new BlobStore(dir);
    expect(await second.init()).toMatchObject({ removedTempFiles: 1, objects: 1, bytes: 5 });
    expect(second.index.sizeOf(digest)).toBe(5);
    expect(await readdir(join(dir, "tmp"))).toEqual([]);
    expect(await second.size(digest)).toBe(5);
    const opened = await second.open(digest);
    expect(opened?.size).toBe(5);
    await opened?.handle.close();
  });

  it("places content by digest hex only", () => {
    const store = new BlobStore("/cache");
    expect(store.pathOf(`sha256:${"ab".repeat(32)}`)).toBe(`/cache/blobs/sha256/ab/${"ab".repeat(32)}`);
    expect(() => store.pathOf("sha256:../../x")).toThrow();
  });
});
