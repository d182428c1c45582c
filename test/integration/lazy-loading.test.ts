/**
 * What a configuration does not use is not loaded: a mirror without `redis.url` never loads ioredis (imported, it
 * costs ~20 MiB resident; bench/README.md, "Memory"). Each case is a fresh Node process that records every package
 * resolved (module.registerHooks sees both `import` and `require`), starts the mirror through createMirror as
 * main.ts does, answers a few requests and stops; the test reads that list. The Redis case is the control: the
 * same check sees ioredis once the configuration asks for it. No RSS numbers here: those go to the bench.
 *
 * Nor is the AWS SDK loaded without `storage.s3` (~30 MiB imported): test/integration/s3-storage.test.ts is its
 * control, a mirror that does use it.
 *
 * Start-up through the real entry point (`node src/main.ts`): what it loads is watched from inside that process
 * (a module hook given with --import records every module loaded and Node's list of built-ins at exit). The
 * mirror answers its readiness probe without loading the subcommands' modules, the parts of undici and
 * prom-client it does not use, @koa/router's ES module build, node:https or Node's bundled undici (each costs
 * start-up time: src/main.ts, src/upstream/undici.ts, src/observability/prom-client.ts, src/http/koa-router.ts,
 * src/http/server.ts, src/http/router.ts say how much), and it fills Node's compile cache for the next start.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fetchRaw } from "./client.ts";
import { runCommand, startProcess, Teardown, waitFor } from "../harness/processes.ts";
import { startRedis, type RedisServer } from "../harness/redis.ts";

/**
 * Packages a default configuration (embedded metadata store, filesystem storage, no client authentication) must
 * not load.
 */
const NOT_LOADED_BY_DEFAULT = ["ioredis", "@aws-sdk/client-s3", "@aws-sdk/s3-request-presigner", "bcryptjs"];

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

  it("without a config file the YAML parser is not loaded; with one (MIRROR_CONFIG) it is, and the file applies", async () => {
    const withoutFile = await packagesLoaded("no-file", {});
    expect(withoutFile.packages).not.toContain("yaml");
    const file = join(work, "mirror.yaml");
    // The file turns /metrics off, so its effect shows in the statuses (/v2/, /readyz, /metrics).
    await writeFile(file, "metrics:\n  enabled: false\n");
    const withFile = await packagesLoaded("file", { MIRROR_CONFIG: file });
    expect(withFile.statuses).toEqual([200, 200, 404]);
    expect(withFile.packages).toContain("yaml");
  });

  it("with client access configured, bcryptjs is loaded (client authentication) and anonymous pulls still answer", async () => {
    const { packages, statuses } = await packagesLoaded("access", { MIRROR_ACCESS__ANONYMOUS: "true" });
    expect(statuses).toEqual([200, 200, 200]);
    expect(packages).toContain("bcryptjs");
  });

  it("with redis.url set, ioredis is loaded and the mirror uses Redis", async () => {
    const { packages, statuses } = await packagesLoaded("redis", { MIRROR_REDIS__URL: redis.url });
    expect(statuses).toEqual([200, 200, 200]);
    expect(packages).toContain("ioredis");
  });
});

/** Records, at exit, every module the process loaded (file: URLs) and Node's list of loaded built-ins. */
const RECORDER = `
import { registerHooks } from "node:module";
import { writeFileSync } from "node:fs";
const urls = new Set();
registerHooks({
  load(url, context, next) {
    urls.add(url);
    return next(url, context);
  },
});
process.on("exit", () =>
  writeFileSync(process.env.LOADED_OUT, JSON.stringify({ urls: [...urls], builtins: process.moduleLoadList })),
);
`;

interface Loaded {
  urls: string[];
  builtins: string[];
}

/** `node --import recorder src/main.ts ...args` in `dir`, with a clean compile-cache environment; what it loaded. */
function mainEnv(dir: string, extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = { ...(process.env as Record<string, string>) };
  delete env.NODE_COMPILE_CACHE;
  delete env.NODE_DISABLE_COMPILE_CACHE;
  return { ...env, TMPDIR: join(dir, "tmp"), LOADED_OUT: join(dir, "loaded.json"), ...extra };
}

async function recorderIn(dir: string): Promise<string> {
  await mkdir(join(dir, "tmp"), { recursive: true });
  const recorder = join(dir, "recorder.mjs");
  await writeFile(recorder, RECORDER);
  return recorder;
}

describe("start-up through src/main.ts", () => {
  it("answers its readiness probe without loading what it does not use, and fills the compile cache", async () => {
    const dir = await mkdtemp(join(work, "main-"));
    const recorder = await recorderIn(dir);
    let port: number | undefined;
    const mirror = teardown.track(
      startProcess(process.execPath, ["--import", pathToFileURL(recorder).href, resolve("src/main.ts")], {
        name: "mirror",
        cwd: dir,
        env: mainEnv(dir, {
          MIRROR_LISTEN: "127.0.0.1:0",
          MIRROR_STORAGE__PATH: join(dir, "data"),
          MIRROR_LOG__LEVEL: "info",
        }),
        onLine: (line) => {
          if (line.includes('"mirror listening"')) port = (JSON.parse(line) as { port: number }).port;
        },
      }),
    );
    await waitFor(async () => port !== undefined, {
      timeoutMs: 30_000,
      what: "mirror listening",
      whileRunning: mirror,
    });
    const ready = await fetchRaw(`http://127.0.0.1:${port}/readyz`);
    expect(ready.status).toBe(200);
    expect(ready.headers["content-type"]).toMatch(/^application\/json/);
    expect(JSON.parse(ready.body.toString())).toEqual({ status: "ready", reasons: [] });
    const health = await fetchRaw(`http://127.0.0.1:${port}/healthz`);
    expect(health.status).toBe(200);
    expect(JSON.parse(health.body.toString())).toEqual({ status: "ok" });
    await mirror.stop();
    expect(await mirror.exited).toBe(0);

    const { urls, builtins } = JSON.parse(await readFile(join(dir, "loaded.json"), "utf8")) as Loaded;
    // The recorder sees the mirror's own modules and the parts of the packages it does use.
    expect(urls).toEqual(
      expect.arrayContaining([
        pathToFileURL(resolve("src/app.ts")).href,
        expect.stringMatching(/\/node_modules\/undici\/lib\/dispatcher\/agent\.js$/),
        expect.stringMatching(/\/node_modules\/prom-client\/lib\/registry\.js$/),
        expect.stringMatching(/\/node_modules\/@koa\/router\/dist\/index\.js$/),
      ]),
    );
    const notLoaded = [
      /\/src\/cli\//,
      /\/node_modules\/undici\/index\.js$/,
      /\/node_modules\/undici\/lib\/web\//,
      /\/node_modules\/prom-client\/index\.js$/,
      /\/node_modules\/prom-client\/lib\/(pushgateway|cluster)\.js$/,
      /\/node_modules\/@koa\/router\/dist\/index\.mjs$/,
      // No --config: the YAML parser is not needed (src/config/load.ts).
      /\/node_modules\/yaml\//,
      // prom-client's own processCpuTotal would load it (src/observability/prom-client.ts).
      /\/node_modules\/@opentelemetry\//,
      // No admin token, no `access`, no `cluster` (src/app.ts).
      /\/src\/(console|transfer)\//,
      /\/src\/registry\/(admin|peer-fill)-handler\.ts$/,
      /\/src\/http\/(admin-router|client-auth|bcrypt-pool|peer-router)\.ts$/,
      /\/node_modules\/bcryptjs\//,
    ];
    for (const pattern of notLoaded) expect(urls.filter((url) => pattern.test(url))).toEqual([]);
    expect(builtins).toContain("NativeModule http");
    expect(builtins).not.toContain("NativeModule https");
    expect(builtins).not.toContain("NativeModule internal/deps/undici/undici");
    // src/main.ts turned Node's compile cache on (under TMPDIR, as no NODE_COMPILE_CACHE was set).
    expect((await readdir(join(dir, "tmp", "node-compile-cache"))).length).toBeGreaterThan(0);
  });

  it("loads a subcommand's module when the command line names it", async () => {
    const dir = await mkdtemp(join(work, "main-cli-"));
    const recorder = await recorderIn(dir);
    const result = await runCommand(
      process.execPath,
      ["--import", pathToFileURL(recorder).href, resolve("src/main.ts"), "export", "--help"],
      { cwd: dir, env: mainEnv(dir), timeoutMs: 30_000 },
    );
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/^usage: mirror export /);
    const { urls } = JSON.parse(await readFile(join(dir, "loaded.json"), "utf8")) as Loaded;
    expect(urls).toContain(pathToFileURL(resolve("src/cli/export.ts")).href);
    expect(urls).not.toContain(pathToFileURL(resolve("src/cli/import.ts")).href);
  });
});
