/** UpstreamAuth against a loopback token endpoint (its one collaborator); the real token flow is integration-tested. */
import { mkdtemp, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent } from "undici";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { OutboundPolicy } from "../../../src/upstream/outbound-policy.ts";
import { UpstreamAuth } from "../../../src/upstream/token-auth.ts";

let server: Server;
let base: string;
const seen: IncomingMessage[] = [];
let expiresIn: number | undefined = 300;
let delayMs = 0;
/**
 * How the next token bodies break: cut off by a reset, or stalled, after a few bytes; trickled forever; or
 * endless at full speed (a token service that sends far more than a token).
 */
let bodyFault: "reset" | "stall" | "trickle" | "endless" | undefined;
/** Token requests whose connection closed before their answer was complete (the client gave up). */
let closedEarly = 0;
const agent = new Agent();
/** For bodies that stall: gives up after 200 ms without a byte, as the upstream's bodyIdle timeout would. */
const impatient = new Agent({ bodyTimeout: 200 });

beforeAll(async () => {
  server = createServer((req, res) => {
    seen.push(req);
    res.on("close", () => {
      if (!res.writableFinished) closedEarly++;
    });
    const auth = req.headers.authorization;
    if (auth !== undefined && auth !== `Basic ${Buffer.from("alice:s3cret").toString("base64")}`) {
      res.writeHead(401).end();
      return;
    }
    if (bodyFault === "trickle") {
      res.writeHead(200, { "content-type": "application/json" });
      const timer = setInterval(() => res.write(" "), 50); // well under any idle timeout
      res.on("close", () => clearInterval(timer));
      return;
    }
    if (bodyFault === "endless") {
      res.writeHead(200, { "content-type": "application/json" });
      const chunk = Buffer.alloc(16 * 1024, 0x20);
      const more = () => {
        while (!res.destroyed && res.write(chunk));
      };
      res.on("drain", more);
      more();
      return;
    }
    if (bodyFault !== undefined) {
      res.writeHead(200, { "content-type": "application/json" });
      res.write('{"tok');
      if (bodyFault === "reset") setTimeout(() => req.socket.resetAndDestroy(), 20);
      return;
    }
    setTimeout(() => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({ token: `t${seen.length}`, ...(expiresIn !== undefined ? { expires_in: expiresIn } : {}) }),
      );
    }, delayMs);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await agent.close();
  await impatient.close();
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

function auth(
  opts: {
    credentials?: { username?: string; password?: string; passwordFile?: string };
    now?: () => number;
    authHosts?: string[];
    upstreamUrl?: string;
    dispatcher?: Agent;
    deadlineMs?: number;
  } = {},
) {
  return new UpstreamAuth({
    upstream: "up",
    policy: new OutboundPolicy({
      upstream: "up",
      url: opts.upstreamUrl ?? "http://registry.example",
      authHosts: opts.authHosts ?? [new URL(base).host],
      redirectHosts: [],
      allowPrivateRedirects: false,
      maxRedirects: 5,
    }),
    credentials: opts.credentials,
    dispatcher: opts.dispatcher ?? agent,
    deadlineMs: opts.deadlineMs ?? 10_000,
    now: opts.now,
  });
}
const challenge = (realm: string, scope = "repository:a/b:pull") => ({
  scheme: "bearer" as const,
  params: { realm, service: "svc", scope },
});

describe("UpstreamAuth", () => {
  it("fetches an anonymous token with service and scope, and caches it per scope", async () => {
    seen.length = 0;
    const a = auth();
    const header = await a.answer(challenge(`${base}/token`), "repository:a/b:pull");
    expect(header).toMatch(/^Bearer t\d+$/);
    expect(seen[0]!.url).toBe("/token?service=svc&scope=repository%3Aa%2Fb%3Apull");
    expect(seen[0]!.headers.authorization).toBeUndefined();
    expect(a.headerFor("repository:a/b:pull")).toBe(header);
    expect(a.headerFor("repository:other:pull")).toBeUndefined();
  });

  it("shares one token fetch among concurrent requests for the same scope", async () => {
    seen.length = 0;
    delayMs = 100;
    const a = auth();
    const headers = await Promise.all(
      Array.from({ length: 10 }, () => a.answer(challenge(`${base}/token`), "repository:x:pull")),
    );
    delayMs = 0;
    expect(new Set(headers).size).toBe(1);
    expect(seen).toHaveLength(1);
    expect(a.tokenRequests).toBe(1);
  });

  it("lets one caller give up without cancelling the token fetch the others wait for", async () => {
    seen.length = 0;
    delayMs = 300;
    try {
      const a = auth();
      const leaving = new AbortController();
      const first = a.answer(challenge(`${base}/token`), "repository:shared:pull", leaving.signal);
      const second = a.answer(challenge(`${base}/token`), "repository:shared:pull");
      setTimeout(() => leaving.abort(new Error("client went away")), 50);
      await expect(first).rejects.toThrow("client went away");
      await expect(second).resolves.toMatch(/^Bearer t\d+$/);
      expect(seen).toHaveLength(1);
      expect(a.headerFor("repository:shared:pull")).toBe(await second);
    } finally {
      delayMs = 0;
    }
  });

  it("cancels a token fetch once every caller has given up, and the next caller starts a new one", async () => {
    seen.length = 0;
    closedEarly = 0;
    delayMs = 300;
    try {
      const a = auth();
      const callers = [new AbortController(), new AbortController()];
      const waits = callers.map((c) => a.answer(challenge(`${base}/token`), "repository:left:pull", c.signal));
      setTimeout(() => callers.forEach((c) => c.abort(new Error("gone"))), 50);
      for (const w of waits) await expect(w).rejects.toThrow("gone");
      await vi.waitFor(() => expect(closedEarly).toBe(1), { timeout: 5_000 });
      await expect(a.answer(challenge(`${base}/token`), "repository:left:pull")).resolves.toMatch(/^Bearer /);
      expect(seen).toHaveLength(2);
    } finally {
      delayMs = 0;
    }
  });

  it("gives up on a token body that trickles in under the idle timeout, at the fetch's own deadline", async () => {
    bodyFault = "trickle";
    closedEarly = 0;
    try {
      const a = auth({ dispatcher: impatient, deadlineMs: 500 });
      const callers = [
        a.answer(challenge(`${base}/token`), "repository:slow:pull"),
        a.answer(challenge(`${base}/token`), "repository:slow:pull"),
      ];
      for (const c of callers) {
        await expect(c).rejects.toMatchObject({
          code: "UNAVAILABLE",
          message: "token service of upstream up did not finish answering within 0.5 s (timeouts.total)",
        });
      }
      expect(a.tokenRequests).toBe(1);
      await vi.waitFor(() => expect(closedEarly).toBe(1), { timeout: 5_000 });
    } finally {
      bodyFault = undefined;
    }
  });

  it("sends configured credentials, read from a file at each fetch", async () => {
    seen.length = 0;
    const file = join(await mkdtemp(join(tmpdir(), "cred-")), "password");
    await writeFile(file, "s3cret\n");
    const a = auth({ credentials: { username: "alice", passwordFile: file } });
    await a.answer(challenge(`${base}/token`), "repository:a/b:pull");
    expect(seen[0]!.headers.authorization).toBe(`Basic ${Buffer.from("alice:s3cret").toString("base64")}`);
    await writeFile(file, "wrong\n");
    await expect(a.answer(challenge(`${base}/token`), "repository:c:pull")).rejects.toMatchObject({
      code: "UNAUTHORIZED",
      message: expect.stringMatching(/check the configured credentials/) as string,
    });
  });

  it("refreshes a token before it expires", async () => {
    let now = 0;
    expiresIn = 60;
    const a = auth({ now: () => now });
    await a.answer(challenge(`${base}/token`), "repository:a:pull");
    now = 29_000;
    expect(a.headerFor("repository:a:pull")).toBeDefined();
    now = 30_001; // 60 s lifetime minus the 30 s margin
    expect(a.headerFor("repository:a:pull")).toBeUndefined();
    expiresIn = undefined; // the spec's default lifetime: 60 s
    await a.answer(challenge(`${base}/token`), "repository:a:pull");
    expect(a.headerFor("repository:a:pull")).toBeDefined();
    expiresIn = 300;
  });

  it("refuses a realm on a host not allowed for the upstream, without contacting it", async () => {
    seen.length = 0;
    const a = auth({ authHosts: ["auth.docker.io"] });
    await expect(a.answer(challenge(`${base}/token`), "s")).rejects.toMatchObject({
      code: "UPSTREAM_ERROR",
      message: expect.stringMatching(/not allowed/) as string,
    });
    await expect(a.answer(challenge("file:///etc/passwd"), "s")).rejects.toMatchObject({ code: "UPSTREAM_ERROR" });
    expect(seen).toHaveLength(0);
  });

  it("refuses an http realm for an https upstream, naming the realm and sending nothing", async () => {
    seen.length = 0;
    const a = auth({ upstreamUrl: "https://registry.example", credentials: { username: "alice", password: "s3cret" } });
    await expect(a.answer(challenge(`${base}/token?account=x`), "repository:a/b:pull")).rejects.toMatchObject({
      code: "UPSTREAM_ERROR",
      message: `upstream up names token realm ${base}/token, which is not https like the upstream: credentials would cross the network in cleartext`,
    });
    expect(seen).toHaveLength(0);
    expect(a.tokenRequests).toBe(0);
  });

  it.each([
    ["reset", /^(ECONNRESET|UND_ERR_SOCKET)$/],
    ["stall", /^UND_ERR_BODY_TIMEOUT$/],
  ] as const)(
    "maps a token body that breaks mid-way (%s) to UNAVAILABLE naming the token service",
    async (fault, code) => {
      bodyFault = fault;
      try {
        await expect(
          auth({ dispatcher: impatient }).answer(challenge(`${base}/token`), "repository:broken:pull"),
        ).rejects.toMatchObject({
          code: "UNAVAILABLE",
          status: 503,
          message: expect.stringMatching(
            /^token service of upstream up is unavailable \((ECONNRESET|UND_ERR_SOCKET|UND_ERR_BODY_TIMEOUT)\)$/,
          ) as string,
          detail: { upstream: "up", code: expect.stringMatching(code) as string },
        });
      } finally {
        bodyFault = undefined;
      }
    },
  );

  it("refuses a token answer over 64 KiB, and stops reading it there", async () => {
    bodyFault = "endless";
    closedEarly = 0;
    try {
      await expect(auth().answer(challenge(`${base}/token`), "repository:big:pull")).rejects.toMatchObject({
        code: "UPSTREAM_ERROR",
        status: 502,
        message: "token service of upstream up sent a response larger than 65536 bytes",
      });
      await vi.waitFor(() => expect(closedEarly).toBe(1), { timeout: 5_000 });
    } finally {
      bodyFault = undefined;
    }
  });

  it("answers Basic challenges only with configured credentials", async () => {
    await expect(auth().answer({ scheme: "basic", params: {} }, "s")).rejects.toMatchObject({ code: "UNAUTHORIZED" });
    const a = auth({ credentials: { username: "u", password: "p" } });
    expect(await a.answer({ scheme: "basic", params: {} }, "s")).toBe(`Basic ${Buffer.from("u:p").toString("base64")}`);
    expect(a.headerFor("any-scope")).toBe(`Basic ${Buffer.from("u:p").toString("base64")}`);
  });

  it("never puts credentials in its errors", async () => {
    const a = auth({ credentials: { username: "alice", password: "hunter2-secret" } });
    try {
      await a.answer(challenge(`${base}/token`), "s");
      expect.unreachable();
    } catch (err) {
      expect(JSON.stringify({ m: (err as Error).message, d: (err as { detail?: unknown }).detail })).not.toMatch(
        /hunter2|alice/,
      );
    }
  });
});
