/**
 * The listing of what a mirror holds: every tag pointer whose manifest is cached (reference, digest, media
 * type) and every stored object (digest, size). It is what a destination sends to the connected side, which
 * then exports a delta bundle leaving out the blobs listed here.
 *
 * {
 *   "mediaType": "application/vnd.registry-mirror.inventory.v1+json",
 *   "createdAt": "2026-11-23T10:00:00.000Z",
 *   "references": [{"reference": "docker.io/library/alpine:3.20", "digest": "sha256:…", "mediaType": "…"}],
 *   "blobs": [{"digest": "sha256:…", "size": 3623807}]
 * }
 */
import type { ContentStore } from "../storage/content-store.ts";
import type { MetadataStore } from "../metadata/metadata-store.ts";
import { isSha256Digest } from "../oci/digest.ts";
import { isValidTag } from "../oci/reference.ts";
import { errorMessage } from "../caught-errors.ts";

export const INVENTORY_MEDIA_TYPE = "application/vnd.registry-mirror.inventory.v1+json";

export interface InventoryReference {
  reference: string;
  digest: string;
  mediaType: string;
}

export interface Inventory {
  mediaType: typeof INVENTORY_MEDIA_TYPE;
  createdAt: string;
  references: InventoryReference[];
  blobs: Array<{ digest: string; size: number }>;
}

/** Lists the tags of every configured upstream and every object in the store (sorted, so listings diff well). */
export async function takeInventory(opts: {
  store: ContentStore;
  metadata: MetadataStore;
  upstreams: readonly string[];
}): Promise<Inventory> {
  const references: InventoryReference[] = [];
  for (const upstream of opts.upstreams) {
    for (const repository of await opts.metadata.listRepositories(upstream)) {
      for (const tag of (await opts.metadata.listTags(upstream, repository)).filter(isValidTag)) {
        const pointer = await opts.metadata.getTag(upstream, repository, tag);
        // A pointer to a manifest no longer on disk is not something this mirror can serve.
        if (pointer && opts.store.index.has(pointer.digest)) {
          references.push({
            reference: `${upstream}/${repository}:${tag}`,
            digest: pointer.digest,
            mediaType: pointer.mediaType,
          });
        }
      }
    }
  }
  references.sort((a, b) => a.reference.localeCompare(b.reference));
  const blobs = [...opts.store.index.mostRecentlyUsed()].map(({ digest, size }) => ({ digest, size }));
  blobs.sort((a, b) => a.digest.localeCompare(b.digest));
  return { mediaType: INVENTORY_MEDIA_TYPE, createdAt: new Date().toISOString(), references, blobs };
}

/** Reads an inventory file; throws an Error naming `source` and what is wrong. */
export function parseInventory(text: string, source: string): Inventory {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new Error(`${source}: not JSON (${errorMessage(err)})`);
  }
  return inventoryFrom(doc, source);
}

/** An inventory already parsed as JSON (a file's, or one sent to /admin/v1/export), checked the same way. */
export function inventoryFrom(parsed: unknown, source: string): Inventory {
  const doc = (parsed ?? {}) as Partial<Inventory>;
  if (doc?.mediaType !== INVENTORY_MEDIA_TYPE)
    throw new Error(
      `${source}: not an inventory (mediaType must be ${INVENTORY_MEDIA_TYPE}; write one with \`mirror inventory\`)`,
    );
  if (!Array.isArray(doc.blobs)) throw new Error(`${source}: "blobs" must be a list`);
  for (const b of doc.blobs as unknown[]) {
    const blob = b as { digest?: unknown; size?: unknown } | null;
    if (
      typeof blob?.digest !== "string" ||
      !isSha256Digest(blob.digest) ||
      typeof blob.size !== "number" ||
      !Number.isSafeInteger(blob.size) ||
      blob.size < 0
    ) {
      throw new Error(`${source}: invalid blob entry ${JSON.stringify(b).slice(0, 200)}`);
    }
  }
  return {
    mediaType: INVENTORY_MEDIA_TYPE,
    createdAt: String(doc.createdAt ?? ""),
    references: Array.isArray(doc.references) ? doc.references : [],
    blobs: doc.blobs,
  };
}
