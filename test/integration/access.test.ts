/**
 * Client access control against a real upstream: htpasswd (bcrypt) users and static bearer tokens, ordered
 * allow/deny rules, per-upstream repository patterns, and the refusal to open an upstream's credentials to
 * anonymous clients by accident. A refused request must cause no upstream traffic, and no credential a client
 * sent may appear in the logs.
 */
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import bcrypt from "bcryptjs";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMirror, type Mirror } from "../../src/app.ts";
import { ConfigError, parseConfig } from "../../src/config/load.ts";
import { buildImage, pushImage, randomLayer } from "../harness/image-builder.ts";
import { Teardown, waitFor } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());
const CI_TOKEN = "ci-token-abcdefghijklmnop";
const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;

let upstream: Registry;
let mirror: Mirror;
let url: string;
const logLines: string[] = [];

beforeAll(async () => {
  upstream = teardown.track(await startRegistry());
  for (const repo of ["library/open", "team/app", "team/secret", "blocked/thing"]) {
    await pushImage(
      upstream.url,
      repo,
      "v1",
      buildImage({ format: "oci", layers: [randomLayer(2_000)], labels: { repo } }),
    );
  }
  const dir = await mkdtemp(join(tmpdir(), "access-"));
  const htpasswd = join(dir, "htpasswd");
  await writeFile(htpasswd, `# users\nalice:${bcrypt.hashSync("alice-secret-pw", 4)}\n`);
  const config = parseConfig({
    listen: "127.0.0.1:0",
    storage: { path: join(dir, "data") },
    upstreams: { "docker.io": { url: upstream.url, default: true, repositories: { deny: ["blocked/**"] } } },
    access: {
      htpasswdFile: htpasswd,
      tokens: [{ name: "ci", token: CI_TOKEN }],
      anonymous: false,
      rules: [
        { subjects: ["anonymous"], repositories: ["library/*"], action: "allow" },
        { subjects: ["ci"], repositories: ["team/secret"], action: "deny" },
      ],
    },
  });
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logLines.push(chunk.toString());
      cb();
    },
  });
  mirror = await createMirror(config, { log: pino({ level: "info" }, sink), processMetrics: false });
  const address = await mirror.listen();
  url = `http://127.0.0.1:${address.port}`;
  teardown.add("mirror", () => mirror.close());
});

const pull = (repo: string, authorization?: string) =>
  fetchRaw(`${url}/v2/${repo}/manifests/v1`, {
    headers: { accept: ALL_MANIFEST_TYPES, ...(authorization ? { authorization } : {}) },
  });

describe("client access control", () => {
  it("lets anonymous clients pull what the rules allow, and challenges them for the rest", async () => {
    expect((await pull("library/open")).status).toBe(200);
    const refused = await pull("team/app");
    expect(refused.status).toBe(401);
    expect(errorCode(refused)).toBe("UNAUTHORIZED");
    expect(refused.headers["www-authenticate"]).toBe('Basic realm="registry-mirror"');
    // The ping says 200: anonymous clients may pull something here.
    expect((await fetchRaw(`${url}/v2/`)).status).toBe(200);
  });

  it("lets htpasswd users and token holders in, and applies deny rules to them", async () => {
    expect((await pull("team/app", basic("alice", "alice-secret-pw"))).status).toBe(200);
    expect((await pull("team/secret", basic("alice", "alice-secret-pw"))).status).toBe(200);
    expect((await pull("team/app", `Bearer ${CI_TOKEN}`)).status).toBe(200);
    const denied = await pull("team/secret", `Bearer ${CI_TOKEN}`);
    expect(denied.status).toBe(403);
    expect(errorCode(denied)).toBe("DENIED");
  });

  it("refuses wrong credentials with a challenge", async () => {
    for (const authorization of [basic("alice", "wrong"), basic("mallory", "x"), "Bearer not-a-token", "Digest abc"]) {
      const res = await pull("library/open", authorization);
      expect(res.status, authorization).toBe(401);
      expect(res.headers["www-authenticate"]).toBe('Basic realm="registry-mirror"');
    }
  });

  it("refuses a repository outside the upstream's patterns with DENIED, for everyone, without asking the upstream", async () => {
    await upstream.sync();
    upstream.clearRequests();
    for (const authorization of [undefined, basic("alice", "alice-secret-pw")]) {
      const res = await pull("blocked/thing", authorization);
      expect(res.status).toBe(403);
      expect(errorCode(res)).toBe("DENIED");
      const blob = await fetchRaw(`${url}/v2/blocked/thing/blobs/sha256:${"a".repeat(64)}`, {
        headers: authorization ? { authorization } : {},
      });
      expect(errorCode(blob)).toBe("DENIED");
    }
    await upstream.sync();
    expect(upstream.requests()).toEqual([]);
  });

  it("never logs the credentials clients send, but names the user", async () => {
    await new Promise((r) => setTimeout(r, 50));
    const logs = logLines.join("");
    expect(logs).not.toMatch(/alice-secret-pw|wrong|abcdefghijklmnop/);
    expect(logs).not.toContain(Buffer.from("alice:alice-secret-pw").toString("base64"));
    expect(logs).toMatch(/"user":"alice"/);
  });

  it("starts with an empty client token file, the token disabled, says so in the log and /readyz, and enables it once the file is written", async () => {
    const dir = await mkdtemp(join(tmpdir(), "access-token-file-"));
    const tokenFile = join(dir, "ci-token");
    await writeFile(tokenFile, "\n"); // the Secret is mounted, but not populated yet
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(chunk.toString());
        cb();
      },
    });
    const started = await createMirror(
      parseConfig({
        listen: "127.0.0.1:0",
        storage: { path: join(dir, "data") },
        upstreams: { "docker.io": { url: upstream.url, default: true } },
        access: { anonymous: false, tokens: [{ name: "ci", tokenFile }] },
      }),
      { log: pino({ level: "info" }, sink), processMetrics: false },
    );
    try {
      const base = `http://127.0.0.1:${(await started.listen()).port}`;
      const ping = (authorization: string) => fetchRaw(`${base}/v2/`, { headers: { authorization } });
      const readiness = async () => {
        const res = await fetchRaw(`${base}/readyz`);
        const body = JSON.parse(res.body.toString()) as { status: string; reasons: string[] };
        return { http: res.status, status: body.status, reasons: body.reasons };
      };
      const problem =
        /^client token "ci" is disabled: access\.tokens\.0\.tokenFile: .*ci-token holds a secret of 0 bytes; at least 16 are required$/;
      // Loud: an error at start naming the key, the file, what it holds and the minimum...
      const errors = lines.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.level === 50);
      expect(errors).toEqual([
        expect.objectContaining({
          key: "access.tokens.0.tokenFile",
          file: tokenFile,
          bytes: 0,
          minBytes: 16,
          msg: expect.stringMatching(problem) as string,
        }),
      ]);
      // ...and /readyz lists it, without taking the mirror out of service for everyone else.
      expect(await readiness()).toEqual({ http: 200, status: "degraded", reasons: [expect.stringMatching(problem)] });
      // The disabled token matches nothing.
      for (const authorization of ["Bearer \u00a0", `Bearer ${CI_TOKEN}`])
        expect((await ping(authorization)).status, authorization).toBe(401);

      // The Secret is populated: the token works without a restart.
      await writeFile(tokenFile, `${CI_TOKEN}\n`);
      // (Waiting on /readyz, not on pings: wrong credentials count against the client's failure limit.)
      await waitFor(async () => (await readiness()).reasons.length === 0, {
        timeoutMs: 10_000,
        intervalMs: 100,
        what: "the token file to be re-read",
      });
      expect(await readiness()).toEqual({ http: 200, status: "ready", reasons: [] });
      expect((await ping(`Bearer ${CI_TOKEN}`)).status).toBe(200);
      expect((await ping("Bearer \u00a0")).status).toBe(401);

      // Emptied again (a broken rotation): disabled again, and said so again.
      await writeFile(tokenFile, "");
      await waitFor(async () => (await readiness()).reasons.length > 0, {
        timeoutMs: 10_000,
        intervalMs: 100,
        what: "the token file to be re-read",
      });
      expect(await readiness()).toEqual({
        http: 200,
        status: "degraded",
        reasons: [expect.stringMatching(/ci-token holds a secret of 0 bytes/)],
      });
      expect((await ping(`Bearer ${CI_TOKEN}`)).status).toBe(401);
      expect((await ping("Bearer \u00a0")).status).toBe(401);
    } finally {
      await started.close();
    }
  });

  it("answers repeated wrong credentials with 429 and Retry-After, without checking them, and stays responsive", async () => {
    const dir = await mkdtemp(join(tmpdir(), "access-limit-"));
    await writeFile(join(dir, "htpasswd"), `alice:${bcrypt.hashSync("alice-secret-pw", 10)}\n`);
    const limited = await createMirror(
      parseConfig({
        listen: "127.0.0.1:0",
        storage: { path: join(dir, "data") },
        upstreams: { "docker.io": { url: upstream.url, default: true } },
        access: { htpasswdFile: join(dir, "htpasswd"), anonymous: false, failedAuth: { max: 3, window: "10m" } },
      }),
      { log: pino({ level: "silent" }), processMetrics: false },
    );
    try {
      const base = `http://127.0.0.1:${(await limited.listen()).port}`;
      const ping = (authorization: string) => fetchRaw(`${base}/v2/`, { headers: { authorization } });
      for (const guess of ["guess-1", "guess-2", "guess-3"])
        expect((await ping(basic("alice", guess))).status).toBe(401);
      // A flood of further guesses: all refused before any bcrypt work, while probes are answered.
      const flood = await Promise.all(
        Array.from({ length: 40 }, (_, i) => ping(basic(i % 2 ? "alice" : "mallory", `guess-${i + 4}`))),
      );
      expect(new Set(flood.map((r) => r.status))).toEqual(new Set([429]));
      expect(errorCode(flood[0]!)).toBe("TOOMANYREQUESTS");
      expect(Number(flood[0]!.headers["retry-after"])).toBeGreaterThan(500); // the rest of the 10-minute window
      expect(Number(flood[0]!.headers["retry-after"])).toBeLessThanOrEqual(600);
      expect((await fetchRaw(`${base}/healthz`)).status).toBe(200);
      // The right password too: a different answer for it would let the guessing go on.
      expect((await ping(basic("alice", "alice-secret-pw"))).status).toBe(429);
      expect((await fetchRaw(`${base}/v2/`)).status).toBe(401); // no credentials: the usual challenge
    } finally {
      await limited.close();
    }
  });

  it("refuses to start with an upstream's credentials open to anonymous clients unless that is explicit", () => {
    const base = {
      upstreams: {
        "docker.io": {
          url: "https://registry-1.docker.io",
          default: true,
          credentials: { username: "u", password: "p" },
        },
      },
    };
    expect(() => parseConfig(base)).toThrow(ConfigError);
    expect(() => parseConfig(base)).toThrow(/access\.anonymous/);
    expect(parseConfig({ ...base, access: { anonymous: false } }).access?.anonymous).toBe(false);
    expect(parseConfig({ ...base, access: { anonymous: true } }).access?.anonymous).toBe(true);
  });
});
