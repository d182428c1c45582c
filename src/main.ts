/**
 * CLI entry: `node src/main.ts [--config FILE]`. Loads the configuration (file, then MIRROR_* environment),
 * starts the mirror, and shuts down gracefully on SIGTERM/SIGINT, letting running fills finish.
 */
import { parseArgs } from "node:util";
import { createMirror } from "./app.ts";
import { PREFETCH_USAGE, prefetchCommand } from "./cli/prefetch.ts";
import { ConfigError, loadConfig } from "./config/load.ts";

const USAGE = `usage: mirror [--config FILE]
       mirror prefetch <upstream>/<repository>[:tag|@digest] [--platform os/arch]... (see mirror prefetch --help)

Starts the pull-through registry mirror. Without a config file it listens on 0.0.0.0:5000, caches under ./data
and mirrors Docker Hub. MIRROR_CONFIG names a config file too; MIRROR_* variables override single keys
(e.g. MIRROR_LISTEN=127.0.0.1:5001, MIRROR_STORAGE__PATH=/var/cache/mirror). See docs/configuration.md.`;

async function main(): Promise<number> {
  if (process.argv[2] === "prefetch") {
    if (process.argv.includes("--help")) {
      console.log(PREFETCH_USAGE);
      return 0;
    }
    return prefetchCommand(process.argv.slice(3));
  }
  const { values } = parseArgs({ options: { config: { type: "string", short: "c" }, help: { type: "boolean", short: "h" } } });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
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
  const mirror = await createMirror(config);
  await mirror.listen();
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      mirror.log.info({ signal, fillsInFlight: mirror.fillsInFlight }, "shutting down");
      resolve();
    };
    process.once("SIGTERM", stop);
    process.once("SIGINT", stop);
  });
  await mirror.close();
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
