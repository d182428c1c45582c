/**
 * What a configuration does not use is not loaded: a mirror without `redis.url` never loads ioredis (imported, it
 * costs ~20 MiB resident; bench/README.md, "Memory"). Each case is a fresh Node process that records every package
 * resolved (module.registerHooks sees both `import` and `require`), starts the mirror through createMirror as
 * main.ts does, answers a few requests and stops; the test reads that list. The Redis case is the control: the
 * same check sees ioredis once the configuration asks for it. No RSS numbers here: those go to the bench.
 *
 * Nor is the AWS SDK loaded without `storage.s3` (~30 MiB imported): test/integration/s3-storage.test.ts is its
 * control, a mirror that does use it.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCommand, Teardown } from "../harness/processes.ts";
import { startRedis, type RedisServer } from "../harness/redis.ts";

/** Packages a default configuration (embedded metadata store, filesystem storage) must not load. */
const NOT_LOADED_BY_DEFAULT = ["ioredis", "@aws-sdk/client-s3", "@aws-sdk/s3-request-presigner"];

const teardown = new Teardown();
afterAll(() => teardown.run());
let work: string;
let redis: RedisServer;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "lazy-loading-"));
  teardown.add("temp dir", () => rm(work, { recursive: true, force: true }));
  redis = await startRedis();
  teardown.add("redis", () => redis.dispose());
});

/**
 * Starts a mirror in a child process with `env` (MIRROR_* keys) on top of a loopback listener and its own
 * storage, requests /v2/, /readyz and /metrics, closes it, and returns the packages it resolved and the statuses.
 */
async function packagesLoaded(
  name: string,
  env: Record<string, string>,
): Promise<{ packages: string[]; statuses: number[] }> {
  const script = `
    import { registerHooks } from "node:module";
    const packages = new Set();
    registerHooks({
      resolve(specifier, context, next) {
        const found = next(specifier, context);
        const m = /\\/node_modules\\/((?:@[^/]+\\/)?[^/]+)\\//.exec(found.url);
        if (m) packages.add(m[1]);
        return found;
      },
    });
    const { loadConfig } = await import(${JSON.stringify(pathToFileURL(resolve("src/config/load.ts")).href)});
    const { createMirror } = await import(${JSON.stringify(pathToFileURL(resolve("src/app.ts")).href)});
    const mirror = await createMirror(loadConfig({}));
    const { port } = await mirror.listen();
    const http = process.getBuiltinModule("node:http");
    const statuses = [];
    for (const path of ["/v2/", "/readyz", "/metrics"]) {
      statuses.push(await new Promise((done, fail) => {
        http.get({ host: "127.0.0.1", port, path }, (res) => { res.resume(); res.on("end", () => done(res.statusCode)); })
          .on("error", fail);
      }));
    }
    await mirror.close();
    process.stdout.write(JSON.stringify({ packages: [...packages].sort(), statuses }));
  `;
  const result = await runCommand(process.execPath, ["--input-type=module", "-e", script], {
    env: {
      ...(process.env as Record<string, string>),
      MIRROR_LISTEN: "127.0.0.1:0",
      MIRROR_STORAGE__PATH: join(work, name),
      MIRROR_LOG__LEVEL: "warn",
      ...env,
    },
    timeoutMs: 30_000,
  });
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout.slice(result.stdout.lastIndexOf('{"packages"'))) as {
    packages: string[];
    statuses: number[];
  };
}

describe("lazy loading", () => {
  it("a mirror without redis.url or storage.s3 serves requests without loading ioredis or the AWS SDK", async () => {
    const { packages, statuses } = await packagesLoaded("default", {});
    expect(statuses).toEqual([200, 200, 200]);
    // The check sees the packages the mirror does use.
    expect(packages).toEqual(expect.arrayContaining(["koa", "undici", "pino", "prom-client"]));
    for (const pkg of NOT_LOADED_BY_DEFAULT) expect(packages).not.toContain(pkg);
  });

  it("with redis.url set, ioredis is loaded and the mirror uses Redis", async () => {
    const { packages, statuses } = await packagesLoaded("redis", { MIRROR_REDIS__URL: redis.url });
    expect(statuses).toEqual([200, 200, 200]);
    expect(packages).toContain("ioredis");
  });
});
