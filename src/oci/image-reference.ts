/**
 * The text of an image reference, as the transfer commands, the admin API, bundles and `storage.pinned` write
 * it: `[<upstream>/]<repository>[:tag][@sha256:…]`. Grammar only: which upstream a first component names, and
 * what the repository is called there, the configuration decides (config/upstream-resolver.ts).
 */
import type { ManifestReference } from "./reference.ts";

export interface ReferenceText {
  /** Everything before the tag or digest: `docker.io/library/alpine`, `alpine`. */
  name: string;
  /** The tag or digest text, unchecked; undefined when the reference has neither. */
  reference: string | undefined;
}

/**
 * Splits a reference into its name and its tag or digest. A `:` only starts a tag after the last `/` (before
 * it, it is a registry port: `registry.local:5000/team/app`). `name:tag@digest` (docker accepts it) is the
 * digest: it decides, the tag is informational.
 */
export function splitImageReference(text: string): ReferenceText {
  let name = text;
  let reference: string | undefined;
  const at = name.indexOf("@");
  if (at >= 0) {
    reference = name.slice(at + 1);
    name = name.slice(0, at);
    const colon = name.lastIndexOf(":");
    if (colon > name.lastIndexOf("/")) name = name.slice(0, colon);
  } else {
    const colon = name.lastIndexOf(":");
    if (colon > name.lastIndexOf("/")) {
      reference = name.slice(colon + 1);
      name = name.slice(0, colon);
    }
  }
  return { name, reference };
}

/** The canonical text bundles and inventories record: `docker.io/library/alpine:3.20`, `ghcr.io/team/app@sha256:…`. */
export function formatReference(upstream: string, repository: string, reference: ManifestReference): string {
  return `${upstream}/${repository}${reference.kind === "tag" ? `:${reference.tag}` : `@${reference.digest}`}`;
}
