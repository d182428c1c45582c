import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.ts";
import { listenProblem, startUpProblems } from "../../src/start-up-checks.ts";

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

describe("startUpProblems with storage.s3 (no object store answering)", () => {
  it("names the key files it cannot read, and an endpoint nothing listens on, one line each", async () => {
    const dir = await mkdtemp(join(tmpdir(), "start-up-s3-"));
    try {
      const closed = createServer();
      await new Promise<void>((r) => closed.listen({ host: "127.0.0.1", port: 0 }, () => r()));
      const port = (closed.address() as { port: number }).port;
      await new Promise((r) => closed.close(r)); // a port nothing listens on any more
      const s3 = { endpoint: `http://127.0.0.1:${port}`, bucket: "mirror", accessKeyId: "k", secretAccessKey: "s" };
      const unreachable = await startUpProblems(parseConfig({ listen: "127.0.0.1:0", storage: { path: dir, s3 } }));
      expect(unreachable).toHaveLength(1);
      expect(unreachable[0]).toMatch(
        new RegExp(
          `^storage\\.s3\\.bucket mirror at http://127\\.0\\.0\\.1:${port}: cannot reach the object store: .*ECONNREFUSED`,
        ),
      );
      const noFiles = await startUpProblems(
        parseConfig({
          listen: "127.0.0.1:0",
          storage: {
            path: dir,
            s3: {
              ...s3,
              accessKeyId: undefined,
              secretAccessKey: undefined,
              accessKeyIdFile: join(dir, "no-id"),
              secretAccessKeyFile: join(dir, "no-secret"),
            },
          },
        }),
      );
      expect(noFiles).toEqual([
        `storage.s3.accessKeyIdFile ${join(dir, "no-id")}: no such file or directory`,
        `storage.s3.secretAccessKeyFile ${join(dir, "no-secret")}: no such file or directory`,
      ]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
