/**
 * The Node/V8 flags live in one file, scripts/node-flags, and every way of running the mirror uses it:
 * scripts/start.sh (checked here on the running process: its command line and environment), the container
 * image's entrypoint (it copies and reads that file; test/image/dockerfile.test.ts runs the image), and the bench
 * (bench/run.ts reads the same file). start.sh also gives Node a compile cache, so that from the second start on
 * the type-stripped sources come from disk and Node's TypeScript stripper is not loaded.
 */
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fetchRaw } from "./client.ts";
import { startProcess, Teardown, waitFor } from "../harness/processes.ts";

const START = resolve("scripts/start.sh");
const teardown = new Teardown();
afterAll(() => teardown.run());
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "node-flags-"));
  teardown.add("temp dir", () => rm(work, { recursive: true, force: true }));
});

/** The flags of scripts/node-flags, read as start.sh reads them. */
async function nodeFlags(): Promise<string[]> {
  return (await readFile(resolve("scripts/node-flags"), "utf8"))
    .split("\n")
    .map((line) => line.replace(/#.*/, "").trim())
    .filter((line) => line !== "");
}

describe("scripts/node-flags", () => {
  it("names at least one flag, each a Node option", async () => {
    const flags = await nodeFlags();
    expect(flags.length).toBeGreaterThan(0);
    for (const flag of flags) expect(flag).toMatch(/^--[a-z0-9-]+(=\S+)?$/);
  });

  it("scripts/start.sh runs node with every flag and a compile cache, which its first start fills", async () => {
    const flags = await nodeFlags();
    const cacheHome = join(work, "cache-home");
    await writeFile(
      join(work, "mirror.yaml"),
      "listen: 127.0.0.1:0\nstorage: { path: cache }\nupstreams: { r.example: { url: 'http://127.0.0.1:9', default: true } }\n",
    );
    let port: number | undefined;
    const mirror = teardown.track(
      startProcess("bash", [START, "--config", "mirror.yaml"], {
        name: "start.sh",
        cwd: work,
        env: {
          ...(process.env as Record<string, string>),
          PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ""}`,
          XDG_CACHE_HOME: cacheHome,
          NODE_COMPILE_CACHE: "",
        },
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
    expect((await fetchRaw(`http://127.0.0.1:${port}/v2/`)).status).toBe(200);
    // start.sh exec's node: the PID it was started as is the mirror's.
    const argv = (await readFile(`/proc/${mirror.pid}/cmdline`, "utf8")).split("\0");
    expect(argv[0]).toMatch(/(^|\/)node$/);
    expect(argv.slice(1, 1 + flags.length)).toEqual(flags);
    expect(argv[1 + flags.length]).toBe(resolve("src/main.ts"));
    const environ = (await readFile(`/proc/${mirror.pid}/environ`, "utf8")).split("\0");
    const cacheDir = join(cacheHome, "registry-mirror", "node-compile-cache");
    expect(environ).toContain(`NODE_COMPILE_CACHE=${cacheDir}`);
    await mirror.stop();
    expect(await mirror.exited).toBe(0);
    // Node writes the cache at exit at the latest: the next start finds the stripped sources there.
    expect((await readdir(cacheDir)).length).toBeGreaterThan(0);
  });

  it("the image's entrypoint starts node with the same file", async () => {
    const dockerfile = await readFile(resolve("Dockerfile"), "utf8");
    expect(dockerfile).toMatch(/^COPY scripts\/node-flags \.\/node-flags$/m);
    const entrypoint = /^ENTRYPOINT (.*)$/m.exec(dockerfile)?.[1];
    expect(JSON.parse(entrypoint ?? "null")).toEqual([
      "/bin/sh",
      "-c",
      `exec node $(sed 's/#.*//' /app/node-flags) --enable-source-maps /app/dist/main.js "$@"`,
      "mirror",
    ]);
  });
});
