// Writes containerd hosts.toml files that send a node's image pulls through the registry mirror.
// Run by the chart's containerd-hosts DaemonSet (one pod per node, the node's hosts directory mounted), with
// the mirror's own image and config file. Plain JavaScript because the image holds compiled code only.
//
// For every registry the mirror serves (each upstream's name and aliases, or HOSTS_TOML_REGISTRIES), it
// writes <certs dir>/<registry>/hosts.toml:
//
//   server = "<the upstream's url>"            where containerd goes when the mirror fails
//   [host."http://<mirror>"]                    tried first; containerd adds ?ns=<registry> to each request,
//     capabilities = ["pull", "resolve"]        which is how the mirror picks the upstream
//
// A file without this script's marker line belongs to someone else and is left alone. Settings come from
// environment variables (no MIRROR_ prefix: the mirror's loader would read those as config overrides):
//   HOSTS_TOML_CONFIG        the mirror's config file (required)
//   HOSTS_TOML_CERTS_DIR     containerd's hosts directory as mounted in the pod (required)
//   HOSTS_TOML_MIRROR_URL    the mirror's URL as nodes reach it; else http://<looked-up service IP>:<port>
//   HOSTS_TOML_SERVICE_HOST  the Service's DNS name, looked up in the pod (nodes cannot resolve it)
//   HOSTS_TOML_SERVICE_PORT  the Service's port
//   HOSTS_TOML_SERVICE_SCHEME  http (default) or https, as the mirror serves
//   HOSTS_TOML_REGISTRIES    comma-separated registries to write; empty: every upstream name and alias
//   HOSTS_TOML_REFRESH_SECONDS  re-check period; 0 (or --once) writes once and exits
//   HOSTS_TOML_LOADER        the mirror's config loader module (default /app/dist/config/load.js)
/* global process, console */
import { lookup } from "node:dns/promises";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export const MARKER = "# Written by the registry-mirror chart (containerd-hosts); edits are overwritten.";

const env = process.env;
const once = process.argv.includes("--once") || Number(env.HOSTS_TOML_REFRESH_SECONDS ?? "0") <= 0;

/**
 * The part of the mirror's config loader this script uses (src/config/load.ts).
 * @typedef {{ name: string, url: string, aliases: readonly string[] }} Upstream
 * @typedef {{ loadConfig: (opts: { file: string, env: Record<string, string> }) => { upstreams: Readonly<Record<string, Upstream>> } }} Loader
 */

/**
 * What to write: one entry per registry host, from the mirror's configuration as its own loader reads it.
 * @returns {Promise<Map<string, string>>}
 */
async function desiredFiles() {
  const loading = /** @type {Promise<Loader>} */ (import(env.HOSTS_TOML_LOADER ?? "/app/dist/config/load.js"));
  const { loadConfig } = await loading;
  // Only the file: the environment of this pod holds no overrides for the mirror.
  const config = loadConfig({ file: required("HOSTS_TOML_CONFIG"), env: {} });
  const wanted = (env.HOSTS_TOML_REGISTRIES ?? "").split(",").map((r) => r.trim()).filter((r) => r !== "");
  const mirrorUrl = await resolveMirrorUrl();
  /** @type {Map<string, string>} */
  const files = new Map();
  for (const upstream of Object.values(config.upstreams)) {
    for (const registry of [upstream.name, ...upstream.aliases]) {
      if (wanted.length > 0 && !wanted.includes(registry)) continue;
      files.set(registry, hostsToml(upstream.url, mirrorUrl));
    }
  }
  for (const registry of wanted) if (!files.has(registry)) log(`${registry}: no upstream of the mirror has this name or alias; not written`);
  return files;
}

/**
 * @param {string} server
 * @param {string} mirrorUrl
 */
function hostsToml(server, mirrorUrl) {
  return [MARKER, `server = ${JSON.stringify(server)}`, "", `[host.${JSON.stringify(mirrorUrl)}]`, '  capabilities = ["pull", "resolve"]', ""].join("\n");
}

async function resolveMirrorUrl() {
  const explicit = env.HOSTS_TOML_MIRROR_URL ?? "";
  if (explicit !== "") return explicit.replace(/\/+$/, "");
  const host = required("HOSTS_TOML_SERVICE_HOST");
  const port = required("HOSTS_TOML_SERVICE_PORT");
  const scheme = env.HOSTS_TOML_SERVICE_SCHEME || "http";
  const address = isIP(host) ? host : (await lookup(host)).address;
  return `${scheme}://${isIP(address) === 6 ? `[${address}]` : address}:${port}`;
}

/**
 * Writes each file that differs, atomically (temp file + rename), never over a file that is not ours.
 * @param {string} certsDir
 * @param {Map<string, string>} files
 */
async function sync(certsDir, files) {
  for (const [registry, content] of files) {
    const dir = join(certsDir, registry);
    const path = join(dir, "hosts.toml");
    const current = await readFile(path, "utf8").catch((/** @type {NodeJS.ErrnoException} */ err) => {
      if (err.code === "ENOENT") return undefined;
      throw err;
    });
    if (current === content) continue;
    if (current !== undefined && !current.startsWith(MARKER)) {
      log(`${path}: exists and was not written by this chart; left alone`);
      continue;
    }
    await mkdir(dir, { recursive: true });
    await writeFile(`${path}.tmp`, content);
    await rename(`${path}.tmp`, path);
    log(`${path}: written`);
  }
}

/** @param {string} name */
function required(name) {
  const value = env[name] ?? "";
  if (value === "") throw new Error(`${name} is not set`);
  return value;
}

/** @param {string} message */
function log(message) {
  console.log(JSON.stringify({ time: new Date().toISOString(), msg: message }));
}

// PID 1 in its container: without a handler of its own, SIGTERM would be ignored until the grace period ends.
process.once("SIGTERM", () => process.exit(0));

const certsDir = required("HOSTS_TOML_CERTS_DIR");
for (;;) {
  try {
    await sync(certsDir, await desiredFiles());
  } catch (err) {
    // One bad round (a DNS hiccup) must not end the DaemonSet pod; --once reports it through the exit code.
    log(`failed: ${err instanceof Error ? err.message : String(err)}`);
    if (once) process.exit(1);
  }
  if (once) break;
  await sleep(Number(env.HOSTS_TOML_REFRESH_SECONDS) * 1000);
}
