import { createServer, type Server } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.ts";
import { listenProblem } from "../../src/start-up-checks.ts";

const servers: Server[] = [];
afterAll(() => Promise.all(servers.map((s) => new Promise((r) => s.close(r)))));

/** The error a real second listen on `port` gets. */
async function listenError(port: number): Promise<unknown> {
  const second = createServer();
  return new Promise((resolve, reject) => {
    second.once("error", resolve);
    second.listen({ host: "127.0.0.1", port }, () => {
      second.close();
      reject(new Error(`port ${port} was free`));
    });
  });
}

describe("listenProblem (a port taken between the check and the listen)", () => {
  it("names the key whose address could not be listened on, in one line; anything else is no listen problem", async () => {
    const taken = createServer();
    servers.push(taken);
    await new Promise<void>((r) => taken.listen({ host: "127.0.0.1", port: 0 }, () => r()));
    const port = (taken.address() as { port: number }).port;
    const err = await listenError(port);
    const asListen = parseConfig({ listen: `127.0.0.1:${port}` });
    expect(listenProblem(asListen, err)).toBe(
      `listen 127.0.0.1:${port}: address already in use (another process listens there)`,
    );
    const asMetrics = parseConfig({ listen: "127.0.0.1:0", metrics: { listen: `127.0.0.1:${port}` } });
    expect(listenProblem(asMetrics, err)).toBe(
      `metrics.listen 127.0.0.1:${port}: address already in use (another process listens there)`,
    );
    expect(listenProblem(asListen, new TypeError("a bug"))).toBeUndefined();
  });
});
