// Writes containerd hosts.toml files that send a node's image pulls through the registry mirror.
// Run by the chart's containerd-hosts DaemonSet (one pod per node, the node's hosts directory mounted), with
// the mirror's own image and config file. Plain JavaScript because the image holds compiled code only.
//
// For every registry the mirror serves (each upstream's name and aliases, or HOSTS_TOML_REGISTRIES), it
// writes <certs dir>/<registry>/hosts.toml:
//
//   # Written by the registry-mirror chart ...   the marker: the chart wrote this file
//   # owner: <namespace>/<release's full name>   which installation wrote it
//   server = "<the upstream's url>"              where containerd goes when the mirror fails
//   [host."http://<mirror>"]                     tried first; containerd adds ?ns=<registry> to each request,
//     capabilities = ["pull", "resolve"]         which is how the mirror picks the upstream
//
// Files are owned by what wrote them. A file without the marker line belongs to an administrator, one with
// another owner line to another installation of the chart: both are left alone. A file of ours (the marker
// and our owner, or the marker and no owner line, as this script wrote before owner lines) whose registry the
// configuration no longer names (it left config.upstreams or containerdHosts.registries) is deleted, with its
// directory when that is then empty, so the node stops sending that registry's pulls to the mirror. With
// HOSTS_TOML_REMOVE_ALL every file of ours is deleted and none written: the clean-up before the feature is
// turned off or the chart uninstalled, which delete the DaemonSet but nothing it wrote on the nodes.
//
// Settings come from environment variables (no MIRROR_ prefix: the mirror's loader would read those as
// config overrides):
//   HOSTS_TOML_CONFIG        the mirror's config file (required, except with HOSTS_TOML_REMOVE_ALL)
//   HOSTS_TOML_CERTS_DIR     containerd's hosts directory as mounted in the pod (required)
//   HOSTS_TOML_OWNER         who writes: the chart gives <namespace>/<release's full name>; default registry-mirror
//   HOSTS_TOML_MIRROR_URL    the mirror's URL as nodes reach it; else http://<looked-up service IP>:<port>
//   HOSTS_TOML_SERVICE_HOST  the Service's DNS name, looked up in the pod (nodes cannot resolve it)
//   HOSTS_TOML_SERVICE_PORT  the Service's port
//   HOSTS_TOML_SERVICE_SCHEME  http (default) or https, as the mirror serves
//   HOSTS_TOML_REGISTRIES    comma-separated registries to write; empty: every upstream name and alias
//   HOSTS_TOML_REMOVE_ALL    "true": delete every file of ours, write none
//   HOSTS_TOML_REFRESH_SECONDS  re-check period in whole seconds, 1 to 2147483 (default 60); anything else
//                            is an error at start. `--once` does one round and exits (status 1 if it failed).
//   HOSTS_TOML_LOADER        the mirror's config loader module (default /app/dist/config/load.js)
/* global process, console */
import { lookup } from "node:dns/promises";
import { lstat, mkdir, readdir, readFile, rename, rmdir, unlink, writeFile } from "node:fs/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export const MARKER = "# Written by the registry-mirror chart (containerd-hosts); edits are overwritten.";
const OWNER_PREFIX = "# owner: ";
/** The longest sleep a Node.js timer keeps (2^31-1 ms); a longer one would end after 1 ms. */
const MAX_REFRESH_SECONDS = Math.floor((2 ** 31 - 1) / 1000);

const env = process.env;
const once = process.argv.includes("--once");
const removeAll = env.HOSTS_TOML_REMOVE_ALL === "true";
const owner = env.HOSTS_TOML_OWNER || "registry-mirror";

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
  return [MARKER, `${OWNER_PREFIX}${owner}`, `server = ${JSON.stringify(server)}`, "", `[host.${JSON.stringify(mirrorUrl)}]`, '  capabilities = ["pull", "resolve"]', ""].join("\n");
}

/**
 * Whose a hosts.toml is: "ours", "chart" (another installation's), or "foreign" (no marker: an administrator's).
 * @param {string} content
 */
function ownership(content) {
  const [first, second] = content.split("\n", 2);
  if (first !== MARKER) return "foreign";
  if (second === undefined || !second.startsWith(OWNER_PREFIX)) return "ours"; // written before owner lines
  return second.slice(OWNER_PREFIX.length) === owner ? "ours" : "chart";
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
    const whose = current === undefined ? "ours" : ownership(current);
    if (whose !== "ours") {
      log(`${path}: exists and was not written by this chart${whose === "chart" ? ` for ${owner}` : ""}; left alone`);
      continue;
    }
    await mkdir(dir, { recursive: true });
    await writeFile(`${path}.tmp`, content);
    await rename(`${path}.tmp`, path);
    log(`${path}: written`);
  }
  await removeStale(certsDir, files);
}

/**
 * Deletes our files for registries not in `files`, and their directories once empty (containerd may keep a
 * registry's certificates beside hosts.toml: a directory with anything else in it stays).
 * @param {string} certsDir
 * @param {Map<string, string>} files
 */
async function removeStale(certsDir, files) {
  const entries = await readdir(certsDir, { withFileTypes: true }).catch((/** @type {NodeJS.ErrnoException} */ err) => {
    if (err.code === "ENOENT") return [];
    throw err;
  });
  for (const entry of entries) {
    // Real directories only: a symlink may lead anywhere on the node.
    if (!entry.isDirectory() || files.has(entry.name)) continue;
    const dir = join(certsDir, entry.name);
    const path = join(dir, "hosts.toml");
    const stat = await lstat(path).catch(() => undefined);
    if (!stat?.isFile()) continue;
    if (ownership(await readFile(path, "utf8")) !== "ours") continue;
    await unlink(path);
    await rmdir(dir).catch(() => undefined); // not empty (certificates, an administrator's files): kept
    log(`${path}: removed (${entry.name} is no longer served through the mirror)`);
  }
}

/** Whole seconds between rounds (HOSTS_TOML_REFRESH_SECONDS); throws on anything else. */
function refreshSeconds() {
  const text = (env.HOSTS_TOML_REFRESH_SECONDS ?? "").trim();
  if (text === "") return 60;
  // Number(), not a digits-only pattern: Helm prints a large number from values as e.g. 2.147483e+06.
  const seconds = Number(text);
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > MAX_REFRESH_SECONDS) {
    throw new Error(`HOSTS_TOML_REFRESH_SECONDS=${JSON.stringify(text)}: expected whole seconds from 1 to ${MAX_REFRESH_SECONDS} (--once does one round and exits)`);
  }
  return seconds;
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

/** @type {string} */
let certsDir;
/** @type {number} */
let refresh;
try {
  certsDir = required("HOSTS_TOML_CERTS_DIR");
  refresh = once ? 0 : refreshSeconds();
} catch (err) {
  // A setting that cannot work is reported at start, never turned into a busy loop or a silent exit.
  log(`failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}
for (;;) {
  try {
    // Files are only deleted after the configuration was read in full: a round that fails changes nothing.
    await sync(certsDir, removeAll ? /** @type {Map<string, string>} */ (new Map()) : await desiredFiles());
  } catch (err) {
    // One bad round (a DNS hiccup) must not end the DaemonSet pod; --once reports it through the exit code.
    log(`failed: ${err instanceof Error ? err.message : String(err)}`);
    if (once) process.exit(1);
  }
  if (once) break;
  await sleep(refresh * 1000);
}
