/**
 * Console sign-ins: a random session id (the cookie) → the admin token it was opened with and the session's CSRF
 * token. Kept in memory only: a restart signs everyone out, and nothing secret is ever written to disk. The token
 * is kept because the console is a client of the admin API and presents it there on the session's behalf; a
 * session whose token is no longer the configured one (rotated through `admin.tokenFile`) ends at its next use.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

/** Sessions open at once; signing in beyond that ends the oldest (a bound on memory whatever clients do). */
const MAX_SESSIONS = 1000;

export interface ConsoleSession {
  readonly token: string;
  readonly csrf: string;
  expires: number;
}

export class ConsoleSessions {
  private readonly sessions = new Map<string, ConsoleSession>();
  private readonly ttlMs: number;
  private readonly now: () => number;

  constructor(opts: { ttlMs: number; now?: () => number }) {
    this.ttlMs = opts.ttlMs;
    this.now = opts.now ?? Date.now;
  }

  /** A new session for a token already checked; answers its id. */
  open(token: string): string {
    const id = randomBytes(32).toString("base64url");
    while (this.sessions.size >= MAX_SESSIONS) this.sessions.delete(this.sessions.keys().next().value!);
    this.sessions.set(id, { token, csrf: randomBytes(32).toString("base64url"), expires: this.now() + this.ttlMs });
    return id;
  }

  /**
   * The live session `id` names, its lifetime extended (sliding), if its token still matches `digest` (the
   * admin token's sha256 now); otherwise it is ended and undefined is answered.
   */
  find(id: string | undefined, digest: Buffer | undefined): ConsoleSession | undefined {
    if (id === undefined) return undefined;
    const session = this.sessions.get(id);
    if (!session) return undefined;
    if (session.expires <= this.now() || !tokenMatches(session.token, digest)) {
      this.sessions.delete(id);
      return undefined;
    }
    session.expires = this.now() + this.ttlMs;
    return session;
  }

  close(id: string | undefined): void {
    if (id !== undefined) this.sessions.delete(id);
  }
}

/** Constant-time whatever the lengths: both sides are hashed first (as the admin API compares its bearer token). */
export function tokenMatches(presented: string, digest: Buffer | undefined): boolean {
  return digest !== undefined && timingSafeEqual(createHash("sha256").update(presented, "utf8").digest(), digest);
}

/** Constant-time comparison of a presented CSRF token with the session's. */
export function csrfMatches(presented: string | undefined, expected: string): boolean {
  if (presented === undefined) return false;
  const a = createHash("sha256").update(presented).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}
