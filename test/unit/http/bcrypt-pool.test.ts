import bcrypt from "bcryptjs";
import { afterEach, describe, expect, it } from "vitest";
import { BcryptPool } from "../../../src/http/bcrypt-pool.ts";
import { RegistryError } from "../../../src/oci/errors.ts";

describe("BcryptPool", () => {
  let pool: BcryptPool | undefined;
  afterEach(() => pool?.close());

  it("compares on worker threads: the calling thread spends next to nothing on it", async () => {
    pool = new BcryptPool({ workers: 1 });
    const hash = bcrypt.hashSync("right", 12); // ~0.3 s of CPU per comparison here
    await pool.compare("warm-up", bcrypt.hashSync("x", 4)); // the worker's start-up is not what is measured
    const before = process.threadCpuUsage();
    const results = await Promise.all([
      pool.compare("right", hash),
      pool.compare("wrong", hash),
      pool.compare("", hash),
    ]);
    const used = process.threadCpuUsage(before);
    expect(results).toEqual([true, false, false]);
    // Three cost-12 comparisons on this thread would take about a second of its CPU time.
    expect((used.user + used.system) / 1000).toBeLessThan(100);
  });

  it("refuses a comparison that finds the queue full with 429 and Retry-After, and runs the rest", async () => {
    pool = new BcryptPool({ workers: 1, maxQueued: 2 });
    const hash = bcrypt.hashSync("right", 10);
    const accepted = [pool.compare("right", hash), pool.compare("wrong", hash), pool.compare("right", hash)];
    expect(pool.load).toEqual({ running: 1, queued: 2 });
    const refused = await pool.compare("right", hash).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(RegistryError);
    expect((refused as RegistryError).code).toBe("TOOMANYREQUESTS");
    expect((refused as RegistryError).headers["Retry-After"]).toBe("1");
    expect(await Promise.all(accepted)).toEqual([true, false, true]);
    expect(pool.load).toEqual({ running: 0, queued: 0 });
  });

  it("fails queued comparisons when closed", async () => {
    pool = new BcryptPool({ workers: 1 });
    const hash = bcrypt.hashSync("right", 10);
    const running = pool.compare("right", hash).catch((err: unknown) => err);
    const queued = pool.compare("right", hash).catch((err: unknown) => err);
    await pool.close();
    expect(await queued).toBeInstanceOf(Error);
    expect(await running).toBeInstanceOf(Error);
    await expect(pool.compare("right", hash)).rejects.toThrow(/closed/);
  });
});
