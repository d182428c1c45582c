// Self-tests of registries with auth: htpasswd (Basic) accepts the right credentials and refuses wrong
// ones; both htpasswd and token registries can be seeded with pushImage/pushIndex given credentials, and
// read back byte-exact; refused requests appear in the request log as 401s; the harness's own requests
// (readiness, sync) need no credentials from the test.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  blobOf,
  buildImage,
  buildIndex,
  MediaTypes,
  pushBlob,
  pushImage,
  pushIndex,
  randomLayer,
  sha256,
} from "../harness/image-builder.ts";
import { Teardown } from "../harness/processes.ts";
import {
  basicAuthorization,
  HTPASSWD_REALM,
  parseChallenge,
  parseLogLine,
  registryFetch,
  RegistryAuthenticator,
  startRegistry,
  type Registry,
} from "../harness/registry.ts";
import { startTokenServer, type TokenServer } from "../harness/token-server.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

const ACCEPT = [MediaTypes.ociIndex, MediaTypes.ociManifest, MediaTypes.dockerManifest].join(", ");

describe("startRegistry with auth: htpasswd", () => {
  const users = { admin: "admin-pw", "reader.one": "p:w with colon and spaces" };
  let registry: Registry;

  beforeAll(async () => {
    registry = teardown.track(await startRegistry({ auth: { htpasswd: users } }));
  });

  it("challenges with Basic and the harness realm", async () => {
    expect(registry.authMode).toBe("htpasswd");
    for (const path of ["/v2/", "/v2/selftest/x/manifests/v1"]) {
      const res = await fetch(`${registry.url}${path}`);
      expect(res.status).toBe(401);
      expect(res.headers.get("www-authenticate")).toBe(`Basic realm="${HTPASSWD_REALM}"`);
      expect(((await res.json()) as { errors: Array<{ code: string }> }).errors[0]?.code).toBe("UNAUTHORIZED");
    }
  });

  it("accepts every user's right password (bcrypt hashes) and refuses wrong ones", async () => {
    for (const [username, password] of Object.entries(users)) {
      const ok = await fetch(`${registry.url}/v2/`, {
        headers: { authorization: basicAuthorization({ username, password }) },
      });
      expect(ok.status, username).toBe(200);
      await ok.arrayBuffer();
      const bad = await fetch(`${registry.url}/v2/`, {
        headers: { authorization: basicAuthorization({ username, password: `${password}x` }) },
      });
      expect(bad.status, username).toBe(401);
      await bad.arrayBuffer();
    }
    const unknown = await registryFetch(registry, "/v2/", { auth: { username: "nobody", password: "admin-pw" } });
    expect(unknown.status).toBe(401);
    await unknown.arrayBuffer();
    const bearer = await fetch(`${registry.url}/v2/`, { headers: { authorization: "Bearer abc" } });
    expect(bearer.status).toBe(401);
    await bearer.arrayBuffer();
  });

  it("is seeded with pushImage, pushIndex and pushBlob given credentials, and refuses them without", async () => {
    const admin = { username: "admin", password: users.admin };
    const image = buildImage({ layers: [randomLayer(30_000)], format: "docker" });
    await pushImage(registry.url, "selftest/basic", "v1", image, admin);
    const amd = buildImage({ layers: [randomLayer(500)], format: "oci", architecture: "amd64" });
    const arm = buildImage({ layers: [randomLayer(500)], format: "oci", architecture: "arm64" });
    const index = buildIndex([amd, arm]);
    await pushIndex(registry.url, "selftest/basic-multi", "latest", index, admin);
    const loose = blobOf(Buffer.from("a loose blob"));
    await pushBlob(registry.url, "selftest/basic", loose, admin);

    const m = await registryFetch(registry, `/v2/selftest/basic/manifests/v1`, {
      auth: admin,
      headers: { accept: ACCEPT },
    });
    expect(m.status).toBe(200);
    expect(Buffer.from(await m.arrayBuffer()).equals(image.manifest)).toBe(true);
    const i = await registryFetch(registry, `/v2/selftest/basic-multi/manifests/latest`, {
      auth: admin,
      headers: { accept: ACCEPT },
    });
    expect(i.headers.get("docker-content-digest")).toBe(index.digest);
    await i.arrayBuffer();
    const b = await registryFetch(registry, `/v2/selftest/basic/blobs/${loose.digest}`, {
      auth: { username: "reader.one", password: users["reader.one"] },
    });
    expect(sha256(Buffer.from(await b.arrayBuffer()))).toBe(loose.digest);

    await expect(
      pushImage(registry.url, "selftest/basic", "v2", buildImage({ layers: [randomLayer(10)], format: "oci" })),
    ).rejects.toThrow(/answered 401.*Basic realm/s);
    await expect(
      pushBlob(registry.url, "selftest/basic", blobOf(Buffer.from("x")), { username: "admin", password: "nope" }),
    ).rejects.toThrow(/401/);
  });

  it("logs refused requests as 401s with the reason, and sync() works without a test's credentials", async () => {
    await registry.sync();
    registry.clearRequests();
    await (await fetch(`${registry.url}/v2/selftest/basic/manifests/v1`)).arrayBuffer();
    const wrong = basicAuthorization({ username: "admin", password: "wrong" });
    await (
      await fetch(`${registry.url}/v2/selftest/basic/tags/list`, { headers: { authorization: wrong } })
    ).arrayBuffer();
    await (
      await registryFetch(registry, "/v2/selftest/basic/tags/list", {
        auth: { username: "admin", password: users.admin },
      })
    ).arrayBuffer();
    await registry.sync();
    expect(registry.requests().map((r) => `${r.method} ${r.kind} ${r.status}`)).toEqual([
      "GET manifests 401",
      "GET tags 401",
      "GET tags 401", // registryFetch: first try without credentials...
      "GET tags 200", // ...then with them
    ]);
    expect(registry.requests()[0]?.authError).toBe(
      `basic authentication challenge for realm "${HTPASSWD_REALM}": invalid authorization credential`,
    );
    expect(registry.requests()[1]?.authError).toBe(
      `basic authentication challenge for realm "${HTPASSWD_REALM}": authentication failure`,
    );
    expect(registry.count({ status: 401 })).toBe(3);
  });

  it("keeps auth across stop() and start()", async () => {
    await registry.stop();
    await registry.start();
    const res = await fetch(`${registry.url}/v2/`);
    expect(res.status).toBe(401);
    await res.arrayBuffer();
    expect(registry.harnessAuthorization()).toBe(basicAuthorization({ username: "admin", password: users.admin }));
  });

  it("refuses an empty user list before starting anything", async () => {
    await expect(startRegistry({ auth: { htpasswd: {} } })).rejects.toThrow(/at least one user/);
  });
});

describe("startRegistry with auth: token", () => {
  let tokens: TokenServer;
  let registry: Registry;
  const admin = { username: "admin", password: "pw" };

  beforeAll(async () => {
    tokens = teardown.track(await startTokenServer({ users: { admin: "pw" }, admins: ["admin"] }));
    registry = teardown.track(await startRegistry({ auth: { token: tokens } }));
  });

  it("is seeded with pushImage and pushIndex as an admin, with one token per scope rather than per request", async () => {
    const amd = buildImage({ layers: [randomLayer(2_000), randomLayer(3_000)], format: "oci", architecture: "amd64" });
    const arm = buildImage({ layers: [randomLayer(2_000)], format: "oci", architecture: "arm64" });
    const index = buildIndex([amd, arm]);
    tokens.clearRequests();
    await pushIndex(registry.url, "selftest/token-multi", "latest", index, admin);
    // The first HEAD is challenged for pull, the first upload for pull+push; the push token covers the rest.
    expect(tokens.requests().map((r) => [r.user, r.status, r.granted?.[0]?.actions.sort()])).toEqual([
      ["admin", 200, ["pull"]],
      ["admin", 200, ["pull", "push"]],
    ]);
    const single = buildImage({ layers: [randomLayer(1_000)], format: "docker" });
    await pushImage(registry.url, "selftest/token-single", "v1", single, admin);

    for (const [repo, ref, digest, manifest] of [
      ["selftest/token-multi", "latest", index.digest, index.manifest],
      ["selftest/token-multi", amd.digest, amd.digest, amd.manifest],
      ["selftest/token-single", "v1", single.digest, single.manifest],
    ] as const) {
      const res = await registryFetch(registry, `/v2/${repo}/manifests/${ref}`, { headers: { accept: ACCEPT } });
      expect(res.status).toBe(200);
      expect(res.headers.get("docker-content-digest")).toBe(digest);
      expect(Buffer.from(await res.arrayBuffer()).equals(manifest)).toBe(true);
    }
    const layer = single.layers[0];
    if (layer === undefined) throw new Error("no layer");
    const blob = await registryFetch(registry, `/v2/selftest/token-single/blobs/${layer.digest}`);
    expect(sha256(Buffer.from(await blob.arrayBuffer()))).toBe(layer.digest);
  });

  it("without credentials a push fails with the challenge in the error (anonymous tokens only pull)", async () => {
    await expect(
      pushImage(registry.url, "selftest/token-anon", "v1", buildImage({ layers: [randomLayer(10)], format: "oci" })),
    ).rejects.toThrow(/POST .* answered 401.*insufficient_scope/s);
  });

  it("harnessAuthorization() mints tokens without touching the token server", async () => {
    tokens.clearRequests();
    await registry.sync();
    const res = await fetch(`${registry.url}/v2/selftest/token-single/tags/list`, {
      headers: { authorization: registry.harnessAuthorization("selftest/token-single") ?? "" },
    });
    expect(await res.json()).toEqual({ name: "selftest/token-single", tags: ["v1"] });
    expect(tokens.count()).toBe(0);
  });
});

describe("RegistryAuthenticator and parseChallenge", () => {
  it("parses challenges with quoted commas, escapes and bare values", () => {
    expect(
      parseChallenge(
        'Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull,push",error="insufficient_scope"',
      ),
    ).toEqual({
      scheme: "bearer",
      params: {
        realm: "http://127.0.0.1:1/token",
        service: "reg",
        scope: "repository:a/b:pull,push",
        error: "insufficient_scope",
      },
    });
    expect(parseChallenge('Basic realm="a \\"quoted\\" realm"')).toEqual({
      scheme: "basic",
      params: { realm: 'a "quoted" realm' },
    });
    expect(parseChallenge("Bearer realm=http://127.0.0.1:1/token, service=x")).toEqual({
      scheme: "bearer",
      params: { realm: "http://127.0.0.1:1/token", service: "x" },
    });
    expect(parseChallenge(null)).toBeUndefined();
  });

  it("refuses to follow a realm off loopback", async () => {
    const { createServer } = await import("node:http");
    const server = createServer((_req, res) => {
      res.writeHead(401, { "www-authenticate": 'Bearer realm="https://auth.example.invalid/token",service="x"' });
      res.end();
    });
    await new Promise<void>((resolve) => server.listen({ host: "127.0.0.1", port: 0 }, resolve));
    teardown.add("challenge server", () => new Promise<void>((resolve) => server.close(() => resolve())));
    const { port } = server.address() as { port: number };
    await expect(new RegistryAuthenticator().fetch(`http://127.0.0.1:${port}/v2/`)).rejects.toThrow(
      /non-loopback realm/,
    );
  });

  it("parseLogLine reads distribution's auth refusals as 401 requests", () => {
    const line =
      '{"http.request.method":"HEAD","http.request.uri":"/v2/a/b/blobs/sha256:00","level":"warning","msg":"error authorizing context: insufficient scope","time":"2026-11-23T19:08:04.243270979Z","vars.name":"a/b"}';
    expect(parseLogLine(line)).toEqual({
      method: "HEAD",
      path: "/v2/a/b/blobs/sha256:00",
      status: 401,
      written: 0,
      kind: "blobs",
      repo: "a/b",
      authError: "insufficient scope",
      startedAt: expect.closeTo(Date.parse("2026-11-23T19:08:04.243Z") + 0.270979, 3) as number,
    });
    // "authorized request" (info) lines are not requests of their own: the "response completed" line is.
    expect(
      parseLogLine('{"http.request.method":"GET","http.request.uri":"/v2/","level":"info","msg":"authorized request"}'),
    ).toBeUndefined();
  });
});
