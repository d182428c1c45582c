/**
 * How the mirror finds what a configured pin's tag (`storage.pinned`) stands for once its tag pointer is gone
 * (the embedded store's bound, a Redis restart or key expiry): it asks the manifest cache, as a pull of the tag
 * would. That fetches the tag from its upstream, stores the manifest and sets the pointer again; the image's
 * blobs are not fetched (a pin keeps what is cached, it does not prefetch).
 */
import { RegistryError } from "../oci/errors.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import type { PinResolver } from "./janitor.ts";
import type { ManifestCache } from "./manifest-cache.ts";

export function manifestCachePinResolver(manifests: ManifestCache, upstreams: readonly UpstreamClient[]): PinResolver {
  return async ({ upstream: name, repository, tag }) => {
    const upstream = upstreams.find((u) => u.name === name);
    if (upstream === undefined) throw new Error(`no upstream ${name} is configured`);
    // Offline, the manifest cache would answer MANIFEST_UNKNOWN for any tag it has no pointer for: that says
    // nothing about the upstream, so it must not read as "the tag does not exist".
    if (upstream.config.offline)
      throw new Error(`upstream ${name} is offline by configuration (importing the tag again restores its pointer)`);
    try {
      return { digest: (await manifests.get(upstream, repository, { kind: "tag", tag })).manifest.digest };
    } catch (err) {
      if (err instanceof RegistryError && (err.code === "MANIFEST_UNKNOWN" || err.code === "NAME_UNKNOWN"))
        return { missing: err.message };
      throw err;
    }
  };
}
