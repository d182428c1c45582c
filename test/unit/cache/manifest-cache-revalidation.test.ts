// ManifestCache tag revalidation and the pointers it stores: stamped with when the upstream was asked, so that a
// slow answer (one that outlived the revalidation lock, say) can never replace a pointer checked after it.
// Real manifest and metadata stores on a temp dir; the upstream is a fake whose answers the test releases.
import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import { ManifestCache } from "../../../src/cache/manifest-cache.ts";
import { ManifestStore } from "../../../src/storage/manifest-store.ts";
import { EmbeddedMetadataStore } from "../../../src/metadata/embedded-metadata-store.ts";
import type { UpstreamClient } from "../../../src/upstream/upstream-client.ts";
import { waitFor } from "../../harness/processes.ts";

const MT = "application/vnd.oci.image.manifest.v1+json";
const TTL_MS = 60_000;
const LATEST = { kind: "tag", tag: "latest" } as const;

const manifest = (n: number) =>
  Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT, annotations: { n: String(n) }, layers: [] }));
const digestOf = (bytes: Buffer) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

/** An upstream whose tag points at `answer`; each request runs `during` (advance a clock, wait for a release). */
function upstream(answer: Buffer, during: (method: "HEAD" | "GET") => Promise<void> | void = () => undefined) {
  const asked: string[] = [];
  const client = {
    name: "u",
    config: { tagTtl: TTL_MS, offline: false, negativeTtl: 0, revalidateTimeout: 60_000, staleWhileRevalidate: false },
    headManifest: async () => {
      asked.push("HEAD");
      await during("HEAD");
      return { digest: digestOf(answer), mediaType: MT, size: answer.length };
    },
    getManifest: async (_repo: string, reference: string) => {
      asked.push(`GET ${reference}`);
      await during("GET");
      return { bytes: answer, mediaType: MT, digest: digestOf(answer) };
    },
  } as unknown as UpstreamClient;
  return { client, asked };
}

let dir: string;
let manifests: ManifestStore;
let metadata: EmbeddedMetadataStore;
const [m1, m2] = [manifest(1), manifest(2)];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "manifest-cache-"));
  const blobs = new BlobStore(dir);
  await blobs.init();
  manifests = new ManifestStore(blobs);
  await manifests.init();
  metadata = new EmbeddedMetadataStore();
});
afterEach(async () => {
  await metadata.close();
  await rm(dir, { recursive: true, force: true });
});

describe("ManifestCache revalidation", () => {
  it("stamps the pointer with when the request was sent, not when its answer arrived", async () => {
    let clock = 1_700_000_000_000;
    const cache = new ManifestCache({ manifests, metadata, maxBytes: 1 << 20, now: () => clock });
    await manifests.put(digestOf(m1), MT, m1);
    await metadata.addProvenance("u", [digestOf(m1)]); // fetched from this upstream earlier
    await metadata.putTag("u", "app", "latest", { digest: digestOf(m1), mediaType: MT, checkedAt: clock - 2 * TTL_MS });

    // Unchanged tag: the HEAD answers after 30 s.
    const sentAt = clock;
    const slowHead = upstream(m1, () => void (clock += 30_000));
    expect((await cache.get(slowHead.client, "app", LATEST)).source).toBe("revalidated");
    expect(await metadata.getTag("u", "app", "latest")).toEqual({
      digest: digestOf(m1),
      mediaType: MT,
      checkedAt: sentAt,
    });

    // Moved tag: HEAD, then a GET (by the digest the HEAD named) sent 5 s later. The HEAD said where the tag
    // points, when it was sent; the GET only brings the bytes.
    clock += 2 * TTL_MS;
    const headSentAt = clock;
    const moved = upstream(m2, () => void (clock += 5_000));
    const result = await cache.get(moved.client, "app", LATEST);
    expect(moved.asked).toEqual(["HEAD", `GET ${digestOf(m2)}`]);
    expect(result.manifest.digest).toBe(digestOf(m2));
    expect((await metadata.getTag("u", "app", "latest"))?.checkedAt).toBe(headSentAt);
  });

  it("a revalidation whose answer arrives after another replica stored a newer one does not move the tag back", async () => {
    // Two replicas over one shared metadata store (what Redis is to them).
    const replicaA = new ManifestCache({ manifests, metadata, maxBytes: 1 << 20 });
    const replicaB = new ManifestCache({ manifests, metadata, maxBytes: 1 << 20 });
    await manifests.put(digestOf(m1), MT, m1);
    await manifests.put(digestOf(m2), MT, m2);
    await metadata.addProvenance("u", [digestOf(m1), digestOf(m2)]); // both fetched from this upstream earlier
    await metadata.putTag("u", "app", "latest", {
      digest: digestOf(m1),
      mediaType: MT,
      checkedAt: Date.now() - 2 * TTL_MS,
    });

    // A asks while the tag still points at m1; its answer is held back (a slow upstream, retries...).
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const slow = upstream(m1, () => held);
    const aDone = replicaA.get(slow.client, "app", LATEST);
    await waitFor(async () => slow.asked.length === 1, { timeoutMs: 2_000, what: "A's HEAD to be sent" });

    // The tag moves upstream. B finds A's lock, waits for it in vain, then revalidates itself: m2.
    const b = await replicaB.get(upstream(m2).client, "app", LATEST);
    expect(b.manifest.digest).toBe(digestOf(m2));
    const newer = await metadata.getTag("u", "app", "latest");
    expect(newer?.digest).toBe(digestOf(m2));

    // A's answer (m1, true when A asked) lands last; it is older than B's and must not replace it.
    release();
    expect((await aDone).manifest.digest).toBe(digestOf(m1));
    expect(await metadata.getTag("u", "app", "latest")).toEqual(newer);
    const fresh = upstream(m2);
    expect(await replicaA.get(fresh.client, "app", LATEST)).toMatchObject({
      source: "hit",
      manifest: { digest: digestOf(m2) },
    });
    expect(fresh.asked).toEqual([]);
  });
  it("a revalidation that must fetch the bytes keeps the HEAD's time, so a late GET cannot move the tag back", async () => {
    // The content is cached but this upstream is not on record for it: each revalidation GETs the bytes.
    const replicaA = new ManifestCache({ manifests, metadata, maxBytes: 1 << 20 });
    const replicaB = new ManifestCache({ manifests, metadata, maxBytes: 1 << 20 });
    await manifests.put(digestOf(m1), MT, m1);
    await manifests.put(digestOf(m2), MT, m2);
    await metadata.putTag("u", "app", "latest", {
      digest: digestOf(m1),
      mediaType: MT,
      checkedAt: Date.now() - 2 * TTL_MS,
    });

    // A's HEAD (answered m1) is held back; B revalidates meanwhile and stores m2.
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const slow = upstream(m1, (method) => (method === "HEAD" ? held : undefined));
    const aDone = replicaA.get(slow.client, "app", LATEST);
    await waitFor(async () => slow.asked.length === 1, { timeoutMs: 2_000, what: "A's HEAD to be sent" });
    const b = await replicaB.get(upstream(m2).client, "app", LATEST);
    expect(b.manifest.digest).toBe(digestOf(m2));
    const newer = await metadata.getTag("u", "app", "latest");

    // A's HEAD lands, then its GET, sent after B's write: the pointer still carries the HEAD's time and loses.
    release();
    expect((await aDone).manifest.digest).toBe(digestOf(m1));
    expect(slow.asked).toEqual(["HEAD", `GET ${digestOf(m1)}`]);
    expect(await metadata.getTag("u", "app", "latest")).toEqual(newer);
  });
});
