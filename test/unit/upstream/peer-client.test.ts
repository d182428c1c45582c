// The signature of the fleet's internal requests (src/upstream/peer-client.ts): bound to the digest, the time
// and the secret; a minute's window either way; anything malformed refused.
import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { peerSignature, verifyPeerSignature } from "../../../src/upstream/peer-client.ts";

const key = createHash("sha256").update("cluster-secret-0123456789").digest();
const other = createHash("sha256").update("cluster-secret-9876543210").digest();
const digest = `sha256:${"a".repeat(64)}`;
const now = 1_790_000_000_000;
const at = now / 1000;

describe("peer signatures", () => {
  it("accept the digest, time and secret they were made for, within a minute either way", () => {
    expect(verifyPeerSignature(key, digest, peerSignature(key, digest, at), now)).toBe(true);
    expect(verifyPeerSignature(key, digest, peerSignature(key, digest, at - 60), now)).toBe(true);
    expect(verifyPeerSignature(key, digest, peerSignature(key, digest, at + 60), now)).toBe(true);
  });

  it("refuse another digest, another secret, an old or future time, no key, and anything malformed", () => {
    expect(verifyPeerSignature(key, `sha256:${"b".repeat(64)}`, peerSignature(key, digest, at), now)).toBe(false);
    expect(verifyPeerSignature(key, digest, peerSignature(other, digest, at), now)).toBe(false);
    expect(verifyPeerSignature(key, digest, peerSignature(key, digest, at - 61), now)).toBe(false);
    expect(verifyPeerSignature(key, digest, peerSignature(key, digest, at + 61), now)).toBe(false);
    expect(verifyPeerSignature(undefined, digest, peerSignature(key, digest, at), now)).toBe(false);
    const good = peerSignature(key, digest, at);
    for (const bad of [
      undefined,
      "",
      good.toUpperCase(),
      `${good}0`,
      good.slice(0, -1),
      `x${good}`,
      good.replace(".", ":"),
    ])
      expect(verifyPeerSignature(key, digest, bad, now), String(bad)).toBe(false);
  });
});
