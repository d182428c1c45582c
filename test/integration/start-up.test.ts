/**
 * The first hour of an operator, through the real entry points as processes (`node src/main.ts`,
 * `bash scripts/start.sh`), run from a directory other than the checkout: a configuration or environment the
 * mirror cannot start with is one line per problem, all of them at once, naming the key and the absolute path,
 * exit status 2 and no stack trace; relative paths are the caller's (command line) or the config file's (keys in
 * it); and the commands' file errors name the flag and the absolute path.
 */
import { spawn } from "node:child_process";
import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fetchRaw } from "./client.ts";
import { runCommand, startProcess, Teardown, waitFor, type CommandResult } from "../harness/processes.ts";

const MAIN = resolve("src/main.ts");
const START = resolve("scripts/start.sh");
const teardown = new Teardown();
afterAll(() => teardown.run());
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "start-up-"));
  teardown.add("temp dir", () => rm(work, { recursive: true, force: true }));
});

/** Node 24 first on PATH, as scripts/ensure-node.sh would find it. */
const scriptEnv = (): Record<string, string> => ({
  ...(process.env as Record<string, string>),
  PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ""}`,
  // start.sh's compile cache goes under the test's own directory, not the user's ~/.cache.
  XDG_CACHE_HOME: join(work, "cache-home"),
  NODE_COMPILE_CACHE: "",
});

/** The mirror itself, from `cwd`, with `args`. */
const mirrorIn = (cwd: string, args: string[]) =>
  runCommand(process.execPath, [MAIN, ...args], { cwd, timeoutMs: 30_000 });

/** The problem lines of a refused start (`  - ...`), after checking how it was refused. */
function refusal(res: CommandResult, heading: string): string[] {
  expect(res.code, res.stderr).toBe(2);
  expect(res.stderr, "a stack trace").not.toMatch(/^\s+at /m);
  expect(res.stderr).not.toMatch(/Error:/);
  const lines = res.stderr.trimEnd().split("\n");
  expect(lines[0]).toBe(heading);
  for (const line of lines.slice(1)) expect(line).toMatch(/^ {2}- \S/);
  return lines.slice(1).map((l) => l.slice(4));
}

async function listenOn(port = 0): Promise<Server> {
  const server = createServer();
  await new Promise<void>((res, rej) => {
    server.once("error", rej);
    server.listen({ host: "127.0.0.1", port }, () => res());
  });
  teardown.add("test listener", () => new Promise<void>((res) => server.close(() => res())));
  return server;
}

const portOf = (server: Server) => (server.address() as { port: number }).port;

describe("a configuration the mirror cannot start with", () => {
  it("lists a scheme-less upstream url with every other schema problem, one line each, exit 2, no stack", async () => {
    const dir = await mkdtemp(join(work, "schema-"));
    await writeFile(
      join(dir, "mirror.yaml"),
      `listen: nowhere
storage: { path: ./data, colour: blue }
upstreams:
  ghcr.io: { url: ghcr.io, default: true }
  b.example: { url: "https://b.example", tagTtl: soon }
`,
    );
    const problems = refusal(await mirrorIn(dir, ["--config", "mirror.yaml"]), "invalid configuration:");
    expect(problems).toEqual(
      expect.arrayContaining([
        "listen: expected host:port, e.g. 0.0.0.0:5000 or [::1]:5000",
        'storage: Unrecognized key: "colour"',
        'upstreams.ghcr.io.url: "ghcr.io" is not an http:// or https:// URL (did you mean https://ghcr.io?)',
        'upstreams.b.example.tagTtl: invalid duration "soon" (examples: 30s, 5m, 1h)',
      ]),
    );
    expect(problems).toHaveLength(4);
    await expect(stat(join(dir, "data")), "nothing is created").rejects.toThrow();
  });

  it("refuses bad cache rules, every problem at once, each naming the rule's index", async () => {
    const dir = await mkdtemp(join(work, "rules-"));
    await writeFile(
      join(dir, "mirror.yaml"),
      `storage: { path: ./data, maxIdle: 30d }
upstreams:
  docker.io: { url: "https://registry-1.docker.io", default: true }
rules:
  - match: "docker.io/library/*"
    tags: '^v?[0-9]+(\\.[0-9]+)*$'
    immutable: true
  - match: "quay.io/org/*"
    cache: false
  - match: "docker.io/team/*"
    tags: '^(v'
  - match: "docker.io/base/*"
    immutable: true
    tagTtl: 1h
`,
    );
    const problems = refusal(await mirrorIn(dir, ["--config", "mirror.yaml"]), "invalid configuration:");
    expect(problems.sort()).toEqual([
      'rules.1.match: "quay.io" is not a configured upstream (known: docker.io)',
      "rules.2.tags: not a regular expression: Invalid regular expression: /^(v/: Unterminated group",
      "rules.3.tagTtl: an immutable tag is never revalidated, so it has no TTL: set one of them",
    ]);
    await expect(stat(join(dir, "data")), "nothing is created").rejects.toThrow();
  });

  it("lists every environment problem at once, each naming its key and the absolute path the config meant", async () => {
    const dir = await mkdtemp(join(work, "env-"));
    await writeFile(join(dir, "a-file"), "not a directory\n");
    const taken = await listenOn();
    const port = portOf(taken);
    // Relative paths in the file are the file's directory's; the mirror runs from another directory.
    await writeFile(
      join(dir, "mirror.yaml"),
      `listen: 127.0.0.1:${port}
storage: { path: a-file/cache }
tls: { certFile: cert.pem, keyFile: key.pem }
admin: { tokenFile: secrets/admin-token }
access:
  anonymous: false
  htpasswdFile: htpasswd
  tokens: [{ name: ci, tokenFile: secrets/ci-token }]
upstreams:
  registry.example:
    url: https://registry.example
    default: true
    credentials: { username: robot, passwordFile: secrets/password }
    tls: { caFile: ca.pem }
`,
    );
    const elsewhere = await mkdtemp(join(work, "cwd-"));
    const problems = refusal(await mirrorIn(elsewhere, ["--config", join(dir, "mirror.yaml")]), "cannot start:");
    const gone = "no such file or directory";
    expect(problems).toEqual([
      `storage.path ${dir}/a-file/cache: ${dir}/a-file is not a directory`,
      `tls.certFile ${dir}/cert.pem: ${gone}`,
      `tls.keyFile ${dir}/key.pem: ${gone}`,
      `access.htpasswdFile ${dir}/htpasswd: ${gone}`,
      `access.tokens.0.tokenFile ${dir}/secrets/ci-token: ${gone}`,
      `admin.tokenFile ${dir}/secrets/admin-token: ${gone}`,
      `upstreams.registry.example.tls.caFile ${dir}/ca.pem: ${gone}`,
      `upstreams.registry.example.credentials.passwordFile ${dir}/secrets/password: ${gone}`,
      `listen 127.0.0.1:${port}: address already in use (another process listens there)`,
    ]);
    await expect(stat(join(elsewhere, "cache")), "nothing is created").rejects.toThrow();
  });

  it("refuses a storage.path that is a file, or lies under one, and a metrics address equal to listen", async () => {
    const dir = await mkdtemp(join(work, "notdir-"));
    await writeFile(join(dir, "cache"), "a file\n");
    const port = portOf(await listenOn());
    await writeFile(
      join(dir, "file.yaml"),
      `listen: 127.0.0.1:${port}\nstorage: { path: cache }\nmetrics: { listen: "127.0.0.1:${port}" }\n`,
    );
    expect(refusal(await mirrorIn(dir, ["--config", "file.yaml"]), "cannot start:")).toEqual([
      `storage.path ${dir}/cache: is not a directory`,
      `listen 127.0.0.1:${port}: address already in use (another process listens there)`,
      `metrics.listen 127.0.0.1:${port}: the same address as listen`,
    ]);
    await writeFile(join(dir, "under.yaml"), `listen: 127.0.0.1:0\nstorage: { path: cache/deeper/data }\n`);
    expect(refusal(await mirrorIn(dir, ["--config", "under.yaml"]), "cannot start:")).toEqual([
      `storage.path ${dir}/cache/deeper/data: ${dir}/cache is not a directory`,
    ]);
  });

  it("refuses a TLS certificate and key that are no usable pair, naming both keys", async () => {
    const dir = await mkdtemp(join(work, "tls-"));
    await writeFile(
      join(dir, "cert.pem"),
      "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    await writeFile(join(dir, "key.pem"), "no key here\n");
    await writeFile(
      join(dir, "mirror.yaml"),
      "listen: 127.0.0.1:0\nstorage: { path: cache }\ntls: { certFile: cert.pem, keyFile: key.pem }\n",
    );
    const [problem, ...rest] = refusal(await mirrorIn(dir, ["--config", "mirror.yaml"]), "cannot start:");
    expect(rest).toEqual([]);
    expect(problem).toMatch(
      new RegExp(
        `^tls\\.certFile ${dir}/cert\\.pem, tls\\.keyFile ${dir}/key\\.pem: not a usable certificate and key: `,
      ),
    );
  });

  it("refuses a storage.path it cannot write (as root: a read-only bind mount, which root cannot write either)", async () => {
    // chmod does not stop root from writing. Running the mirror as another user would need that user to read the
    // checkout, wherever CI cloned it; so as root the directory is made read-only by a bind mount in a private
    // mount namespace (what a read-only volume is), and as anyone else by its mode.
    const asRoot = process.getuid?.() === 0;
    const why = asRoot ? "read-only file system" : "permission denied";
    const dir = await mkdtemp(join(work, "ro-"));
    const readOnly = join(dir, "cache");
    await mkdir(readOnly);
    if (!asRoot) await chmod(readOnly, 0o500);
    await writeFile(
      join(dir, "mirror.yaml"),
      "listen: 127.0.0.1:0\nstorage: { path: cache }\nupstreams: { r.example: { url: 'https://r.example', default: true } }\n",
    );
    const run = (config: string) =>
      new Promise<CommandResult>((res, rej) => {
        const [command, args] = asRoot
          ? [
              "unshare",
              [
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec "$2" "$3" --config "$4"',
                "sh",
                readOnly,
                process.execPath,
                MAIN,
                config,
              ],
            ]
          : [process.execPath, [MAIN, "--config", config]];
        const child = spawn(command, args, { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
        let stdout = "";
        let stderr = "";
        child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
        child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
        const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
        child.once("error", rej);
        child.once("close", (code) => {
          clearTimeout(timer);
          res({ code: code ?? -1, stdout, stderr });
        });
      });
    expect(refusal(await run("mirror.yaml"), "cannot start:")).toEqual([
      `storage.path ${readOnly}: not writable: ${why}`,
    ]);
    // A directory still to be created, inside one it cannot write.
    await writeFile(join(dir, "deeper.yaml"), "listen: 127.0.0.1:0\nstorage: { path: cache/new }\n");
    expect(refusal(await run("deeper.yaml"), "cannot start:")).toEqual([
      `storage.path ${readOnly}/new: not writable (it would be created in ${readOnly}): ${why}`,
    ]);
  });
});

describe("a command line that cannot work", () => {
  it("is one line naming the flag, exit 2, no stack: for the mirror and for each command", async () => {
    for (const [args, line] of [
      [["--confg", "mirror.yaml"], /^mirror: Unknown option '--confg'.* \(see mirror --help\)$/],
      [
        ["export", "alpine:3", "--outptu", "b.tar"],
        /^export: Unknown option '--outptu'.* \(see mirror export --help\)$/,
      ],
      [["prefetch", "alpine:3", "--urll", "x"], /^prefetch: Unknown option '--urll'.* \(see mirror prefetch --help\)$/],
      [
        ["inventory", "--data-dir"],
        /^inventory: Option '--data-dir <value>' argument missing \(see mirror inventory --help\)$/,
      ],
    ] as const) {
      const res = await mirrorIn(work, [...args]);
      expect(res.code, res.stderr).toBe(2);
      expect(res.stderr.trimEnd().split("\n")).toEqual([expect.stringMatching(line)]);
    }
  });
});

describe("scripts/start.sh from the user's own directory", () => {
  it("reads --config from the caller's directory and the config's paths from the config's directory", async () => {
    const home = await mkdtemp(join(work, "home-"));
    await mkdir(join(home, "conf"));
    await writeFile(
      join(home, "conf", "mirror.yaml"),
      // An upstream nothing contacts: the test only asks /v2/.
      "listen: 127.0.0.1:0\nstorage: { path: cache }\nupstreams: { r.example: { url: 'http://127.0.0.1:9', default: true } }\n",
    );
    let port: number | undefined;
    const mirror = teardown.track(
      startProcess("bash", [START, "--config", "conf/mirror.yaml"], {
        name: "start.sh",
        cwd: home,
        env: scriptEnv(),
        onLine: (line) => {
          if (!line.includes('"mirror listening"')) return;
          port = (JSON.parse(line) as { port: number }).port;
        },
      }),
    );
    await waitFor(async () => port !== undefined, {
      timeoutMs: 30_000,
      what: "mirror listening",
      whileRunning: mirror,
    });
    expect((await fetchRaw(`http://127.0.0.1:${port}/v2/`)).status).toBe(200);
    expect((await stat(join(home, "conf", "cache", "blobs"))).isDirectory()).toBe(true);
    await expect(stat(join(home, "cache")), "not the working directory's").rejects.toThrow();
    await expect(stat(resolve("cache")), "not the checkout's").rejects.toThrow();
    await mirror.stop();
    expect(await mirror.exited).toBe(0);
  });

  it("names the absolute path of a --config that is not there, exit 2", async () => {
    const home = await mkdtemp(join(work, "home-"));
    const res = await runCommand("bash", [START, "--config", "mirror.yaml"], {
      cwd: home,
      env: scriptEnv(),
      timeoutMs: 60_000,
    });
    // ensure-node's line comes first on stderr.
    res.stderr = res.stderr.replace(/^ensure-node: .*\n/, "");
    expect(refusal(res, "invalid configuration:")).toEqual([`--config ${home}/mirror.yaml: no such file or directory`]);
  });

  it("gives every command the caller's paths: each missing file is its flag and absolute path, exit 2", async () => {
    const home = await mkdtemp(join(work, "home-"));
    await writeFile(join(home, "mirror.yaml"), "storage: { path: cache }\n");
    const cli = async (args: string[]) => {
      const res = await runCommand("bash", [START, ...args], { cwd: home, env: scriptEnv(), timeoutMs: 60_000 });
      expect(res.code, res.stderr).toBe(2);
      expect(res.stderr).not.toMatch(/^\s+at /m);
      return res.stderr.replace(/^ensure-node: .*\n/, "").trimEnd();
    };
    const gone = "no such file or directory";
    expect(
      await cli(["export", "alpine:3", "--file", "refs.txt", "--output", "b.tar", "--config", "mirror.yaml"]),
    ).toBe(`export: --file ${home}/refs.txt: ${gone}`);
    expect(
      await cli([
        "export",
        "alpine:3",
        "--exclude-listing",
        "inv.json",
        "--output",
        "b.tar",
        "--config",
        "mirror.yaml",
      ]),
    ).toBe(`export: --exclude-listing ${home}/inv.json: ${gone}`);
    expect(await cli(["export", "alpine:3", "--output", "out/b.tar", "--config", "mirror.yaml"])).toBe(
      `export: --output ${home}/out/b.tar: cannot write in ${home}/out: ${gone}`,
    );
    expect(await cli(["export", "alpine:3", "--output", "b.tar", "--config", "nope.yaml"])).toBe(
      `export: invalid configuration:\n  - --config ${home}/nope.yaml: ${gone}`,
    );
    await writeFile(join(home, "a-file"), "x\n");
    expect(await cli(["export", "alpine:3", "--output", "b.tar", "--data-dir", "a-file/d"])).toBe(
      `export: --data-dir ${home}/a-file/d: ${home}/a-file is not a directory`,
    );
    // The cache directory and the upstreams' files, checked together before the cache is opened.
    await writeFile(
      join(home, "ca.yaml"),
      "storage: { path: a-file/d }\nupstreams: { r.example: { url: 'https://r.example', default: true, tls: { caFile: ca.pem } } }\n",
    );
    expect(await cli(["export", "alpine:3", "--output", "b.tar", "--config", "ca.yaml"])).toBe(
      [
        "export: cannot run:",
        `  - storage.path ${home}/a-file/d: ${home}/a-file is not a directory`,
        `  - upstreams.r.example.tls.caFile ${home}/ca.pem: ${gone}`,
      ].join("\n"),
    );
    expect(await cli(["import", "bundle.tar", "--config", "mirror.yaml"])).toBe(
      `import: bundle ${home}/bundle.tar: ${gone}`,
    );
    expect(await cli(["inventory", "--url", "http://127.0.0.1:9", "--token-file", "token"])).toBe(
      `inventory: --token-file ${home}/token: ${gone}`,
    );
    expect(await cli(["inventory", "--data-dir", "cache", "--output", "out/inv.json"])).toBe(
      `inventory: --output ${home}/out/inv.json: cannot write in ${home}/out: ${gone}`,
    );
    expect(await cli(["inventory", "--data-dir", "nothing-here"])).toBe(
      `inventory: --data-dir ${home}/nothing-here: is not a directory`,
    );
    expect(await cli(["prefetch", "alpine:3", "--url", "http://127.0.0.1:9", "--token-file", "token"])).toBe(
      `prefetch: --token-file ${home}/token: ${gone}`,
    );
    await expect(stat(join(home, "b.tar")), "no bundle was written").rejects.toThrow();
  });
});
