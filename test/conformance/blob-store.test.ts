// The filesystem content store against the shared suite.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BlobStore } from "../../src/storage/blob-store.ts";
import { describeContentStore } from "./content-store.ts";

describeContentStore("filesystem", async () => {
  const dir = await mkdtemp(join(tmpdir(), "content-conformance-"));
  const store = new BlobStore(dir);
  await store.init();
  return {
    store,
    async reopen() {
      const again = new BlobStore(dir);
      await again.init();
      return again;
    },
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
});
