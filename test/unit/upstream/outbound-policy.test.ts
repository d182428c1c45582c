/**
 * OutboundPolicy: the rules on its own (host patterns, address classes, realm and redirect checks), then its
 * redirect following and address guard against loopback HTTP servers standing in for an upstream and the hosts
 * it redirects to.
 */
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Agent } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  hostPattern,
  isPublicAddress,
  OutboundPolicy,
  type OutboundPolicyOptions,
} from "../../../src/upstream/outbound-policy.ts";

const policy = (opts: Partial<OutboundPolicyOptions> = {}) =>
  new OutboundPolicy({
    upstream: "up",
    url: "https://registry.example",
    authHosts: ["auth.example"],
    redirectHosts: [],
    allowPrivateRedirects: false,
    maxRedirects: 5,
    ...opts,
  });

describe("hostPattern", () => {
  it.each([
    ["production.cloudflare.docker.com", "production.cloudflare.docker.com", true],
    ["production.cloudflare.docker.com", "production.cloudflare.docker.com.evil.example", false],
    ["production.cloudflare.docker.com", "productionXcloudflare.docker.com", false],
    ["*.cloudfront.net", "d2glxqk2uabbnd.cloudfront.net", true],
    ["*.cloudfront.net", "a.b.cloudfront.net", false],
    ["*.cloudfront.net", "cloudfront.net.evil.example", false],
    ["cdn*.quay.io", "cdn.quay.io", true],
    ["cdn*.quay.io", "cdn02.quay.io", true],
    ["cdn*.quay.io", "quay.io", false],
    ["docker-images-prod*.**.amazonaws.com", "docker-images-prod.s3.dualstack.us-east-1.amazonaws.com", true],
    ["docker-images-prod*.**.amazonaws.com", "evil.s3.amazonaws.com", false],
    ["127.0.0.1:9000", "127.0.0.1:9000", true],
    ["127.0.0.1:9000", "127.0.0.1:9001", false],
    ["storage.googleapis.com", "storage.googleapis.com:8443", false],
    ["*.pkg.dev", "US-WEST1-DOCKER.pkg.dev", true],
  ])("%s against %s: %s", (pattern, host, matches) => {
    expect(hostPattern(pattern).test(host)).toBe(matches);
  });
});

describe("isPublicAddress", () => {
  it.each([
    ["169.254.169.254", false], // cloud metadata
    ["127.0.0.1", false],
    ["10.1.2.3", false],
    ["172.20.0.1", false],
    ["192.168.1.1", false],
    ["100.64.0.1", false],
    ["0.0.0.0", false],
    ["224.0.0.1", false],
    ["255.255.255.255", false],
    ["::1", false],
    ["::", false],
    ["fe80::1", false],
    ["fd00::1", false],
    ["::ffff:127.0.0.1", false],
    ["::ffff:a9fe:a9fe", false], // 169.254.169.254, mapped
    ["64:ff9b::a9fe:a9fe", false], // and through NAT64
    ["not an address", false],
    ["104.16.0.1", true],
    ["172.32.0.1", true],
    ["2606:4700::1", true],
    ["::ffff:104.16.0.1", true],
  ])("%s: %s", (address, expected) => {
    expect(isPublicAddress(address)).toBe(expected);
  });
});

describe("OutboundPolicy rules", () => {
  it("allows realms on the upstream's own host and its authHosts only", () => {
    const p = policy();
    expect(() => p.checkRealm(new URL("https://registry.example/token"))).not.toThrow();
    expect(() => p.checkRealm(new URL("https://auth.example/token"))).not.toThrow();
    expect(() => p.checkRealm(new URL("https://elsewhere.example/token"))).toThrow(
      /token realm host elsewhere.example, which is not allowed/,
    );
    expect(() => p.checkRealm(new URL("file:///etc/passwd"))).toThrow(/not allowed/);
  });

  it("refuses a realm whose scheme is weaker than the upstream's", () => {
    expect(() => policy().checkRealm(new URL("http://auth.example/token"))).toThrow(
      /token realm http:\/\/auth.example\/token, which is not https like the upstream/,
    );
    expect(() =>
      policy({ url: "http://registry.example" }).checkRealm(new URL("http://auth.example/token")),
    ).not.toThrow();
    expect(() =>
      policy({ url: "http://registry.example" }).checkRealm(new URL("https://auth.example/token")),
    ).not.toThrow();
  });

  it("allows redirects to the upstream's own host, its authHosts and its redirectHosts patterns only", () => {
    const p = policy({ redirectHosts: ["*.cloudfront.net"] });
    const from = new URL("https://registry.example/v2/a/blobs/sha256:x");
    for (const to of [
      "https://registry.example/other",
      "https://auth.example/x",
      "https://d1.cloudfront.net/blob?sig=s",
    ]) {
      expect(() => p.checkRedirect(from, new URL(to)), to).not.toThrow();
    }
    expect(() => p.checkRedirect(from, new URL("https://169.254.169.254/latest/meta-data/?sig=secret"))).toThrow(
      expect.objectContaining({
        code: "UPSTREAM_ERROR",
        message:
          "upstream up redirected to host 169.254.169.254, which is not allowed for it (list it in redirectHosts)",
      }),
    );
    expect(() => p.checkRedirect(from, new URL("https://registry.example:8443/"))).toThrow(/not allowed/);
    expect(() => p.checkRedirect(from, new URL("ftp://registry.example/"))).toThrow(/ftp:/);
  });

  it("never follows https to http, even to an allowed host", () => {
    const p = policy({ redirectHosts: ["cdn.example"] });
    expect(() => p.checkRedirect(new URL("https://registry.example/"), new URL("http://cdn.example/blob"))).toThrow(
      /from https to http:\/\/cdn.example/,
    );
    const plain = policy({ url: "http://registry.example", redirectHosts: ["cdn.example"] });
    expect(() =>
      plain.checkRedirect(new URL("http://registry.example/"), new URL("https://cdn.example/blob")),
    ).not.toThrow();
    expect(() => plain.checkRedirect(new URL("https://cdn.example/"), new URL("http://cdn.example/blob"))).toThrow(
      /from https to http/,
    );
  });
});

describe("OutboundPolicy.request and its connector", () => {
  /** Each server answers from its `answers` list by path; every request is recorded. */
  const servers: Array<{
    server: Server;
    port: number;
    seen: Array<{ path: string; headers: IncomingHttpHeaders }>;
    answers: Map<string, { status: number; location?: string }>;
  }> = [];
  const agents: Agent[] = [];

  beforeAll(async () => {
    for (let i = 0; i < 2; i++) {
      const entry = { seen: [], answers: new Map() } as unknown as (typeof servers)[number];
      entry.server = createServer((req, res) => {
        entry.seen.push({ path: req.url ?? "", headers: req.headers });
        const answer = entry.answers.get(req.url ?? "") ?? { status: 200 };
        res
          .writeHead(answer.status, answer.location !== undefined ? { location: answer.location } : {})
          .end(`from ${i}`);
      });
      await new Promise<void>((r) => entry.server.listen(0, "127.0.0.1", r));
      entry.port = (entry.server.address() as AddressInfo).port;
      servers.push(entry);
    }
  });
  afterAll(async () => {
    await Promise.all(agents.map((a) => a.close()));
    for (const { server } of servers) {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  /** A policy for an upstream at `url`, with an Agent that connects through its connector. */
  const client = (url: string, opts: Partial<OutboundPolicyOptions>) => {
    const p = policy({ url, authHosts: [], ...opts });
    const agent = new Agent({ connect: p.connector({ timeout: 2_000 }) });
    agents.push(agent);
    return { p, agent };
  };

  it("follows allowed redirects, sending Authorization only to the origin it was meant for", async () => {
    const [upstream, cdn] = servers as [(typeof servers)[0], (typeof servers)[0]];
    upstream.answers.set("/blob", { status: 307, location: `http://127.0.0.1:${cdn.port}/stored?sig=s` });
    cdn.seen.length = 0;
    const { p, agent } = client(`http://127.0.0.1:${upstream.port}`, { redirectHosts: [`127.0.0.1:${cdn.port}`] });
    const res = await p.request(agent, {
      url: new URL(`http://127.0.0.1:${upstream.port}/blob`),
      method: "GET",
      headers: {},
      authorization: "Bearer secret",
    });
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe("from 1");
    expect(upstream.seen.at(-1)?.headers.authorization).toBe("Bearer secret");
    expect(cdn.seen.map((s) => [s.path, s.headers.authorization])).toEqual([["/stored?sig=s", undefined]]);
  });

  it("stops after maxRedirects", async () => {
    const [upstream] = servers as [(typeof servers)[0]];
    upstream.answers.set("/loop", { status: 302, location: "/loop" });
    upstream.seen.length = 0;
    const { p, agent } = client(`http://127.0.0.1:${upstream.port}`, { maxRedirects: 3 });
    await expect(
      p.request(agent, { url: new URL(`http://127.0.0.1:${upstream.port}/loop`), method: "GET", headers: {} }),
    ).rejects.toMatchObject({
      code: "UPSTREAM_ERROR",
      message: "upstream up redirected more than 3 times (maxRedirects)",
    });
    expect(upstream.seen).toHaveLength(4);
  });

  it("refuses an allowed host at a loopback address literal unless allowPrivateRedirects", async () => {
    const [upstream, internal] = servers as [(typeof servers)[0], (typeof servers)[0]];
    // The upstream is named `localhost`, so an address literal is not its own host: no DNS lookup to hook here.
    upstream.answers.set("/by-address", { status: 302, location: `http://127.0.0.1:${internal.port}/meta-data` });
    const redirectHosts = [`127.0.0.1:${internal.port}`];
    internal.seen.length = 0;
    const refusing = client(`http://localhost:${upstream.port}`, { redirectHosts });
    await expect(
      refusing.p.request(refusing.agent, {
        url: new URL(`http://localhost:${upstream.port}/by-address`),
        method: "GET",
        headers: {},
      }),
    ).rejects.toMatchObject({
      code: "UPSTREAM_ERROR",
      message: expect.stringMatching(
        /redirected to 127\.0\.0\.1, which is at a non-public address \(127\.0\.0\.1\); set allowPrivateRedirects/,
      ) as string,
    });
    expect(internal.seen).toEqual([]);

    const allowing = client(`http://localhost:${upstream.port}`, { redirectHosts, allowPrivateRedirects: true });
    const res = await allowing.p.request(allowing.agent, {
      url: new URL(`http://localhost:${upstream.port}/by-address`),
      method: "GET",
      headers: {},
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(internal.seen).toHaveLength(1);
  });

  it("refuses an allowed host whose name resolves to a loopback address, checked at connection time", async () => {
    const [upstream, internal] = servers as [(typeof servers)[0], (typeof servers)[0]];
    upstream.answers.set("/to-localhost", { status: 302, location: `http://localhost:${internal.port}/meta-data` });
    internal.seen.length = 0;
    const { p, agent } = client(`http://127.0.0.1:${upstream.port}`, { redirectHosts: [`localhost:${internal.port}`] });
    await expect(
      p.request(agent, { url: new URL(`http://127.0.0.1:${upstream.port}/to-localhost`), method: "GET", headers: {} }),
    ).rejects.toMatchObject({
      code: "UPSTREAM_ERROR",
      message: expect.stringMatching(/redirected to localhost, which is at a non-public address/) as string,
    });
    expect(internal.seen).toEqual([]);
  });
});
