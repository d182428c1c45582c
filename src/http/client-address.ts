/**
 * Who counts as one client for the per-client limits (failed logins, requests in progress): the peer address of
 * the connection. An IPv4 address is one client. An IPv6 client is its /64: one host is routinely given a whole
 * /64 and can pick any address in it, so counting single IPv6 addresses would give it 2^64 fresh allowances.
 * IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack listener reports) count as IPv4.
 *
 * The address is the TCP peer's: behind a proxy or load balancer, every client behind it is one client here
 * (docs/security.md says so).
 */
import { isIPv4, isIPv6 } from "node:net";

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
