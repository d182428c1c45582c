import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { ConsoleSessions, csrfMatches, tokenMatches } from "../../../src/console/console-sessions.ts";

const TOKEN = "console-admin-token-0123456789";
const digest = (t: string) => createHash("sha256").update(t).digest();

function sessions() {
  let now = 1_000_000;
  const s = new ConsoleSessions({ ttlMs: 60_000, now: () => now });
  return { s, advance: (ms: number) => (now += ms) };
}

describe("ConsoleSessions", () => {
  it("finds an open session with its own CSRF token, and extends it while used", () => {
    const { s, advance } = sessions();
    const id = s.open(TOKEN);
    const other = s.open(TOKEN);
    expect(id).not.toBe(other);
    const found = s.find(id, digest(TOKEN))!;
    expect(found.token).toBe(TOKEN);
    expect(found.csrf).not.toBe(s.find(other, digest(TOKEN))!.csrf);
    advance(59_000);
    expect(s.find(id, digest(TOKEN))).toBeDefined();
    advance(59_000);
    expect(s.find(id, digest(TOKEN))).toBeDefined();
  });

  it("ends a session idle past its lifetime, one closed, and one whose token is no longer the admin token", () => {
    const { s, advance } = sessions();
    const idle = s.open(TOKEN);
    advance(60_000);
    expect(s.find(idle, digest(TOKEN))).toBeUndefined();
    const closed = s.open(TOKEN);
    s.close(closed);
    expect(s.find(closed, digest(TOKEN))).toBeUndefined();
    const rotated = s.open(TOKEN);
    expect(s.find(rotated, digest("another-admin-token-9876543210"))).toBeUndefined();
    // Ended, not only refused: the old token does not bring it back.
    expect(s.find(rotated, digest(TOKEN))).toBeUndefined();
    const disabled = s.open(TOKEN);
    expect(s.find(disabled, undefined)).toBeUndefined();
    expect(s.find(undefined, digest(TOKEN))).toBeUndefined();
    expect(s.find("made-up", digest(TOKEN))).toBeUndefined();
  });

  it("keeps at most 1000 sessions, ending the oldest", () => {
    const { s } = sessions();
    const first = s.open(TOKEN);
    const second = s.open(TOKEN);
    for (let i = 0; i < 999; i++) s.open(TOKEN);
    expect(s.find(first, digest(TOKEN))).toBeUndefined();
    expect(s.find(second, digest(TOKEN))).toBeDefined();
  });

  it("compares tokens and CSRF tokens exactly", () => {
    expect(tokenMatches(TOKEN, digest(TOKEN))).toBe(true);
    expect(tokenMatches(`${TOKEN} `, digest(TOKEN))).toBe(false);
    expect(tokenMatches(TOKEN, undefined)).toBe(false);
    expect(csrfMatches("abc", "abc")).toBe(true);
    expect(csrfMatches("abd", "abc")).toBe(false);
    expect(csrfMatches(undefined, "abc")).toBe(false);
  });
});
