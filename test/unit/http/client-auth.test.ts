import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import bcrypt from "bcryptjs";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../../src/config/load.ts";
import { BcryptPool } from "../../../src/http/bcrypt-pool.ts";
import { ClientAuth } from "../../../src/http/client-auth.ts";
import { RegistryError } from "../../../src/oci/errors.ts";
import { waitFor } from "../../harness/processes.ts";

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;
const TOKEN = "ci-token-abcdefghijklmnop";

/** A real pool that records what it was asked to compare against. */
class RecordingPool extends BcryptPool {
  readonly hashes: string[] = [];
  override compare(password: string, hash: string): Promise<boolean> {
    this.hashes.push(hash);
    return super.compare(password, hash);
  }
}

/** What identify() answered: the user's name, or the error code (with Retry-After when there is one). */
async function outcome(auth: ClientAuth, authorization: string | undefined, client = "192.0.2.1"): Promise<string> {
  try {
    const who = await auth.identify(authorization, client);
    return who.kind === "user" ? `user ${who.name}` : "anonymous";
  } catch (err) {
    if (!(err instanceof RegistryError)) throw err;
    const retryAfter = err.headers["Retry-After"];
    return retryAfter === undefined ? err.code : `${err.code} retry-after ${retryAfter}`;
  }
}

describe("ClientAuth", () => {
  let dir: string;
  let htpasswd: string;
  const opened: ClientAuth[] = [];
  const load = async (access: Record<string, unknown>, opts: { pool?: BcryptPool; now?: () => number } = {}) => {
    const auth = await ClientAuth.load(parseConfig({ access }).access!, { log: pino({ level: "silent" }), ...opts });
    opened.push(auth);
    return auth;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "client-auth-"));
    htpasswd = join(dir, "htpasswd");
    await writeFile(
      htpasswd,
      `# users\nalice:${bcrypt.hashSync("alice-secret-pw", 5)}\nbob:${bcrypt.hashSync("bob-secret-pw", 5)}\n`,
    );
  });
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((a) => a.close()));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("leaves a token disabled while its file is empty, too short or holds whitespace, naming the key; inline tokens still refuse to start", async () => {
    const cases: Array<[string, RegExp]> = [
      [
        "\n",
        /^client token "ci" is disabled: access\.tokens\.1\.tokenFile: .*token holds a secret of 0 bytes; at least 16 are required$/,
      ],
      ["", /access\.tokens\.1\.tokenFile: .* 0 bytes/],
      ["fifteen-bytes!!\n", /access\.tokens\.1\.tokenFile: .* 15 bytes/],
      ["sixteen bytes ok\n", /access\.tokens\.1\.tokenFile: .* whitespace/],
      [`${TOKEN}\n\n`, /access\.tokens\.1\.tokenFile: .* whitespace/], // only one trailing newline is the file's
    ];
    for (const [content, problem] of cases) {
      const file = join(dir, "token");
      await writeFile(file, content);
      const tokens = [
        { name: "inline", token: "inline-token-0123456789" },
        { name: "ci", tokenFile: file },
      ];
      const auth = await load({ anonymous: false, tokens });
      expect(
        auth.tokenFiles.map((f) => f.problem),
        JSON.stringify(content),
      ).toEqual([expect.stringMatching(problem)]);
      // The disabled token matches nothing: not the empty credential, not what the file holds.
      for (const presented of [
        "Bearer \xa0",
        "Bearer \u00a0\u00a0",
        `Bearer ${content.trimEnd()}`,
        `Bearer ${TOKEN}`,
        "Bearer fifteen-bytes!!",
      ]) {
        expect(
          await outcome(auth, presented, `198.51.100.${presented.length}`),
          JSON.stringify([content, presented]),
        ).toBe("UNAUTHORIZED");
      }
      expect(await outcome(auth, "Bearer inline-token-0123456789")).toBe("user inline");
    }
    // An inline token is held to the same rules, and a short one stops the start-up: the config is read once, so
    // nothing could enable it later.
    expect(() => parseConfig({ access: { tokens: [{ name: "ci", token: "short" }] } })).toThrow(
      /access\.tokens\.0\.token: a token must be at least 16 bytes/,
    );
    await expect(load({ tokens: [{ name: "ci", token: "a token with spaces in it" }] })).rejects.toThrow(
      /access\.tokens\.0\.token: a token cannot contain whitespace/,
    );
  });

  it("enables a token when its file is written after start, and disables it again when the file becomes short", async () => {
    const file = join(dir, "late-token");
    await writeFile(file, ""); // the Secret is mounted, not populated yet
    const auth = await load({ anonymous: false, tokens: [{ name: "ci", tokenFile: file }] });
    const [tokenFile] = auth.tokenFiles;
    expect(tokenFile!.problem).toMatch(/0 bytes/);
    expect(await outcome(auth, `Bearer ${TOKEN}`, "192.0.2.10")).toBe("UNAUTHORIZED");

    await writeFile(file, `${TOKEN}\n`);
    await waitFor(async () => tokenFile!.problem === undefined, {
      timeoutMs: 10_000,
      intervalMs: 50,
      what: "the token file to be re-read",
    });
    expect(await outcome(auth, `Bearer ${TOKEN}`, "192.0.2.11")).toBe("user ci");
    expect(await outcome(auth, "Bearer \xa0", "192.0.2.11")).toBe("UNAUTHORIZED");

    await writeFile(file, "short-token\n");
    await waitFor(async () => tokenFile!.problem !== undefined, {
      timeoutMs: 10_000,
      intervalMs: 50,
      what: "the token file to be re-read",
    });
    expect(tokenFile!.problem).toMatch(/11 bytes; at least 16 are required/);
    for (const presented of [`Bearer ${TOKEN}`, "Bearer short-token", "Bearer \xa0"]) {
      expect(await outcome(auth, presented, "192.0.2.12"), presented).toBe("UNAUTHORIZED");
    }
  });

  it("takes presented credentials byte for byte: no trimming beyond the scheme's own separator", async () => {
    const file = join(dir, "ci-token");
    await writeFile(file, `${TOKEN}\r\n`); // a file's one trailing newline (CRLF too) is not part of the token
    const auth = await load({ anonymous: false, htpasswdFile: htpasswd, tokens: [{ name: "ci", tokenFile: file }] });
    expect(await outcome(auth, `Bearer ${TOKEN}`)).toBe("user ci");
    expect(await outcome(auth, `bearer   ${TOKEN}`)).toBe("user ci"); // the scheme is case-insensitive, then 1*SP
    expect(await outcome(auth, undefined)).toBe("anonymous");
    for (const wrong of [
      "Bearer \xa0",
      `Bearer ${TOKEN}\xa0`,
      `Bearer \xa0${TOKEN}`,
      `Bearer ${TOKEN}\t`,
      `Bearer\t${TOKEN}`,
      `Bearer${TOKEN}`,
      "Bearer",
      `Bearer ${TOKEN.slice(0, -1)}`,
    ]) {
      expect(await outcome(auth, wrong, `198.51.100.${wrong.length}`), JSON.stringify(wrong)).toBe("UNAUTHORIZED");
    }
    expect(await outcome(auth, basic("alice", "alice-secret-pw"))).toBe("user alice");
    const encoded = Buffer.from("alice:alice-secret-pw").toString("base64");
    for (const wrong of [
      basic("alice", "alice-secret-pw "),
      basic("alice ", "alice-secret-pw"),
      `Basic ${encoded}\xa0`,
      `Basic ${encoded}!`,
      basic("", "alice-secret-pw"),
      `Basic ${Buffer.from("alice").toString("base64")}`,
    ]) {
      expect(await outcome(auth, wrong, "203.0.113.9"), JSON.stringify(wrong)).toBe("UNAUTHORIZED");
    }
  });

  it("makes an unknown user cost the same bcrypt comparison as a known one", async () => {
    const pool = new RecordingPool({ workers: 1 });
    const auth = await load({ anonymous: false, htpasswdFile: htpasswd }, { pool });
    expect(await outcome(auth, basic("alice", "wrong"))).toBe("UNAUTHORIZED");
    expect(await outcome(auth, basic("mallory", "wrong"))).toBe("UNAUTHORIZED");
    expect(await outcome(auth, basic("mallory", "alice-secret-pw"))).toBe("UNAUTHORIZED");
    expect(pool.hashes).toHaveLength(3);
    const [known, unknown, again] = pool.hashes as [string, string, string];
    expect(known.slice(0, 7)).toMatch(/^\$2[aby]\$05\$/);
    // A well-formed hash of the file's cost, not any user's.
    expect(unknown).toMatch(/^\$2[aby]\$05\$[./A-Za-z0-9]{53}$/);
    expect(again).toBe(unknown);
    expect(unknown).not.toBe(known);
  });

  it("answers 429 with Retry-After, without checking, once a client has failed too often in its window", async () => {
    let now = 1_000_000;
    const pool = new RecordingPool({ workers: 1 });
    const auth = await load(
      {
        anonymous: false,
        htpasswdFile: htpasswd,
        tokens: [{ name: "ci", token: TOKEN }],
        failedAuth: { max: 3, window: "1m" },
      },
      { pool, now: () => now },
    );
    const attacker = "192.0.2.66";
    expect(await outcome(auth, basic("alice", "guess-1"), attacker)).toBe("UNAUTHORIZED");
    expect(await outcome(auth, basic("mallory", "guess-2"), attacker)).toBe("UNAUTHORIZED");
    expect(await outcome(auth, "Bearer not-the-token-at-all", attacker)).toBe("UNAUTHORIZED");
    const checked = pool.hashes.length;
    now += 15_000;
    expect(await outcome(auth, basic("alice", "guess-4"), attacker)).toBe("TOOMANYREQUESTS retry-after 45");
    // Even the right password: an answer that differs for it would still let the guessing go on.
    expect(await outcome(auth, basic("alice", "alice-secret-pw"), attacker)).toBe("TOOMANYREQUESTS retry-after 45");
    expect(await outcome(auth, `Bearer ${TOKEN}`, attacker)).toBe("TOOMANYREQUESTS retry-after 45");
    expect(pool.hashes.length).toBe(checked); // refused before any bcrypt work
    // Requests without credentials, and other clients, are not affected.
    expect(await outcome(auth, undefined, attacker)).toBe("anonymous");
    expect(await outcome(auth, basic("alice", "alice-secret-pw"), "192.0.2.67")).toBe("user alice");
    // A new window, a new allowance.
    now += 45_000;
    expect(await outcome(auth, basic("bob", "bob-secret-pw"), attacker)).toBe("user bob");
  });

  it("runs one comparison for a burst of requests with the same credential, then remembers it", async () => {
    const pool = new RecordingPool({ workers: 1 });
    const auth = await load({ anonymous: false, htpasswdFile: htpasswd }, { pool });
    const results = await Promise.all(Array.from({ length: 8 }, () => outcome(auth, basic("bob", "bob-secret-pw"))));
    expect(results).toEqual(Array(8).fill("user bob"));
    expect(await outcome(auth, basic("bob", "bob-secret-pw"))).toBe("user bob");
    expect(pool.hashes).toHaveLength(1);
  });
});
