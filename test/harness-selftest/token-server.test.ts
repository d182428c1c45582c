// Self-tests of the token server against a real distribution 2.8 in `auth: token` mode: the registry's
// challenges, anonymous and credentialed tokens, wrong credentials, scopes, and what distribution checks
// in a token (signature via x5c or kid, issuer, audience, expiry with its 60 s leeway).
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { buildImage, MediaTypes, pushImage, randomLayer, type BuiltImage } from "../harness/image-builder.ts";
import { Teardown } from "../harness/processes.ts";
import {
  basicAuthorization,
  parseChallenge,
  registryFetch,
  startRegistry,
  type Registry,
} from "../harness/registry.ts";
import { startTokenServer, type TokenAccess, type TokenServer } from "../harness/token-server.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

const REPO = "selftest/token";
const ADMIN = { username: "admin", password: "admin-pw" };
const ALICE = { username: "alice", password: "alice:pw with spaces" };

interface TokenResponse {
  token: string;
  access_token: string;
  expires_in: number;
  issued_at: string;
}

/** The claims of a JWT, unverified (the registry does the verifying). */
function claimsOf(token: string): Record<string, unknown> {
  const [, payload = ""] = token.split(".");
  return JSON.parse(Buffer.from(payload, "base64url").toString("utf8")) as Record<string, unknown>;
}

function headerOf(token: string): Record<string, unknown> {
  const [header = ""] = token.split(".");
  return JSON.parse(Buffer.from(header, "base64url").toString("utf8")) as Record<string, unknown>;
}

describe("startTokenServer with a real registry in token mode", () => {
  let tokens: TokenServer;
  let registry: Registry;
  let image: BuiltImage;

  const pull = (name = REPO): TokenAccess[] => [{ type: "repository", name, actions: ["pull"] }];

  /** GET of the image's manifest with a given Authorization (or none). */
  const getManifest = async (authorization?: string): Promise<Response> =>
    fetch(`${registry.url}/v2/${REPO}/manifests/v1`, {
      headers: { accept: MediaTypes.ociManifest, ...(authorization === undefined ? {} : { authorization }) },
    });

  const statusWith = async (token: string): Promise<number> => {
    const res = await getManifest(`Bearer ${token}`);
    await res.arrayBuffer();
    return res.status;
  };

  const fetchToken = async (query: string, authorization?: string): Promise<Response> =>
    fetch(`${tokens.realm}?${query}`, authorization === undefined ? {} : { headers: { authorization } });

  beforeAll(async () => {
    tokens = teardown.track(
      await startTokenServer({
        users: { [ADMIN.username]: ADMIN.password, [ALICE.username]: ALICE.password },
        admins: ["admin"],
      }),
    );
    registry = teardown.track(await startRegistry({ auth: { token: tokens } }));
    image = buildImage({ layers: [randomLayer(20_000)], format: "oci" });
    await pushImage(registry.url, REPO, "v1", image, ADMIN);
  });

  beforeEach(() => {
    tokens.clearRequests();
    tokens.setExpiresIn(300);
  });

  it("listens on loopback and names realm, service and issuer", () => {
    expect(tokens.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(tokens.realm).toBe(`${tokens.url}/token`);
    expect(tokens.service).toBe("harness-registry");
    expect(tokens.issuer).toBe("harness-token-issuer");
    expect(registry.authMode).toBe("token");
  });

  it("the registry challenges with Bearer realm, service and the scope the route needs", async () => {
    const base = await fetch(`${registry.url}/v2/`);
    expect(base.status).toBe(401);
    expect(base.headers.get("www-authenticate")).toBe(`Bearer realm="${tokens.realm}",service="${tokens.service}"`);
    expect(base.headers.get("docker-distribution-api-version")).toBe("registry/2.0");
    expect(await base.json()).toEqual({
      errors: [{ code: "UNAUTHORIZED", message: "authentication required", detail: null }],
    });

    const manifest = await getManifest();
    expect(manifest.status).toBe(401);
    expect(manifest.headers.get("www-authenticate")).toBe(
      `Bearer realm="${tokens.realm}",service="${tokens.service}",scope="repository:${REPO}:pull"`,
    );
    await manifest.arrayBuffer();

    const head = await fetch(`${registry.url}/v2/${REPO}/blobs/${image.config.digest}`, { method: "HEAD" });
    expect(head.status).toBe(401);
    expect(parseChallenge(head.headers.get("www-authenticate"))?.params["scope"]).toBe(`repository:${REPO}:pull`);

    const upload = await fetch(`${registry.url}/v2/${REPO}/blobs/uploads/`, { method: "POST" });
    expect(upload.status).toBe(401);
    // Go map order: "pull,push" or "push,pull". Compare as a set.
    const scope = parseChallenge(upload.headers.get("www-authenticate"))?.params["scope"] ?? "";
    expect(scope.split(":").pop()?.split(",").sort()).toEqual(["pull", "push"]);
    await upload.arrayBuffer();
  });

  it("issues anonymous pull tokens that the registry accepts, and records the request", async () => {
    const res = await fetchToken(`service=${tokens.service}&scope=repository:${REPO}:pull`);
    expect(res.status).toBe(200);
    const body = (await res.json()) as TokenResponse;
    expect(body.access_token).toBe(body.token);
    expect(body.expires_in).toBe(300);
    expect(Math.abs(Date.parse(body.issued_at) - Date.now())).toBeLessThan(5_000);
    const claims = claimsOf(body.token);
    expect(claims).toMatchObject({ iss: tokens.issuer, aud: tokens.service, sub: "", access: pull() });
    expect(claims["exp"]).toBe((claims["iat"] as number) + 300);
    expect(typeof claims["jti"]).toBe("string");
    expect(headerOf(body.token)).toMatchObject({ alg: "RS256", typ: "JWT" });
    expect((headerOf(body.token)["x5c"] as string[]).length).toBe(1);

    const manifest = await getManifest(`Bearer ${body.token}`);
    expect(manifest.status).toBe(200);
    expect(Buffer.from(await manifest.arrayBuffer()).equals(image.manifest)).toBe(true);

    expect(tokens.requests()).toEqual([
      {
        authorization: "none",
        scope: `repository:${REPO}:pull`,
        service: tokens.service,
        status: 200,
        granted: pull(),
      },
    ]);
    expect(tokens.count({ authorization: "none" })).toBe(1);
    expect(tokens.count({ authorization: "basic-ok" })).toBe(0);
  });

  it("registryFetch does the whole dance: 401, anonymous or credentialed token, retry", async () => {
    const anonymous = await registryFetch(registry, `/v2/${REPO}/manifests/v1`, {
      headers: { accept: MediaTypes.ociManifest },
    });
    expect(anonymous.status).toBe(200);
    await anonymous.arrayBuffer();
    const asAlice = await registryFetch(registry, `/v2/${REPO}/blobs/${image.config.digest}`, { auth: ALICE });
    expect(asAlice.status).toBe(200);
    expect(Buffer.from(await asAlice.arrayBuffer()).equals(image.config.bytes)).toBe(true);
    expect(tokens.requests().map((r) => [r.authorization, r.user, r.status])).toEqual([
      ["none", undefined, 200],
      ["basic-ok", "alice", 200],
    ]);
    expect(tokens.count({ user: "alice", scope: `repository:${REPO}:pull` })).toBe(1);
  });

  it("wrong credentials: 401 with a Basic challenge from the token server, and the registry still says 401", async () => {
    const res = await fetchToken(
      `service=${tokens.service}&scope=repository:${REPO}:pull`,
      basicAuthorization({ username: "alice", password: "wrong" }),
    );
    expect(res.status).toBe(401);
    expect(res.headers.get("www-authenticate")).toBe('Basic realm="harness-token-server"');
    await res.arrayBuffer();
    const unknownUser = await fetchToken(
      `scope=repository:${REPO}:pull`,
      basicAuthorization({ username: "mallory", password: "x" }),
    );
    expect(unknownUser.status).toBe(401);
    await unknownUser.arrayBuffer();
    const bearer = await fetchToken(`scope=repository:${REPO}:pull`, "Bearer something");
    expect(bearer.status).toBe(401);
    await bearer.arrayBuffer();

    const viaRegistry = await registryFetch(registry, `/v2/${REPO}/manifests/v1`, {
      auth: { username: "alice", password: "wrong" },
    });
    expect(viaRegistry.status).toBe(401);
    expect(viaRegistry.headers.get("www-authenticate")).toContain(`realm="${tokens.realm}"`);
    await viaRegistry.arrayBuffer();

    expect(tokens.requests().map((r) => [r.authorization, r.user, r.status])).toEqual([
      ["basic-bad", "alice", 401],
      ["basic-bad", "mallory", 401],
      ["other", undefined, 401],
      ["basic-bad", "alice", 401],
    ]);
  });

  it("grants push only to admins; others get pull of what they asked for", async () => {
    const scope = `scope=repository:${REPO}:pull,push&scope=registry:catalog:*`;
    const asAdmin = (await (await fetchToken(scope, basicAuthorization(ADMIN))).json()) as TokenResponse;
    expect(claimsOf(asAdmin.token)).toMatchObject({
      sub: "admin",
      access: [
        { type: "repository", name: REPO, actions: ["pull", "push"] },
        { type: "registry", name: "catalog", actions: ["*"] },
      ],
    });
    const asAlice = (await (await fetchToken(scope, basicAuthorization(ALICE))).json()) as TokenResponse;
    expect(claimsOf(asAlice.token)).toMatchObject({ sub: "alice", access: pull() });
    const anonymous = (await (await fetchToken(`scope=repository:${REPO}:push`)).json()) as TokenResponse;
    expect(claimsOf(anonymous.token)["access"]).toEqual([]);
    expect(tokens.requests()[0]?.scope).toBe(`repository:${REPO}:pull,push registry:catalog:*`);

    // The registry enforces it: a pull token cannot open an upload, a push token can.
    const denied = await fetch(`${registry.url}/v2/${REPO}/blobs/uploads/`, {
      method: "POST",
      headers: { authorization: `Bearer ${asAlice.token}` },
    });
    expect(denied.status).toBe(401);
    expect(parseChallenge(denied.headers.get("www-authenticate"))?.params["error"]).toBe("insufficient_scope");
    await denied.arrayBuffer();
    const allowed = await fetch(`${registry.url}/v2/${REPO}/blobs/uploads/`, {
      method: "POST",
      headers: { authorization: `Bearer ${asAdmin.token}` },
    });
    expect(allowed.status).toBe(202);
    await allowed.arrayBuffer();
    // A non-admin cannot seed; the error says why.
    await expect(
      pushImage(registry.url, REPO, "by-alice", buildImage({ layers: [randomLayer(100)], format: "oci" }), ALICE),
    ).rejects.toThrow(/401.*insufficient_scope/s);
  });

  it("a token for another repository, or for another audience or issuer, or with aud as an array, is refused", async () => {
    expect(await statusWith(tokens.mintToken({ access: pull() }))).toBe(200);
    expect(await statusWith(tokens.mintToken({ access: pull("selftest/other") }))).toBe(401);
    expect(await statusWith(tokens.mintToken({ access: pull(), audience: "some-other-registry" }))).toBe(401);
    expect(await statusWith(tokens.mintToken({ access: pull(), issuer: "someone-else" }))).toBe(401);
    // Legal JWT, but distribution 2.8 reads `aud` as a single string only.
    expect(await statusWith(tokens.mintToken({ access: pull(), audience: [tokens.service] }))).toBe(401);
    const garbage = await getManifest("Bearer not.a.token");
    expect(parseChallenge(garbage.headers.get("www-authenticate"))?.params["error"]).toBe("invalid_token");
    await garbage.arrayBuffer();
  });

  it("a `kid` header (libtrust key ID) works as well as x5c", async () => {
    const token = tokens.mintToken({ access: pull(), keyReference: "kid" });
    expect(headerOf(token)["kid"]).toMatch(/^([A-Z2-7]{4}:){11}[A-Z2-7]{4}$/);
    expect(headerOf(token)["x5c"]).toBeUndefined();
    expect(await statusWith(token)).toBe(200);
    expect(
      await statusWith(
        tokens
          .mintToken({ access: pull(), keyReference: "kid" })
          .replace(
            /^[^.]+/,
            Buffer.from(JSON.stringify({ typ: "JWT", alg: "RS256", kid: "AAAA:BBBB" })).toString("base64url"),
          ),
      ),
    ).toBe(401);
  });

  it("expiry: distribution accepts a token until 60 s after exp, and from 60 s before nbf", async () => {
    // Seconds-granular claims against a sub-second clock: keep a few seconds from the edges.
    expect(await statusWith(tokens.mintToken({ access: pull(), expiresInSeconds: -55 }))).toBe(200);
    expect(await statusWith(tokens.mintToken({ access: pull(), expiresInSeconds: -61 }))).toBe(401);
    expect(await statusWith(tokens.mintToken({ access: pull(), notBeforeInSeconds: 55 }))).toBe(200);
    expect(await statusWith(tokens.mintToken({ access: pull(), notBeforeInSeconds: 65 }))).toBe(401);
    const expired = await getManifest(`Bearer ${tokens.mintToken({ access: pull(), expiresInSeconds: -120 })}`);
    expect(expired.headers.get("www-authenticate")).toBe(
      `Bearer realm="${tokens.realm}",service="${tokens.service}",scope="repository:${REPO}:pull",error="invalid_token"`,
    );
    await expired.arrayBuffer();
    await registry.sync();
    const refused = registry.requests().filter((r) => r.status === 401);
    expect(refused.length).toBeGreaterThanOrEqual(3);
    expect(refused.at(-1)).toMatchObject({ method: "GET", kind: "manifests", repo: REPO, authError: "invalid token" });
  });

  it("setExpiresIn: a 2 s token is still accepted after it expired (leeway); a negative one is refused at once", async () => {
    tokens.setExpiresIn(2);
    const short = (await (await fetchToken(`scope=repository:${REPO}:pull`)).json()) as TokenResponse;
    expect(short.expires_in).toBe(2);
    const claims = claimsOf(short.token);
    expect((claims["exp"] as number) - (claims["iat"] as number)).toBe(2);
    expect(await statusWith(short.token)).toBe(200);
    await sleep(3_100);
    expect(Date.now() / 1000).toBeGreaterThan(claims["exp"] as number);
    expect(await statusWith(short.token)).toBe(200);

    tokens.setExpiresIn(-61);
    const stale = (await (await fetchToken(`scope=repository:${REPO}:pull`)).json()) as TokenResponse;
    expect(stale.expires_in).toBe(-61);
    expect(await statusWith(stale.token)).toBe(401);
  });

  it("anonymous: false requires credentials", async () => {
    const closed = teardown.track(await startTokenServer({ users: { bob: "pw" }, anonymous: false }));
    const none = await fetch(`${closed.realm}?scope=repository:x:pull`);
    expect(none.status).toBe(401);
    expect(none.headers.get("www-authenticate")).toBe('Basic realm="harness-token-server"');
    await none.arrayBuffer();
    const ok = await fetch(`${closed.realm}?scope=repository:x:pull`, {
      headers: { authorization: basicAuthorization({ username: "bob", password: "pw" }) },
    });
    expect(ok.status).toBe(200);
    await ok.arrayBuffer();
    expect(closed.requests().map((r) => `${r.authorization} ${r.status}`)).toEqual(["none 401", "basic-ok 200"]);
    // Each server has its own key: the registry trusting `tokens` refuses a token signed by `closed`.
    expect(
      await statusWith(closed.mintToken({ access: pull(), audience: tokens.service, issuer: tokens.issuer })),
    ).toBe(401);
  });

  it("setFault: token bodies stall, are reset, or trickle, after the request is recorded as granted", async () => {
    const observeBody = async (windowMs: number): Promise<{ bytes: string; error?: string; ended: boolean }> => {
      const abort = new AbortController();
      const timer = setTimeout(() => abort.abort(), windowMs);
      let bytes = "";
      try {
        const res = await fetch(tokens.realm, { signal: abort.signal });
        expect(res.status).toBe(200);
        for await (const chunk of res.body!) bytes += Buffer.from(chunk as Uint8Array).toString();
        return { bytes, ended: true };
      } catch (err) {
        return { bytes, error: (err as Error).name, ended: false };
      } finally {
        clearTimeout(timer);
      }
    };
    try {
      tokens.clearRequests();
      tokens.setFault({ kind: "stallBody", afterBytes: 10 });
      expect(await observeBody(500)).toEqual({ bytes: '{"token":"', error: "AbortError", ended: false });
      tokens.setFault({ kind: "resetBody", afterBytes: 10 });
      const reset = await observeBody(2_000);
      expect(reset).toMatchObject({ bytes: '{"token":"', ended: false });
      expect(reset.error).not.toBe("AbortError");
      tokens.setFault({ kind: "trickle", intervalMs: 50 });
      const trickled = await observeBody(500);
      expect(trickled).toMatchObject({ error: "AbortError", ended: false });
      expect(trickled.bytes).toMatch(/^ {3,}$/);
      expect(tokens.count({ status: 200 })).toBe(3);
    } finally {
      tokens.setFault(null);
    }
    expect(((await (await fetch(tokens.realm)).json()) as TokenResponse).token).toBeTruthy();
  });

  it("refuses a service it does not serve, and answers 404/405 off the token endpoint", async () => {
    const wrongService = await fetchToken(`service=other&scope=repository:${REPO}:pull`);
    expect(wrongService.status).toBe(400);
    await wrongService.arrayBuffer();
    const post = await fetch(tokens.realm, { method: "POST", body: "grant_type=password" });
    expect(post.status).toBe(405);
    await post.arrayBuffer();
    const elsewhere = await fetch(`${tokens.url}/v2/`);
    expect(elsewhere.status).toBe(404);
    await elsewhere.arrayBuffer();
  });
});
