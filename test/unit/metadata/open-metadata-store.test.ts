// openMetadataStore as the configuration asks: the embedded store journaled under <storage.path>/metadata, or a
// real redis-server in front of it, which answers from the embedded store while Redis is gone and says so.
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { parseConfig } from "../../../src/config/load.ts";
import type { TagPointer } from "../../../src/metadata/metadata-store.ts";
import { openMetadataStore } from "../../../src/metadata/open-metadata-store.ts";
import { waitFor } from "../../harness/processes.ts";
import { startRedis } from "../../harness/redis.ts";
import { Teardown } from "../../harness/teardown.ts";

let teardown = new Teardown();
afterEach(async () => {
  const current = teardown;
  teardown = new Teardown();
  await current.run();
});

const log = pino({ level: "silent" });
const pointer: TagPointer = {
  digest: `sha256:${"a".repeat(64)}`,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  checkedAt: 1_700_000_000_000,
};

async function storageDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "open-metadata-"));
  teardown.add("storage dir", () => rm(dir, { recursive: true, force: true }));
  return dir;
}

describe("openMetadataStore", () => {
  it("without redis: the embedded store, journaled under the storage path, so a reopened one remembers", async () => {
    const dir = await storageDir();
    const config = parseConfig({ storage: { path: dir } });
    const first = await openMetadataStore(config, log);
    expect(first.describeState()).toEqual({ store: "embedded", degraded: false, reason: "" });
    await first.metadata.putTag("docker.io", "library/app", "v1", pointer);
    await first.closeMetadata();
    expect(await readdir(join(dir, "metadata"))).not.toEqual([]);

    const again = await openMetadataStore(config, log);
    try {
      expect(await again.metadata.getTag("docker.io", "library/app", "v1")).toEqual(pointer);
    } finally {
      await again.closeMetadata();
    }
  });

  it("with redis: Redis answers; while it is gone the embedded store does, and the state says degraded and why", async () => {
    const redis = teardown.track(await startRedis());
    const dir = await storageDir();
    const config = parseConfig({ storage: { path: dir }, redis: { url: redis.url, commandTimeout: "300ms" } });
    const opened = await openMetadataStore(config, log);
    teardown.add("metadata store", () => opened.closeMetadata());
    await waitFor(
      async () => (await opened.metadata.listTags("docker.io", "probe"), !opened.describeState().degraded),
      { timeoutMs: 5_000, what: "Redis to answer" },
    );
    expect(opened.describeState()).toMatchObject({ store: "redis", degraded: false });
    await opened.metadata.putTag("docker.io", "library/app", "v1", pointer);

    await redis.kill();
    expect(await opened.metadata.getTag("docker.io", "library/app", "v1")).toEqual(pointer);
    await waitFor(async () => opened.describeState().degraded, { timeoutMs: 5_000, what: "the state to say degraded" });
    expect(opened.describeState()).toMatchObject({
      store: "redis",
      degraded: true,
      reason: expect.stringMatching(/./) as string,
    });
  });
});
