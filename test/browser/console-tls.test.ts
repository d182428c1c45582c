/**
 * The console's session cookie over HTTPS (a mirror with `tls.*`): Secure as well as HttpOnly and
 * SameSite=Strict; and sign-in refuses a form posted from another origin. Plain HTTP clients (undici) trusting
 * only the test CA: what is checked here is what the server sends, which no browser is needed to read.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent, request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { Teardown } from "../harness/processes.ts";
import { startRegistry } from "../harness/registry.ts";
import { createTestCa } from "../harness/test-ca.ts";

const TOKEN = "console-admin-token-0123456789";
const teardown = new Teardown();
afterAll(() => teardown.run());
let mirror: TestMirror;
let agent: Agent;
let origin: string;

beforeAll(async () => {
  const dir = await mkdtemp(join(tmpdir(), "console-tls-"));
  teardown.add("tls dir", () => rm(dir, { recursive: true, force: true }));
  const ca = await createTestCa(dir);
  const { certPath, keyPath } = await ca.issue("mirror");
  const upstream = teardown.track(await startRegistry());
  mirror = teardown.track(
    await startTestMirror({
      upstreams: { "reg.test": { url: upstream.url, default: true } },
      extra: { admin: { token: TOKEN }, console: { enabled: true }, tls: { certFile: certPath, keyFile: keyPath } },
    }),
  );
  agent = new Agent({ connect: { ca: readFileSync(ca.certPath) } });
  teardown.add("agent", () => agent.close());
  origin = `https://127.0.0.1:${mirror.port}`;
});

const signIn = (token: string, headers: Record<string, string> = {}) =>
  request(`${origin}/console/login`, {
    method: "POST",
    dispatcher: agent,
    headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
    body: new URLSearchParams({ token }).toString(),
  });

describe("console over TLS", () => {
  it("sets a Secure, HttpOnly, SameSite=Strict session cookie that opens the console", async () => {
    const res = await signIn(TOKEN, { origin });
    await res.body.dump();
    expect(res.statusCode).toBe(303);
    expect(res.headers.location).toBe("/console/");
    const cookie = String(res.headers["set-cookie"]);
    expect(cookie).toMatch(/^mirror_console=[A-Za-z0-9_-]{43}; path=\/console; /);
    expect(cookie.toLowerCase().split("; ")).toEqual(expect.arrayContaining(["secure", "httponly", "samesite=strict"]));
    const page = await request(`${origin}/console/`, {
      dispatcher: agent,
      headers: { cookie: cookie.split(";")[0]! },
    });
    expect(page.statusCode).toBe(200);
    expect(await page.body.text()).toContain('<meta name="csrf-token"');
  });

  it("answers 429 after 10 wrong tokens from one address, without checking the next (even the right one)", async () => {
    for (let i = 0; i < 10; i++) {
      const wrong = await signIn(`wrong-token-number-${i}-0123456789`);
      expect(wrong.statusCode).toBe(401);
      await wrong.body.dump();
    }
    const refused = await signIn(TOKEN);
    expect(refused.statusCode).toBe(429);
    expect(Number(refused.headers["retry-after"])).toBeGreaterThan(0);
    expect(refused.headers["set-cookie"]).toBeUndefined();
    expect(await refused.body.text()).toMatch(/too many failed logins from this address; retry in \d+ s/);
  });

  it("refuses a sign-in form posted from another origin, even with the right token", async () => {
    const res = await signIn(TOKEN, { origin: "https://elsewhere.example" });
    expect(res.statusCode).toBe(403);
    expect(res.headers["set-cookie"]).toBeUndefined();
    expect(((await res.body.json()) as { errors: Array<{ code: string }> }).errors[0]!.code).toBe("DENIED");
  });
});
