/**
 * `mirror export <reference>... [--file refs.txt] [--platform os/arch]... [--exclude-listing inventory.json]
 *                [--no-referrers] --output bundle.tar|- [--config mirror.yaml] [--data-dir DIR]
 *                [--url URL [--token T | --token-file F]]`
 *
 * Fetches images through the same cache and upstream code the mirror serves with (the cache directory of the
 * config, or --data-dir, locked while the command runs) and writes a bundle (src/transfer/bundle-layout.ts).
 * With --url, a running mirror does the same through its own caches (POST /admin/v1/export) and the bundle it
 * streams is written here: the same bytes for the same references and content.
 * The bundle is written to `<output>.partial` and renamed when complete, so a failed or interrupted export
 * never leaves a file that looks like a bundle.
 */
import { createWriteStream } from "node:fs";
import { rename, rm } from "node:fs/promises";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { parseArgs } from "node:util";
import { Registry } from "prom-client";
import { request } from "undici";
import { createCacheLayer } from "../cache-layer.ts";
import { DataDirLockedError } from "../storage/data-dir-lock.ts";
import { Metrics } from "../observability/metrics.ts";
import { Exporter } from "../transfer/exporter.ts";
import { parseInventory, type Inventory } from "../transfer/inventory.ts";
import {
  adminToken,
  checkDataDir,
  checkWritable,
  CommandError,
  commandConfig,
  commandLogger,
  readFlagFile,
  runCli,
} from "./command-context.ts";
import { Progress } from "./progress.ts";
import { errorMessage } from "../caught-errors.ts";

export const EXPORT_USAGE = `usage: mirror export <reference>... [--file refs.txt] [--platform os/arch]...
                    [--exclude-listing inventory.json] [--no-referrers] --output bundle.tar|-
                    [--config mirror.yaml] [--data-dir DIR] [--url http://mirror:5000 [--token T | --token-file F]]

Fetches images from the configured upstreams through a cache directory (the config's storage.path, or
--data-dir; no mirror may be running on it), or through a running mirror (--url), and writes a bundle: an OCI
image layout in a tar.

  <reference>           <upstream>/<repository>[:tag|@sha256:...], e.g. docker.io/library/alpine:3.20;
                        a name without a configured upstream belongs to the default one (alpine:3.20)
  --file F              more references, one per line (# starts a comment)
  --platform os/arch    only these platforms of a multi-platform image (repeatable; default: all)
  --exclude-listing F   leave out the blobs listed in F, the destination's \`mirror inventory\` (a delta bundle)
  --no-referrers        leave out the images' OCI 1.1 referrers (signatures, SBOMs, attestations), which are
                        otherwise carried, with theirs, so the destination can verify them offline
  --output F            the bundle file, or - for stdout
  --url URL             a running mirror: it exports from its own cache, filling what is missing through it
                        (its admin API; token from --token, --token-file or MIRROR_ADMIN_TOKEN)`;

const PLATFORM_RE = /^[a-z0-9]+\/[a-z0-9_]+(?:\/[a-z0-9]+)?$/;

export async function exportCommand(argv: string[], err: NodeJS.WriteStream = process.stderr): Promise<number> {
  return runCli("export", err, async () => {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        file: { type: "string" },
        platform: { type: "string", multiple: true },
        "exclude-listing": { type: "string" },
        "no-referrers": { type: "boolean" },
        output: { type: "string", short: "o" },
        config: { type: "string", short: "c" },
        "data-dir": { type: "string" },
        url: { type: "string" },
        token: { type: "string" },
        "token-file": { type: "string" },
      },
    });
    const references = [...positionals];
    if (values.file !== undefined) references.push(...referencesIn(await readFlagFile("--file", values.file)));
    if (references.length === 0 || values.output === undefined)
      throw new CommandError(`no references or no --output\n${EXPORT_USAGE}`, 2);
    const platforms = values.platform ?? [];
    const badPlatform = platforms.find((p) => !PLATFORM_RE.test(p));
    if (badPlatform !== undefined)
      throw new CommandError(`--platform ${badPlatform}: expected os/arch[/variant], e.g. linux/arm64/v8`, 2);
    if (values.url !== undefined && (values.config !== undefined || values["data-dir"] !== undefined))
      throw new CommandError("--url excludes --config and --data-dir (the running mirror uses its own)", 2);
    let listing: Inventory | undefined;
    if (values["exclude-listing"] !== undefined) {
      listing = parseInventory(
        await readFlagFile("--exclude-listing", values["exclude-listing"]),
        values["exclude-listing"],
      );
    }
    const exclude = listing && new Map(listing.blobs.map((b) => [b.digest, b.size]));
    if (values.output !== "-") await checkWritable("--output", values.output);
    if (values.url !== undefined) {
      const token = await adminToken(values);
      return viaAdminApi(values.url, token, {
        body: { references, platforms, referrers: values["no-referrers"] !== true, excludeListing: listing },
        output: values.output,
        err,
      });
    }
    const config = commandConfig(values.config, values["data-dir"]);
    await checkDataDir(config, values["data-dir"]);
    const layer = await createCacheLayer(config, {
      log: commandLogger(),
      metrics: new Metrics(new Registry()),
      purpose: "mirror export",
    }).catch((e: unknown) => {
      if (e instanceof DataDirLockedError)
        throw new CommandError(`${e.message} (export needs a cache directory of its own: give --data-dir)`);
      throw e;
    });
    const output = values.output;
    try {
      const exporter = new Exporter({
        manifests: layer.manifestCache,
        blobs: layer.blobCache,
        referrers: layer.referrersCache,
        upstreams: layer.upstreams,
      });
      const progress = new Progress(err, "export", "items");
      let manifests = 0;
      const plan = await exporter.plan(references, {
        platforms,
        exclude,
        referrers: values["no-referrers"] !== true,
        onManifest: () => progress.update({ items: { done: ++manifests }, bytes: { done: 0 } }),
      });
      for (const skipped of plan.skippedReferrers)
        progress.note(`${skipped.reference}: referrer left out: ${skipped.reason}`);
      for (const image of plan.images) {
        if (image.referrerOf !== undefined) {
          progress.note(`${image.reference.canonical} (referrer of ${image.referrerOf})`);
          continue;
        }
        const n = image.children.length > 0 ? image.images.length : 0;
        const platformsNote = n > 0 ? ` (${n} platform${n === 1 ? "" : "s"})` : "";
        progress.note(`${image.reference.canonical} ${image.top.digest}${platformsNote}`);
      }
      const totals = exporter.totals(plan);
      await writeBundle(
        Readable.from(exporter.write(plan, { progress: totals, onProgress: (p) => progress.update(p) })),
        output,
      );
      progress.finish(totals);
      const referrers = plan.images.filter((i) => i.referrerOf !== undefined).length;
      const exported = plan.images.length - referrers;
      const leftOut = plan.excluded.reduce((n, b) => n + b.size, 0);
      err.write(
        `export: wrote ${output === "-" ? "the bundle to stdout" : output}: ${exported} references, ${referrers === 0 ? "" : `${referrers} referrers, `}${plan.manifests.length} manifests, ${plan.blobs.length} blobs, ${mib(totals.bytes.total)} MiB` +
          (plan.excluded.length > 0
            ? `; left out ${plan.excluded.length} blobs (${mib(leftOut)} MiB) the destination holds`
            : "") +
          "\n",
      );
      return 0;
    } finally {
      await layer.close();
    }
  });
}

/** Writes a bundle to `output` (or stdout, for -) through `<output>.partial`, renamed only once it is complete. */
async function writeBundle(source: Readable, output: string, through?: Transform): Promise<void> {
  const partial = `${output}.partial`;
  const target = output === "-" ? process.stdout : createWriteStream(partial, { flags: "w", flush: true });
  try {
    if (through) await pipeline(source, through, target);
    else await pipeline(source, target);
    if (output !== "-") await rename(partial, output);
  } catch (e) {
    if (output !== "-") await rm(partial, { force: true });
    throw e;
  }
}

/**
 * Asks a running mirror for the bundle (POST /admin/v1/export) and writes what it streams. The mirror decides
 * everything the bundle holds before its first byte, so its errors (an unknown reference) arrive as the admin
 * API's error JSON; a failure after that breaks the transfer, which leaves no bundle here.
 */
async function viaAdminApi(
  url: string,
  token: string,
  opts: {
    body: { references: string[]; platforms: string[]; referrers: boolean; excludeListing: Inventory | undefined };
    output: string;
    err: NodeJS.WritableStream;
  },
): Promise<number> {
  const base = url.replace(/\/+$/, "");
  const progress = new Progress(opts.err, "export", "items");
  // No headers timeout: the mirror answers once every manifest is resolved, which may need its upstreams.
  const res = await request(`${base}/admin/v1/export`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(opts.body),
    headersTimeout: 0,
    bodyTimeout: 0,
  });
  if (res.statusCode !== 200) {
    const text = (await res.body.text()).slice(0, 2000);
    let message = text;
    try {
      message = (JSON.parse(text) as { errors: Array<{ message: string }> }).errors[0]!.message;
    } catch {
      // not the error JSON: the text as it came
    }
    throw new CommandError(`${base} answered ${res.statusCode}: ${message}`);
  }
  const length = Number(res.headers["content-length"]);
  const total = Number.isSafeInteger(length) ? length : undefined;
  let received = 0;
  const counted = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      received += chunk.length;
      progress.update({ bytes: { done: received, total } });
      cb(null, chunk);
    },
    flush(cb) {
      // A transfer cut short must not become a bundle, even if the connection ended cleanly.
      cb(
        total !== undefined && received !== total
          ? new Error(`${base} sent ${received} of ${total} bytes: the bundle is incomplete`)
          : null,
      );
    },
  });
  try {
    await writeBundle(res.body, opts.output, counted);
  } catch (e) {
    throw new CommandError(`${base}: the export broke off: ${errorMessage(e)}; no bundle was written`);
  }
  progress.finish();
  opts.err.write(
    `export: wrote ${opts.output === "-" ? "the bundle to stdout" : opts.output} from ${base}: ${mib(received)} MiB\n`,
  );
  return 0;
}

/** One reference per line; blank lines and `#` comments ignored. */
export function referencesIn(text: string): string[] {
  return text
    .split("\n")
    .map((line) => line.replace(/#.*/, "").trim())
    .filter((line) => line !== "");
}

function mib(n: number): string {
  return (n / (1024 * 1024)).toFixed(1);
}
