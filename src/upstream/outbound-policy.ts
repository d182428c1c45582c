/**
 * Where an upstream may send the mirror. Some of an upstream's answers are URLs (the token realm of a 401
 * challenge, the Location of a redirect), and following them is a request the mirror makes on the upstream's
 * word. For one upstream these rules hold:
 *  - a token realm is on the upstream's own host or one of its `authHosts`, and uses https when the upstream
 *    does (the credentials sent there must not cross the network in cleartext);
 *  - a redirect goes to the upstream's own host, one of its `authHosts`, or a host matching one of its
 *    `redirectHosts` patterns (the CDNs and storage buckets its blobs are served from), at most
 *    `maxRedirects` times;
 *  - a redirect never goes from https to http;
 *  - a host that is neither the upstream's own nor one of its `authHosts` is only ever connected to at a
 *    public address: never loopback, link-local (cloud metadata endpoints), private, shared (CGNAT),
 *    multicast or reserved, unless `allowPrivateRedirects` is set. The address checked is the one the socket
 *    connects to (the DNS lookup is hooked), so a name that resolves to one address when checked and another
 *    when connected (DNS rebinding) cannot get past it.
 * `Authorization` goes only to the origin a request was meant for, never along a redirect to another origin.
 * Every refusal is an UPSTREAM_ERROR naming the upstream and the host, never the whole URL (presigned URLs
 * carry credentials in their query).
 */
import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from "node:dns";
import { BlockList, isIP } from "node:net";
import type { buildConnector as BuildConnector } from "undici";
import { buildConnector, type Dispatcher } from "./undici.ts";
import { RegistryError } from "../oci/errors.ts";
import { discardBody } from "./response-body.ts";
import { headerValue } from "./upstream-errors.ts";

export interface OutboundPolicyOptions {
  upstream: string;
  /** The upstream's configured origin. */
  url: string;
  authHosts: readonly string[];
  redirectHosts: readonly string[];
  allowPrivateRedirects: boolean;
  maxRedirects: number;
}

export interface OutboundRequest {
  url: URL;
  method: "GET" | "HEAD";
  headers: Record<string, string>;
  /** Sent to `url`'s origin only, never along a redirect to another origin. */
  authorization?: string | undefined;
  signal?: AbortSignal | undefined;
}

const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);

export class OutboundPolicy {
  readonly upstream: string;
  private readonly url: URL;
  private readonly authHosts: ReadonlySet<string>;
  private readonly redirectPatterns: readonly RegExp[];
  /** Host names the operator chose for this upstream (its own and its authHosts): their addresses are theirs to pick. */
  private readonly namedHostnames: ReadonlySet<string>;
  private readonly allowPrivate: boolean;
  private readonly maxRedirects: number;

  constructor(opts: OutboundPolicyOptions) {
    this.upstream = opts.upstream;
    this.url = new URL(opts.url);
    this.authHosts = new Set(opts.authHosts.map((h) => h.toLowerCase()));
    this.redirectPatterns = opts.redirectHosts.map(hostPattern);
    this.namedHostnames = new Set(
      [this.url.hostname, ...[...this.authHosts].map((h) => new URL(`http://${h}`).hostname)].map(bare),
    );
    this.allowPrivate = opts.allowPrivateRedirects;
    this.maxRedirects = opts.maxRedirects;
  }

  /** Throws unless a token realm at `realm` may be asked for this upstream's tokens. */
  checkRealm(realm: URL): void {
    if ((realm.protocol !== "https:" && realm.protocol !== "http:") || !this.isOwnOrAuthHost(realm)) {
      throw new RegistryError(
        "UPSTREAM_ERROR",
        `upstream ${this.upstream} points at token realm host ${realm.host}, which is not allowed for it (list it in authHosts)`,
        {
          detail: { upstream: this.upstream, realmHost: realm.host },
        },
      );
    }
    if (this.url.protocol === "https:" && realm.protocol !== "https:") {
      // Named without its query: the realm is the upstream's, the query could carry anything.
      const named = `${realm.origin}${realm.pathname}`;
      throw new RegistryError(
        "UPSTREAM_ERROR",
        `upstream ${this.upstream} names token realm ${named}, which is not https like the upstream: credentials would cross the network in cleartext`,
        {
          detail: { upstream: this.upstream, realm: named },
        },
      );
    }
  }

  /** Throws unless the upstream may redirect a request for `from` to `to`. */
  checkRedirect(from: URL, to: URL): void {
    if (to.protocol !== "https:" && to.protocol !== "http:") {
      throw this.refusal(`redirected to a ${to.protocol} URL`, to);
    }
    if (from.protocol === "https:" && to.protocol === "http:") {
      throw this.refusal(`redirected from https to http://${to.host}, which the mirror never follows`, to);
    }
    if (!this.isOwnOrAuthHost(to) && !this.redirectPatterns.some((p) => p.test(to.host))) {
      throw this.refusal(`redirected to host ${to.host}, which is not allowed for it (list it in redirectHosts)`, to);
    }
  }

  /**
   * Sends a request and follows the upstream's redirects under the rules above. Returns the first answer that
   * is not a redirect; every redirect's body is discarded.
   */
  async request(dispatcher: Dispatcher, req: OutboundRequest): Promise<Dispatcher.ResponseData> {
    let url = req.url;
    for (let redirects = 0; ; redirects++) {
      const authorization =
        req.authorization !== undefined && url.origin === req.url.origin ? { authorization: req.authorization } : {};
      const res = await dispatcher.request({
        origin: url.origin,
        path: `${url.pathname}${url.search}`,
        method: req.method,
        headers: { ...req.headers, ...authorization },
        signal: req.signal,
      });
      const location = REDIRECT_STATUSES.has(res.statusCode) ? headerValue(res.headers, "location") : undefined;
      if (location === undefined) return res;
      discardBody(res.body);
      if (redirects >= this.maxRedirects)
        throw this.refusal(`redirected more than ${this.maxRedirects} times (maxRedirects)`, url);
      const next = URL.parse(location, url.href);
      if (next === null) throw this.refusal("sent a redirect to an invalid URL", url);
      this.checkRedirect(url, next);
      url = next;
    }
  }

  /**
   * The undici connector for this upstream's Agent (`connect` option): connections to hosts other than the
   * upstream's own and its authHosts are refused at a non-public address, unless allowPrivateRedirects.
   */
  connector(options: BuildConnector.BuildOptions): BuildConnector.connector {
    const direct = buildConnector(options);
    if (this.allowPrivate) return direct;
    const guarded = buildConnector({ ...options, lookup: this.publicLookup });
    return (opts, callback) => {
      const hostname = bare(opts.hostname);
      if (this.namedHostnames.has(hostname)) return direct(opts, callback);
      // An address literal is connected to without a lookup: check it here.
      if (isIP(hostname) !== 0 && !isPublicAddress(hostname))
        return callback(this.privateAddress(hostname, hostname), null);
      guarded(opts, (...args) => {
        const socket = args[1];
        // The lookup already kept only public addresses; this checks the peer the socket actually reached.
        const peer = socket?.remoteAddress;
        if (socket !== null && peer !== undefined && !isPublicAddress(peer)) {
          socket.destroy();
          callback(this.privateAddress(hostname, peer), null);
          return;
        }
        callback(...args);
      });
    };
  }

  /** A DNS lookup (net.connect's `lookup` option) that keeps only public addresses. */
  private readonly publicLookup = (
    hostname: string,
    options: LookupOptions,
    callback: (err: Error | null, address: string | LookupAddress[], family?: number) => void,
  ): void => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, []);
      const usable = addresses.filter((a) => isPublicAddress(a.address));
      if (usable.length === 0)
        return callback(this.privateAddress(hostname, addresses.map((a) => a.address).join(", ")), []);
      if (options.all === true) return callback(null, usable);
      callback(null, usable[0]!.address, usable[0]!.family);
    });
  };

  private isOwnOrAuthHost(url: URL): boolean {
    const host = url.host.toLowerCase();
    return host === this.url.host || this.authHosts.has(host);
  }

  private refusal(what: string, to: URL): RegistryError {
    return new RegistryError("UPSTREAM_ERROR", `upstream ${this.upstream} ${what}`, {
      detail: { upstream: this.upstream, host: to.host },
    });
  }

  private privateAddress(hostname: string, address: string): RegistryError {
    return new RegistryError(
      "UPSTREAM_ERROR",
      `upstream ${this.upstream} redirected to ${hostname}, which is at a non-public address (${address}); set allowPrivateRedirects to allow that`,
      { detail: { upstream: this.upstream, host: hostname } },
    );
  }
}

/**
 * A `redirectHosts` pattern as a regular expression over a URL's host (`name` or `name:port`): `*` stands for
 * any run of characters within one DNS label, `**` for one or more whole labels. Without a port, a pattern
 * matches only the scheme's default port.
 */
export function hostPattern(pattern: string): RegExp {
  const source = pattern
    .toLowerCase()
    .split(/(\*\*|\*)/)
    .map((part) =>
      part === "**" ? "[a-z0-9-]+(?:\\.[a-z0-9-]+)*" : part === "*" ? "[a-z0-9-]*" : part.replace(/[.]/g, "\\."),
    )
    .join("");
  return new RegExp(`^${source}$`, "i");
}

/**
 * Addresses that are not on the public internet: unspecified, loopback, private (RFC 1918, ULA), shared
 * (CGNAT), link-local (where cloud metadata services live), benchmarking, multicast and reserved ranges.
 */
const NON_PUBLIC = new BlockList();
for (const [net, prefix] of [
  ["0.0.0.0", 8],
  ["10.0.0.0", 8],
  ["100.64.0.0", 10],
  ["127.0.0.0", 8],
  ["169.254.0.0", 16],
  ["172.16.0.0", 12],
  ["192.0.0.0", 24],
  ["192.168.0.0", 16],
  ["198.18.0.0", 15],
  ["224.0.0.0", 4],
  ["240.0.0.0", 4],
] as const) {
  NON_PUBLIC.addSubnet(net, prefix, "ipv4");
}
for (const [net, prefix] of [
  ["::", 128],
  ["::1", 128],
  ["fc00::", 7],
  ["fe80::", 10],
  ["ff00::", 8],
] as const) {
  NON_PUBLIC.addSubnet(net, prefix, "ipv6");
}

export function isPublicAddress(address: string): boolean {
  const ip = bare(address);
  const family = isIP(ip);
  if (family === 4) return !NON_PUBLIC.check(ip, "ipv4");
  if (family !== 6) return false;
  // IPv4 inside IPv6 (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::a.b.c.d) reaches the IPv4 address: judge that one.
  const embedded = embeddedIpv4(ip);
  if (embedded !== undefined) return isPublicAddress(embedded);
  return !NON_PUBLIC.check(ip, "ipv6");
}

function embeddedIpv4(ip: string): string | undefined {
  const m = /^(?:::ffff:|64:ff9b::)(?:(\d+\.\d+\.\d+\.\d+)|([0-9a-f]{1,4}):([0-9a-f]{1,4}))$/i.exec(ip);
  if (!m) return undefined;
  if (m[1] !== undefined) return m[1];
  const hi = Number.parseInt(m[2]!, 16);
  const lo = Number.parseInt(m[3]!, 16);
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/** `[::1]` → `::1`, lower case. */
function bare(hostname: string): string {
  return hostname.replace(/^\[(.*)\]$/, "$1").toLowerCase();
}
