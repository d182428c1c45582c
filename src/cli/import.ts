/**
 * `mirror import <bundle.tar | -> [--pin] [--json] [--url URL [--token T | --token-file F] | --data-dir DIR] [--config F]`
 *
 * Reads a bundle into a mirror's cache, verified entry by entry (src/transfer/importer.ts): with --url into a
 * running mirror, streamed to its admin endpoint (POST /admin/v1/import); otherwise into a stopped mirror's
 * data directory, which is locked for the duration. Prints what was imported and every refused entry; exit
 * status 0 only when everything in the bundle was accepted (every entry hashed to its digest, also one the cache
 * already held) and every image is complete, 1 otherwise, 2 for a command line or configuration that cannot work.
 */
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { Transform, type Readable } from "node:stream";
import { parseArgs } from "node:util";
import { Registry } from "prom-client";
import { request } from "undici";
import { createCacheLayer, createImporter } from "../cache-layer.ts";
import { Metrics } from "../observability/metrics.ts";
import type { ImportReport } from "../transfer/importer.ts";
import {
  adminToken,
  checkDataDir,
  checkReadable,
  CommandError,
  commandConfig,
  commandLogger,
  runCli,
} from "./command-context.ts";
import { Progress } from "./progress.ts";

export const IMPORT_USAGE = `usage: mirror import <bundle.tar | -> [--pin] [--json]
                    [--url http://mirror:5000 [--token T | --token-file F]] [--data-dir DIR] [--config mirror.yaml]

Reads a bundle (from \`mirror export\`, or any OCI image layout tar whose references name a configured
upstream) into a mirror's cache. Every entry is verified (sha256 and size), also one the cache already holds;
images that end up complete get their tags and are served with no upstream. Exit status 0 when every entry was
accepted and every image is complete, 1 otherwise (a damaged entry is named), 2 for a bad command line.

  --url URL        a running mirror (its admin API; token from --token, --token-file or MIRROR_ADMIN_TOKEN)
  --data-dir DIR   a stopped mirror's cache directory (default: the config's storage.path)
  --pin            keep the imported images from eviction (recorded in <data dir>/pins.json)
  --json           print the import report as JSON on stdout`;

const CHUNK = 1024 * 1024;

export async function importCommand(
  argv: string[],
  err: NodeJS.WriteStream = process.stderr,
  out: NodeJS.WritableStream = process.stdout,
): Promise<number> {
  return runCli("import", err, async () => {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        pin: { type: "boolean", default: false },
        json: { type: "boolean", default: false },
        url: { type: "string" },
        token: { type: "string" },
        "token-file": { type: "string" },
        "data-dir": { type: "string" },
        config: { type: "string", short: "c" },
      },
    });
    if (positionals.length !== 1)
      throw new CommandError(`one bundle file (or - for stdin) is required\n${IMPORT_USAGE}`, 2);
    if (values.url !== undefined && values["data-dir"] !== undefined)
      throw new CommandError("--url and --data-dir exclude each other", 2);
    const file = positionals[0]!;
    if (file !== "-") await checkReadable("bundle", file);
    const size = file === "-" ? undefined : (await stat(file)).size;
    const source: Readable = file === "-" ? process.stdin : createReadStream(file, { highWaterMark: CHUNK });
    const progress = new Progress(err, "import", "entries");
    let report: ImportReport;
    if (values.url !== undefined) {
      report = await viaAdminApi(values.url, await adminToken(values), source, values.pin, size, progress);
    } else {
      const config = commandConfig(values.config, values["data-dir"]);
      await checkDataDir(config, values["data-dir"]);
      const layer = await createCacheLayer(config, {
        log: commandLogger(),
        metrics: new Metrics(new Registry()),
        purpose: "mirror import",
      });
      try {
        report = await (
          await createImporter(layer, config)
        ).import(source, {
          pin: values.pin,
          onProgress: (p) => progress.update({ items: { done: p.entries }, bytes: { done: p.bytesRead, total: size } }),
        });
      } finally {
        await layer.close();
      }
    }
    progress.finish();
    if (values.json) out.write(`${JSON.stringify(report, null, 2)}\n`);
    else out.write(describeReport(report));
    return report.ok ? 0 : 1;
  });
}

/** Streams the bundle as the request body; progress counts the bytes sent (the server counts the entries). */
async function viaAdminApi(
  url: string,
  token: string,
  source: Readable,
  pin: boolean,
  size: number | undefined,
  progress: Progress,
): Promise<ImportReport> {
  let sent = 0;
  const counted = source.pipe(
    new Transform({
      transform(chunk: Buffer, _enc, cb) {
        sent += chunk.length;
        progress.update({ bytes: { done: sent, total: size } });
        cb(null, chunk);
      },
    }),
  );
  source.once("error", (e) => counted.destroy(e));
  const base = url.replace(/\/+$/, "");
  // No headers timeout: the mirror answers only once the whole bundle is read and checked.
  const res = await request(`${base}/admin/v1/import?pin=${pin}`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/x-tar" },
    body: counted,
    headersTimeout: 0,
    bodyTimeout: 0,
  });
  const text = await res.body.text();
  if (res.statusCode !== 200) throw new CommandError(`${base} answered ${res.statusCode}: ${text.slice(0, 2000)}`);
  return JSON.parse(text) as ImportReport;
}

/** The report for people: one line per image and per refused entry, then totals. */
export function describeReport(r: ImportReport): string {
  const lines: string[] = [];
  for (const image of r.images) {
    const short = image.digest.slice(0, 19);
    if (image.status === "imported") {
      const notes = [
        image.pinned ? "pinned" : "",
        image.platformsLeftOut ? `${image.platformsLeftOut} platforms not in the bundle` : "",
        image.referrerOf !== undefined ? `referrer of ${image.referrerOf.slice(0, 19)}` : "",
      ].filter(Boolean);
      lines.push(`imported ${image.reference} ${short}${notes.length > 0 ? ` (${notes.join(", ")})` : ""}`);
    } else if (image.status === "incomplete") {
      lines.push(`incomplete ${image.reference} ${short}: missing ${image.missing?.join(", ")}; its tag was not set`);
    } else {
      lines.push(`refused ${image.reference}: ${image.reason}`);
    }
  }
  for (const refused of r.refused) lines.push(`refused entry ${refused.entry}: ${refused.reason}`);
  if (r.error !== undefined) lines.push(`error: ${r.error}`);
  lines.push(
    `added ${r.manifests.added} manifests and ${r.blobs.added} blobs (${(r.blobs.bytes / (1024 * 1024)).toFixed(1)} MiB); ` +
      `${r.manifests.present + r.blobs.present} were already cached; ${r.refused.length} entries refused` +
      (r.referrers.lists > 0 ? `; referrers recorded for ${r.referrers.lists} manifests` : ""),
  );
  return `${lines.join("\n")}\n`;
}
