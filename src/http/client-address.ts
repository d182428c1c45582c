/**
 * Who counts as one client for the per-client limits (failed logins, requests in progress): the peer address of
 * the connection. An IPv4 address is one client. An IPv6 client is its /64: one host is routinely given a whole
 * /64 and can pick any address in it, so counting single IPv6 addresses would give it 2^64 fresh allowances.
 * IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack listener reports) count as IPv4.
 *
 * The address is the TCP peer's: behind a proxy or load balancer, every client behind it is one client here
 * (docs/security.md says so).
 */
import { BlockList, isIP, isIPv4, isIPv6 } from "node:net";

/** The peer's address as it is logged: an IPv4-mapped IPv6 address as the IPv4 address it is. */
export function plainAddress(remoteAddress: string | undefined): string | undefined {
  if (remoteAddress === undefined || remoteAddress === "") return undefined;
  return /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(remoteAddress)?.[1] ?? remoteAddress;
}

/**
 * The configured `trustedProxies` (addresses and CIDR ranges, checked by the config schema), and the client a
 * trusted proxy's `X-Forwarded-For` names. The header is a list each proxy appends its peer to, so only its
 * right end is vouched for: walked from the right, trusted proxies are skipped, and the first address that is
 * not one is the client. A value that is no IP address stops the walk (whoever wrote it is not trusted), as does
 * a connection that does not come from a trusted proxy: then the header says nothing.
 */
export class TrustedProxies {
  private readonly list = new BlockList();
  private readonly empty: boolean;

  constructor(entries: readonly string[]) {
    this.empty = entries.length === 0;
    for (const entry of entries) {
      const [address, prefix] = entry.split("/") as [string, string | undefined];
      const type = isIPv4(address) ? "ipv4" : "ipv6";
      if (prefix === undefined) this.list.addAddress(address, type);
      else this.list.addSubnet(address, Number(prefix), type);
    }
  }

  trusts(address: string | undefined): boolean {
    if (this.empty || address === undefined) return false;
    const plain = plainAddress(address.replace(/%.*$/, ""));
    if (plain === undefined || isIP(plain) === 0) return false;
    return this.list.check(plain, isIPv4(plain) ? "ipv4" : "ipv6");
  }

  /** The client behind trusted proxies, or undefined when `peer` is not one or the header names none. */
  forwardedClient(peer: string | undefined, forwardedFor: string | undefined): string | undefined {
    if (forwardedFor === undefined || !this.trusts(peer)) return undefined;
    const hops = forwardedFor.split(",").map((h) => h.trim());
    // Bounded: a header is at most limits.maxHeaderBytes long.
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = plainAddress(hops[i]);
      if (hop === undefined || isIP(hop) === 0) return undefined;
      if (!this.trusts(hop) || i === 0) return hop;
    }
    return undefined;
  }
}

export function clientKey(remoteAddress: string | undefined): string {
  if (remoteAddress === undefined || remoteAddress === "") return "unknown";
  const address = remoteAddress.replace(/%.*$/, ""); // an IPv6 zone (fe80::1%eth0) names an interface, not a host
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (isIPv4(address) || !isIPv6(address)) return address;
  return `${ipv6Groups(address).slice(0, 4).join(":")}::/64`;
}

/** The eight 16-bit groups of a valid IPv6 address, in lower-case hex without leading zeros. */
function ipv6Groups(address: string): string[] {
  const toGroups = (part: string): string[] => {
    if (part === "") return [];
    const groups: string[] = [];
    for (const piece of part.split(":")) {
      if (piece.includes(".")) {
        // A dotted IPv4 tail (::1.2.3.4, 64:ff9b::192.0.2.1) is the last two groups.
        const [a, b, c, d] = piece.split(".").map(Number) as [number, number, number, number];
        groups.push(((a << 8) | b).toString(16), ((c << 8) | d).toString(16));
      } else {
        groups.push(parseInt(piece, 16).toString(16));
      }
    }
    return groups;
  };
  const gap = address.indexOf("::");
  if (gap < 0) return toGroups(address);
  const head = toGroups(address.slice(0, gap));
  const tail = toGroups(address.slice(gap + 2));
  return [...head, ...Array<string>(8 - head.length - tail.length).fill("0"), ...tail];
}
