/**
 * CLI entry: `node src/main.ts [--config FILE]`. Loads the configuration (file, then MIRROR_* environment),
 * checks what it needs of the machine (start-up-checks.ts), starts the mirror, and shuts down gracefully on
 * SIGTERM/SIGINT, letting client responses and running fills finish within `shutdownGrace` (app.ts, close);
 * exit status 0 after that, whether or not something was cut at the end of the grace. Exit status 2: a command
 * line, configuration or machine the mirror cannot start with, one line per problem and no stack trace; 1:
 * anything else.
 */
import { enableCompileCache } from "node:module";
import { parseArgs } from "node:util";
import { applyHeapPolicy } from "./heap-policy.ts";

// Only built-in modules and heap-policy.ts (which imports node:v8 alone) are imported statically here; the
// mirror, its configuration loader and each command are imported when the command line asks for them (a
// subcommand's modules are not loaded by the mirror, nor the mirror's by a subcommand:
// test/integration/lazy-loading.test.ts). That also lets Node's compile cache cover them: it keeps V8's compiled
// code of every module loaded after this call on disk, keyed by content, so a start after the first compiles
// little (the compiled build: under the OS temp directory unless NODE_COMPILE_CACHE names one; scripts/start.sh
// names one for the type-stripped sources). It never fails a start: an unwritable directory only leaves it off.
enableCompileCache();

const USAGE = `usage: mirror [--config FILE]
       mirror prefetch <reference> [--platform os/arch]... [--url URL]  (see mirror prefetch --help)
       mirror warmup <set> [--url URL]                     (run a warm-up set now: see mirror warmup --help)
       mirror export <reference>... --output bundle.tar      (air-gapped transfer: see docs/air-gapped-transfer.md)
       mirror import <bundle.tar | -> [--pin] [--url URL | --data-dir DIR]
       mirror inventory [--url URL | --data-dir DIR] [--output inventory.json]

Starts the pull-through registry mirror. Without a config file it listens on 0.0.0.0:5000, caches under ./data
and mirrors Docker Hub. MIRROR_CONFIG names a config file too; MIRROR_* variables override single keys
(e.g. MIRROR_LISTEN=127.0.0.1:5001, MIRROR_STORAGE__PATH=/var/cache/mirror). See docs/configuration.md.`;

interface Command {
  usage: string;
  run: (argv: string[]) => Promise<number>;
}

/** Subcommands: the first argument names one; its module is loaded only then. */
const COMMANDS = new Map<string, () => Promise<Command>>([
  [
    "prefetch",
    async () => import("./cli/prefetch.ts").then((m) => ({ usage: m.PREFETCH_USAGE, run: m.prefetchCommand })),
  ],
  ["warmup", async () => import("./cli/warmup.ts").then((m) => ({ usage: m.WARMUP_USAGE, run: m.warmupCommand }))],
  ["export", async () => import("./cli/export.ts").then((m) => ({ usage: m.EXPORT_USAGE, run: m.exportCommand }))],
  ["import", async () => import("./cli/import.ts").then((m) => ({ usage: m.IMPORT_USAGE, run: m.importCommand }))],
  [
    "inventory",
    async () => import("./cli/inventory.ts").then((m) => ({ usage: m.INVENTORY_USAGE, run: m.inventoryCommand })),
  ],
]);

async function main(): Promise<number> {
  applyHeapPolicy(); // before the mirror allocates anything
  const loadCommand = COMMANDS.get(process.argv[2] ?? "");
  if (loadCommand) {
    const command = await loadCommand();
    if (process.argv.includes("--help")) {
      console.log(command.usage);
      return 0;
    }
    return command.run(process.argv.slice(3)).catch((err: unknown) => usageError(process.argv[2]!, err));
  }
  let values;
  try {
    ({ values } = parseArgs({
      options: { config: { type: "string", short: "c" }, help: { type: "boolean", short: "h" } },
    }));
  } catch (err) {
    return usageError("mirror", err);
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const [{ ConfigError, loadConfig }, { listenProblem, startUpProblems }, { createMirror }, { DataDirLockedError }] =
    await Promise.all([
      import("./config/load.ts"),
      import("./start-up-checks.ts"),
      import("./app.ts"),
      import("./storage/data-dir-lock.ts"),
    ]);
  // A configuration or environment the mirror cannot start with is one line per problem, all at once, and exit
  // status 2: the operator has something to fix, and a stack trace would bury it. A stack is kept for bugs.
  let config;
  try {
    config = loadConfig({ file: values.config });
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      return 2;
    }
    throw err;
  }
  const problems = await startUpProblems(config);
  if (problems.length > 0) {
    console.error(cannotStart(problems));
    return 2;
  }
  let mirror;
  try {
    mirror = await createMirror(config);
  } catch (err) {
    if (err instanceof DataDirLockedError) {
      console.error(err.message);
      return 1;
    }
    if (err instanceof ConfigError) {
      console.error(err.message);
      return 2;
    }
    throw err;
  }
  try {
    await mirror.listen();
  } catch (err) {
    // The port was free when checked, and taken by the time the mirror listened.
    const problem = listenProblem(config, err);
    if (problem === undefined) throw err;
    console.error(cannotStart([problem]));
    await mirror.close();
    return 2;
  }
  // Caught once: after the first SIGTERM or SIGINT, a second one is not caught and ends the process at once
  // (Ctrl-C twice), as any kill would; nothing unverified is committed either way.
  const signal = await new Promise<string>((resolve) => {
    const stop = (name: string) => {
      process.off("SIGTERM", stop);
      process.off("SIGINT", stop);
      resolve(name);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
  });
  // Exit status 0 also when the grace ran out and clients or downloads were cut: the stop was asked for and
  // went as configured, and service managers (systemd, docker) would report a failed stop otherwise. What was
  // cut is in the last log line.
  await mirror.close({ signal });
  return 0;
}

/** An unknown or malformed flag (node:util parseArgs) is one line and status 2; anything else goes on up. */
function usageError(name: string, err: unknown): number {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (typeof code !== "string" || !code.startsWith("ERR_PARSE_ARGS")) throw err;
  console.error(`${name}: ${(err as Error).message} (see mirror${name === "mirror" ? "" : ` ${name}`} --help)`);
  return 2;
}

function cannotStart(problems: readonly string[]): string {
  return `cannot start:\n${problems.map((p) => `  - ${p}`).join("\n")}`;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
