import { describe, expect, it } from "vitest";
import { clientKey, plainAddress, TrustedProxies } from "../../../src/http/client-address.ts";

describe("clientKey", () => {
  it("is the address for IPv4, also when a dual-stack listener reports it IPv4-mapped", () => {
    expect(clientKey("192.0.2.1")).toBe("192.0.2.1");
    expect(clientKey("::ffff:192.0.2.1")).toBe("192.0.2.1");
    expect(clientKey("::FFFF:192.0.2.1")).toBe("192.0.2.1");
  });

  it("is the /64 for IPv6, however the address is written", () => {
    const key = "2001:db8:0:1::/64";
    for (const address of [
      "2001:db8:0:1::1",
      "2001:0db8:0000:0001:ffff:ffff:ffff:ffff",
      "2001:db8::1:0:0:0:9",
      "2001:DB8:0:1:a:b:c:d",
      "2001:db8:0:1::192.0.2.1",
      "2001:db8:0:1::1%eth0",
    ]) {
      expect(clientKey(address), address).toBe(key);
    }
    expect(clientKey("2001:db8:0:2::1")).toBe("2001:db8:0:2::/64");
    expect(clientKey("::1")).toBe("0:0:0:0::/64");
    expect(clientKey("fe80::1%lo")).toBe("fe80:0:0:0::/64");
  });

  it("has one key for a socket that no longer knows its peer", () => {
    expect(clientKey(undefined)).toBe("unknown");
  });
});

describe("plainAddress", () => {
  it("logs an IPv4-mapped peer as its IPv4 address, anything else as it is", () => {
    expect(plainAddress("::ffff:192.0.2.1")).toBe("192.0.2.1");
    expect(plainAddress("2001:db8::1")).toBe("2001:db8::1");
    expect(plainAddress("127.0.0.1")).toBe("127.0.0.1");
    expect(plainAddress(undefined)).toBeUndefined();
  });
});

describe("TrustedProxies.forwardedClient", () => {
  const proxies = new TrustedProxies(["10.0.0.0/8", "192.0.2.7", "fd00::/8"]);

  it("believes X-Forwarded-For only from a trusted peer", () => {
    expect(proxies.forwardedClient("10.1.2.3", "198.51.100.4")).toBe("198.51.100.4");
    expect(proxies.forwardedClient("::ffff:192.0.2.7", "198.51.100.4")).toBe("198.51.100.4");
    expect(proxies.forwardedClient("fd12::1", "2001:db8::5")).toBe("2001:db8::5");
    expect(proxies.forwardedClient("192.0.2.8", "198.51.100.4")).toBeUndefined();
    expect(proxies.forwardedClient("203.0.113.9", "198.51.100.4")).toBeUndefined();
    expect(proxies.forwardedClient("10.1.2.3", undefined)).toBeUndefined();
  });

  it("reads the header from the right, skipping trusted proxies: the left end is whatever the client wrote", () => {
    // The client claims 1.1.1.1; its real address, as the first proxy saw it, is 198.51.100.4.
    expect(proxies.forwardedClient("10.0.0.1", "1.1.1.1, 198.51.100.4, 10.0.0.2")).toBe("198.51.100.4");
    // Every hop a trusted proxy: the leftmost is the client.
    expect(proxies.forwardedClient("10.0.0.1", "10.9.9.9, 10.0.0.2")).toBe("10.9.9.9");
  });

  it("names no client when the hop to believe is not an IP address", () => {
    expect(proxies.forwardedClient("10.0.0.1", "198.51.100.4, unknown")).toBeUndefined();
    expect(proxies.forwardedClient("10.0.0.1", "<script>")).toBeUndefined();
    expect(proxies.forwardedClient("10.0.0.1", "")).toBeUndefined();
  });

  it("trusts nobody when none are configured", () => {
    const none = new TrustedProxies([]);
    expect(none.forwardedClient("127.0.0.1", "198.51.100.4")).toBeUndefined();
    expect(none.trusts("127.0.0.1")).toBe(false);
  });
});
