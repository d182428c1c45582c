import { describe, expect, it } from "vitest";
import { AuthFailureLimit } from "../../../src/http/auth-failure-limit.ts";
import { RegistryError } from "../../../src/oci/errors.ts";

const refusal = (limit: AuthFailureLimit, client: string): string | undefined => {
  try {
    limit.check(client);
    return undefined;
  } catch (err) {
    return `${(err as RegistryError).code} ${(err as RegistryError).headers["Retry-After"]}`;
  }
};

describe("AuthFailureLimit", () => {
  it("refuses a client for the rest of its window once it has failed `max` times", () => {
    let now = 0;
    const limit = new AuthFailureLimit({ max: 2, windowMs: 10_000, now: () => now });
    limit.failed("a");
    expect(refusal(limit, "a")).toBeUndefined();
    now = 2_500;
    limit.failed("a");
    expect(refusal(limit, "a")).toBe("TOOMANYREQUESTS 8"); // the window started with the first failure
    expect(refusal(limit, "b")).toBeUndefined();
    now = 9_999;
    expect(refusal(limit, "a")).toBe("TOOMANYREQUESTS 1");
    now = 10_000;
    expect(refusal(limit, "a")).toBeUndefined();
    limit.failed("a");
    expect(refusal(limit, "a")).toBeUndefined();
  });

  it("remembers a bounded number of clients", () => {
    const limit = new AuthFailureLimit({ max: 1, windowMs: 60_000, maxClients: 100 });
    for (let i = 0; i < 5_000; i++) limit.failed(`10.0.${i >> 8}.${i & 255}`);
    expect(limit.size).toBe(100);
    expect(refusal(limit, "10.0.19.135")).toBe("TOOMANYREQUESTS 60"); // the latest are kept
  });
});
