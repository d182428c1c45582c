/**
 * Who is asking: a user from the htpasswd file (Basic auth, bcrypt), a static bearer token, or anonymous.
 * Credentials are never logged; a verified Basic credential is remembered (by a hash of it, for a short time)
 * because dockerd and containerd send it with every request, and bcrypt is deliberately slow.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";
import bcrypt from "bcryptjs";
import { LRUCache } from "lru-cache";
import { RegistryError } from "../oci/errors.ts";
import { ANONYMOUS, CHALLENGE, type Identity } from "../registry/access-policy.ts";

export class ClientAuth {
  private readonly users: ReadonlyMap<string, string>;
  private readonly tokens: ReadonlyArray<{ name: string; hash: Buffer }>;
  private readonly verified = new LRUCache<string, string>({ max: 10_000, ttl: 5 * 60_000 });

  private constructor(users: Map<string, string>, tokens: Array<{ name: string; hash: Buffer }>) {
    this.users = users;
    this.tokens = tokens;
  }

  static async load(opts: { htpasswdFile?: string | undefined; tokens: ReadonlyArray<{ name: string; token?: string | undefined; tokenFile?: string | undefined }> }): Promise<ClientAuth> {
    const users = new Map<string, string>();
    if (opts.htpasswdFile !== undefined) {
      for (const [n, line] of (await readFile(opts.htpasswdFile, "utf8")).split("\n").entries()) {
        const trimmed = line.trim();
        if (trimmed === "" || trimmed.startsWith("#")) continue;
        const colon = trimmed.indexOf(":");
        const hash = trimmed.slice(colon + 1);
        if (colon <= 0 || !/^\$2[aby]\$\d\d\$/.test(hash)) {
          throw new Error(`${opts.htpasswdFile}:${n + 1}: only bcrypt entries (htpasswd -B) are accepted`);
        }
        users.set(trimmed.slice(0, colon), hash);
      }
    }
    const tokens: Array<{ name: string; hash: Buffer }> = [];
    for (const t of opts.tokens) {
      const token = t.token ?? (await readFile(t.tokenFile!, "utf8")).trim();
      tokens.push({ name: t.name, hash: sha256(token) });
    }
    return new ClientAuth(users, tokens);
  }

  /** The identity an Authorization header proves; throws UNAUTHORIZED for credentials that are wrong. */
  async identify(authorization: string | undefined): Promise<Identity> {
    if (authorization === undefined || authorization === "") return ANONYMOUS;
    const space = authorization.indexOf(" ");
    const scheme = authorization.slice(0, space).toLowerCase();
    const value = authorization.slice(space + 1).trim();
    if (scheme === "bearer") {
      const presented = sha256(value);
      // Compare against every token, always, so timing says nothing about which one (nearly) matched.
      let match: string | undefined;
      for (const t of this.tokens) if (timingSafeEqual(presented, t.hash)) match ??= t.name;
      if (match !== undefined) return { kind: "user", name: match };
    } else if (scheme === "basic") {
      const decoded = Buffer.from(value, "base64").toString("utf8");
      const colon = decoded.indexOf(":");
      const name = decoded.slice(0, colon);
      const password = decoded.slice(colon + 1);
      const key = sha256(decoded).toString("hex");
      if (this.verified.get(key) === name) return { kind: "user", name };
      const hash = this.users.get(name);
      if (colon > 0 && hash !== undefined && (await bcrypt.compare(password, hash))) {
        this.verified.set(key, name);
        return { kind: "user", name };
      }
    }
    throw new RegistryError("UNAUTHORIZED", "invalid credentials", { headers: { "WWW-Authenticate": CHALLENGE } });
  }
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}
