/**
 * Who is asking: a user from the htpasswd file (Basic auth, bcrypt), a static bearer token, or anonymous.
 *
 *  - Credentials are taken exactly as the scheme defines them (RFC 9110 §11.4: the scheme, one or more spaces,
 *    the credentials; Basic's are base64 of `user:password`, RFC 7617). Nothing is trimmed or normalised: a
 *    credential matches only the same bytes.
 *  - Every secret has at least MIN_SECRET_BYTES bytes. An inline token is checked at start-up (a short one stops
 *    it); a token file is watched, and while it holds no usable token that token is disabled: it matches nothing,
 *    and the reason is logged and listed by /readyz (secret-file.ts).
 *  - Tokens are compared by their sha256, in constant time, against every configured token.
 *  - bcrypt runs in worker threads (bcrypt-pool.ts), never on the event loop. A name not in the file costs the
 *    same comparison as a known one (against a dummy hash of the file's cost), so the time of an answer does
 *    not tell which names exist.
 *  - Failed checks are counted per client (auth-failure-limit.ts); past the limit, 429 without checking.
 *  - A verified Basic credential is remembered (by its hash, for five minutes) because dockerd and containerd
 *    send it with every request; concurrent checks of the same credential share one comparison.
 * Credentials are never logged.
 */
import { createHash, randomInt, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";
import bcrypt from "bcryptjs";
import { LRUCache } from "lru-cache";
import type { Logger } from "pino";
import type { Config } from "../config/schema.ts";
import { ConfigError } from "../config/load.ts";
import { SecretFile } from "../config/secret-file.ts";
import { RegistryError } from "../oci/errors.ts";
import { ANONYMOUS, CHALLENGE, type Identity } from "../registry/access-policy.ts";
import { AuthFailureLimit } from "./auth-failure-limit.ts";
import { BcryptPool } from "./bcrypt-pool.ts";

type AccessConfig = Pick<NonNullable<Config["access"]>, "htpasswdFile" | "tokens" | "failedAuth">;

/** `<scheme> 1*SP <credentials>` (RFC 9110 §11.4; the scheme is a token). */
const AUTHORIZATION = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) +(.+)$/s;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
/** An htpasswd bcrypt entry: `$2a$`, `$2b$` or `$2y$`, a two-digit cost, 22 characters of salt and 31 of hash. */
const BCRYPT_HASH = /^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$/;
const BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const VERIFIED_TTL_MS = 5 * 60_000;
/** What a client token may hold: a client could not send whitespace or control characters in a header. */
const TOKEN_CHARACTERS = /^[^\s\p{Cc}]+$/u;
const TOKEN_CHARACTERS_RULE = "a token cannot contain whitespace or control characters (no client could send it)";

/** A configured token: its user name and the sha256 of its bytes, undefined while its file holds no usable token. */
interface Token {
  readonly name: string;
  digest(): Buffer | undefined;
}

export class ClientAuth {
  private readonly users: ReadonlyMap<string, string>;
  /** Compared against when the user name is unknown: the same work as a known name, never a match. */
  private readonly dummyHash: string;
  private readonly tokens: readonly Token[];
  /** The token files, watched while this runs: /readyz lists the problem of each that holds no usable token. */
  readonly tokenFiles: readonly SecretFile[];
  private readonly pool: BcryptPool;
  private readonly failures: AuthFailureLimit;
  private readonly verified = new LRUCache<string, string>({ max: 10_000, ttl: VERIFIED_TTL_MS });
  /** Comparisons running, by credential hash, so a burst of requests with one credential runs bcrypt once. */
  private readonly checking = new Map<string, Promise<boolean>>();

  private constructor(opts: {
    users: Map<string, string>;
    dummyHash: string;
    tokens: Token[];
    tokenFiles: SecretFile[];
    pool: BcryptPool;
    failures: AuthFailureLimit;
  }) {
    this.users = opts.users;
    this.dummyHash = opts.dummyHash;
    this.tokens = opts.tokens;
    this.tokenFiles = opts.tokenFiles;
    this.pool = opts.pool;
    this.failures = opts.failures;
  }

  /**
   * Reads the htpasswd file and the token files, and watches the token files. Throws, naming the key, for an
   * unusable htpasswd file or inline token; a token file that holds no usable token only disables that token.
   */
  static async load(
    access: AccessConfig,
    opts: { log: Logger; pool?: BcryptPool; now?: () => number },
  ): Promise<ClientAuth> {
    const users = new Map<string, string>();
    const costs = new Map<number, number>();
    if (access.htpasswdFile !== undefined) {
      for (const [n, line] of (await readFile(access.htpasswdFile, "utf8")).split("\n").entries()) {
        const trimmed = line.trim();
        if (trimmed === "" || trimmed.startsWith("#")) continue;
        const colon = trimmed.indexOf(":");
        const hash = trimmed.slice(colon + 1);
        const entry = BCRYPT_HASH.exec(hash);
        if (colon <= 0 || !entry) {
          throw new ConfigError([
            `access.htpasswdFile ${access.htpasswdFile}:${n + 1}: only bcrypt entries (htpasswd -B) are accepted`,
          ]);
        }
        users.set(trimmed.slice(0, colon), hash);
        const cost = Number(entry[1]);
        costs.set(cost, (costs.get(cost) ?? 0) + 1);
      }
    }
    // Inline tokens first (their length is checked by the schema): a bad one stops the start-up before any file
    // is watched.
    for (const [i, t] of access.tokens.entries()) {
      if (t.token !== undefined && !TOKEN_CHARACTERS.test(t.token))
        throw new ConfigError([`access.tokens.${i}.token: ${TOKEN_CHARACTERS_RULE}`]);
    }
    const tokens: Token[] = [];
    const tokenFiles: SecretFile[] = [];
    for (const [i, t] of access.tokens.entries()) {
      if (t.token !== undefined) {
        const digest = sha256(Buffer.from(t.token, "utf8"));
        tokens.push({ name: t.name, digest: () => digest });
        continue;
      }
      const file = await SecretFile.open({
        path: t.tokenFile!,
        key: `access.tokens.${i}.tokenFile`,
        what: `client token ${JSON.stringify(t.name)}`,
        log: opts.log,
        check: (secret) => (TOKEN_CHARACTERS.test(secret.toString("utf8")) ? undefined : TOKEN_CHARACTERS_RULE),
      });
      tokenFiles.push(file);
      tokens.push({ name: t.name, digest: () => file.digest });
    }
    // The cost most entries use (the higher on a tie): an unknown name then takes as long as most known ones.
    const [cost] = [...costs].reduce(
      (best, c) => (c[1] > best[1] || (c[1] === best[1] && c[0] > best[0]) ? c : best),
      [10, 0],
    );
    return new ClientAuth({
      users,
      dummyHash: dummyBcryptHash(cost),
      tokens,
      tokenFiles,
      pool: opts.pool ?? new BcryptPool(),
      failures: new AuthFailureLimit({ max: access.failedAuth.max, windowMs: access.failedAuth.window, now: opts.now }),
    });
  }

  /**
   * The identity an Authorization header proves, for a request from `client` (client-address.ts). Throws
   * UNAUTHORIZED for credentials that are wrong, TOOMANYREQUESTS for a client past its failure limit (or
   * when too many logins are being checked at once).
   */
  async identify(authorization: string | undefined, client: string): Promise<Identity> {
    if (authorization === undefined || authorization === "") return ANONYMOUS;
    this.failures.check(client);
    const name = await this.verify(authorization);
    if (name !== undefined) return { kind: "user", name };
    this.failures.failed(client);
    throw new RegistryError("UNAUTHORIZED", "invalid credentials", { headers: { "WWW-Authenticate": CHALLENGE } });
  }

  /** Stops watching the token files and the bcrypt workers. */
  close(): Promise<void> {
    for (const file of this.tokenFiles) file.close();
    return this.pool.close();
  }

  /** The user name the credentials prove, or undefined. */
  private async verify(authorization: string): Promise<string | undefined> {
    const parsed = AUTHORIZATION.exec(authorization);
    if (!parsed) return undefined;
    const scheme = parsed[1]!.toLowerCase();
    const credentials = parsed[2]!;
    if (scheme === "bearer") {
      // Node hands header bytes over as latin1: back to those bytes, to compare with the token's UTF-8 bytes.
      const presented = sha256(Buffer.from(credentials, "latin1"));
      // Compare against every token, always, so timing says nothing about which one (nearly) matched. A disabled
      // token (its file holds none) matches nothing.
      let match: string | undefined;
      for (const t of this.tokens) {
        const digest = t.digest();
        if (digest !== undefined && timingSafeEqual(presented, digest)) match ??= t.name;
      }
      return match;
    }
    if (scheme !== "basic" || !BASE64.test(credentials) || this.users.size === 0) return undefined;
    let decoded: string;
    try {
      decoded = new TextDecoder("utf-8", { fatal: true }).decode(Buffer.from(credentials, "base64"));
    } catch {
      return undefined; // not UTF-8: no two byte strings may become the same password
    }
    const colon = decoded.indexOf(":");
    if (colon <= 0) return undefined;
    const name = decoded.slice(0, colon);
    const key = sha256(Buffer.from(credentials, "latin1")).toString("hex");
    if (this.verified.get(key) === name) return name;
    let check = this.checking.get(key);
    if (check === undefined) {
      check = this.pool
        .compare(decoded.slice(colon + 1), this.users.get(name) ?? this.dummyHash)
        .finally(() => this.checking.delete(key));
      this.checking.set(key, check);
    }
    if (!(await check) || !this.users.has(name)) return undefined;
    this.verified.set(key, name);
    return name;
  }
}

/**
 * A well-formed bcrypt hash of the given cost that no password matches: a fresh salt and a random checksum.
 * Comparing against it costs exactly what comparing against a real entry of that cost does (the password is
 * hashed with the salt and cost, then the checksums are compared).
 */
function dummyBcryptHash(cost: number): string {
  let checksum = "";
  for (let i = 0; i < 31; i++) checksum += BCRYPT_ALPHABET[randomInt(BCRYPT_ALPHABET.length)];
  return bcrypt.genSaltSync(cost) + checksum;
}

function sha256(bytes: Buffer): Buffer {
  return createHash("sha256").update(bytes).digest();
}
