// The embedded store against the shared suite: memory only, and with its journal on disk (tuned to compact
// and fsync often, so compaction runs in the middle of the suite's writes).
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { EmbeddedMetadataStore } from "../../src/metadata/embedded-metadata-store.ts";
import { describeMetadataStore } from "./metadata-store.ts";

describeMetadataStore("embedded", async () => ({ store: new EmbeddedMetadataStore(), cleanup: async () => {} }));

describeMetadataStore("memory with a journal", async () => {
  const dir = await mkdtemp(join(tmpdir(), "metadata-conformance-"));
  const errors: Error[] = [];
  const store = await EmbeddedMetadataStore.open({
    dir: join(dir, "metadata"),
    // The default million-link LRU takes ~100 ms to allocate; the plain variant above already covers defaults.
    maxLinks: 10_000,
    compactRatio: 2,
    compactMinEntries: 8,
    syncIntervalMs: 10,
    onError: (err) => errors.push(err),
  });
  return {
    store,
    dirs: [dir],
    async cleanup() {
      await rm(dir, { recursive: true, force: true });
      if (errors.length > 0)
        throw new AggregateError(errors, `journal reported ${errors.length} error(s): ${errors[0]?.message}`);
    },
  };
});
