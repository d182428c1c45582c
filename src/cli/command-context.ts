/**
 * What the transfer commands (export, import, inventory) share: the configuration loaded exactly as the
 * mirror loads it (file, MIRROR_CONFIG, MIRROR_* overrides) with `--data-dir` in place of `storage.path`; a
 * logger on stderr (stdout may carry a bundle or an inventory); the admin token of a running mirror; and how
 * failures the user can act on become one line and an exit status instead of a stack trace.
 */
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import { pino, type Logger } from "pino";
import { readableFileProblem, writableDirectoryProblem, writableFileProblem } from "../config/file-checks.ts";
import { ConfigError, loadConfig } from "../config/load.ts";
import type { Config } from "../config/schema.ts";
import { upstreamFileProblems } from "../start-up-checks.ts";
import { errorMessage } from "../caught-errors.ts";

/** Exit statuses: 1 for a failed run, 2 for a command line or configuration that cannot work. */
export class CommandError extends Error {
  readonly status: number;
  constructor(message: string, status = 1) {
    super(message);
    this.name = "CommandError";
    this.status = status;
  }
}

/**
 * Paths on a command line are relative to the directory the command runs in (scripts/start.sh does not change
 * it); every file problem names the flag and the absolute path (file-checks.ts).
 */
export function commandConfig(file: string | undefined, dataDir: string | undefined): Config {
  let config: Config;
  try {
    config = loadConfig({ file });
  } catch (err) {
    if (err instanceof ConfigError) throw new CommandError(err.message, 2);
    throw err;
  }
  return dataDir === undefined ? config : { ...config, storage: { ...config.storage, path: resolve(dataDir) } };
}

/**
 * What a command that opens a cache directory needs of the machine, checked before it is opened: the directory
 * (`--data-dir`, or the config's `storage.path`) and the files the upstreams' keys name. Every problem, one line
 * each, in one CommandError.
 */
export async function checkDataDir(config: Config, dataDir: string | undefined): Promise<void> {
  const problems = (
    await Promise.all([
      writableDirectoryProblem(dataDir !== undefined ? "--data-dir" : "storage.path", config.storage.path),
      ...upstreamFileProblems(config),
    ])
  ).filter((p) => p !== undefined);
  if (problems.length === 1) throw new CommandError(problems[0]!, 2);
  if (problems.length > 1) throw new CommandError(`cannot run:\n${problems.map((p) => `  - ${p}`).join("\n")}`, 2);
}

/** A file named on the command line, read whole; a missing or unreadable one is `<flag> <absolute path>: why`. */
export async function readFlagFile(flag: string, path: string): Promise<string> {
  await checkReadable(flag, path);
  return readFile(path, "utf8");
}

export async function checkReadable(flag: string, path: string): Promise<void> {
  const problem = await readableFileProblem(flag, path);
  if (problem !== undefined) throw new CommandError(problem, 2);
}

/** A file the command will write: its directory must exist and be writable before any work starts. */
export async function checkWritable(flag: string, path: string): Promise<void> {
  const problem = await writableFileProblem(flag, path);
  if (problem !== undefined) throw new CommandError(problem, 2);
}

/** Warnings and errors only: the commands print their own progress and results. */
export function commandLogger(): Logger {
  return pino({ level: "warn" }, pino.destination(2));
}

export async function adminToken(values: {
  token?: string | undefined;
  "token-file"?: string | undefined;
}): Promise<string> {
  const token =
    values.token ??
    (values["token-file"] !== undefined
      ? (await readFlagFile("--token-file", values["token-file"])).trim()
      : process.env.MIRROR_ADMIN_TOKEN);
  if (!token)
    throw new CommandError("an admin token is required with --url (--token, --token-file or MIRROR_ADMIN_TOKEN)", 2);
  return token;
}

/**
 * Runs a command body. Failures print one line, `<command>: <message>`: the user acts on the message (a lock
 * held, an upstream 404, a refused entry), and a stack trace would bury it.
 */
export async function runCli(name: string, err: NodeJS.WritableStream, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (e) {
    // An unknown or malformed flag (node:util parseArgs) is a command line that cannot work, as CommandError(2).
    const code = (e as NodeJS.ErrnoException | null)?.code;
    const badFlag = typeof code === "string" && code.startsWith("ERR_PARSE_ARGS");
    err.write(`${name}: ${errorMessage(e)}${badFlag ? ` (see mirror ${name} --help)` : ""}\n`);
    if (badFlag) return 2;
    return e instanceof CommandError ? e.status : 1;
  }
}
