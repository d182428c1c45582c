import { describe, expect, it } from "vitest";
import { clientKey } from "../../../src/http/client-address.ts";

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
