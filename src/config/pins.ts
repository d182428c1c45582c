/** Pinned content (`storage.pinned`): references whose content eviction must keep. */

export interface Pin {
  upstream: string;
  repository: string;
  /** Absent: every tag of the repository. */
  tag: string | undefined;
}

/** `docker.io/library/alpine:3.20` → upstream, repository, tag (the upstream is the first path component). */
export function parsePin(pin: string, upstreams: readonly string[]): Pin | string {
  const slash = pin.indexOf("/");
  const upstream = slash > 0 ? pin.slice(0, slash) : "";
  if (!upstreams.includes(upstream)) return `pin ${JSON.stringify(pin)} must start with a configured upstream name (${upstreams.join(", ")})`;
  const rest = pin.slice(slash + 1);
  const colon = rest.lastIndexOf(":");
  const repository = colon > 0 ? rest.slice(0, colon) : rest;
  const tag = colon > 0 ? rest.slice(colon + 1) : undefined;
  return { upstream, repository, tag };
}
