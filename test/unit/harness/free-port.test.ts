/**
 * freePortBelowEphemeral (test/harness/processes.ts), which the S3 harness uses for the ports Ceph binds seconds
 * after they were chosen: the port must lie below the kernel's ephemeral range, where no outgoing connection and no
 * `freePort` can take it meanwhile, and be free when it is returned.
 */
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";
import { describe, expect, it } from "vitest";
import { freePortBelowEphemeral } from "../../harness/processes.ts";

describe("freePortBelowEphemeral", () => {
  it("returns ports below the ephemeral range that can be bound", async () => {
    const low = Number((await readFile("/proc/sys/net/ipv4/ip_local_port_range", "utf8")).trim().split(/\s+/)[0]);
    for (let i = 0; i < 5; i++) {
      const port = await freePortBelowEphemeral();
      expect(port).toBeGreaterThanOrEqual(10_000);
      expect(port).toBeLessThan(low);
      const server = createServer();
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen({ host: "127.0.0.1", port, exclusive: true }, resolve);
      });
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
