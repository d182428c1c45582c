/**
 * `mirror inventory [--url URL [--token T | --token-file F] | --data-dir DIR] [--config F] [--output F|-]`
 *
 * Writes the listing of what a mirror holds (src/transfer/inventory.ts): from a running mirror's admin API
 * (GET /admin/v1/inventory), or from a stopped mirror's data directory (locked while it is read). The listing
 * is what `mirror export --exclude-listing` takes to build a delta bundle.
 */
import { rename, stat, writeFile } from "node:fs/promises";
import { parseArgs } from "node:util";
import { Registry } from "prom-client";
import { request } from "undici";
import { createCacheLayer } from "../cache-layer.ts";
import { Metrics } from "../observability/metrics.ts";
import { parseInventory, takeInventory, type Inventory } from "../transfer/inventory.ts";
import {
  adminToken,
  checkDataDir,
  checkWritable,
  CommandError,
  commandConfig,
  commandLogger,
  runCli,
} from "./command-context.ts";

export const INVENTORY_USAGE = `usage: mirror inventory [--url http://mirror:5000 [--token T | --token-file F]] [--data-dir DIR]
                       [--config mirror.yaml] [--output inventory.json|-]

Lists what a mirror holds (tags with their digests, every blob with its size): the input of a delta export.
  --url URL        a running mirror (its admin API; token from --token, --token-file or MIRROR_ADMIN_TOKEN)
  --data-dir DIR   a stopped mirror's cache directory (default: the config's storage.path)
  --output F       where to write it (default: stdout)`;

export async function inventoryCommand(
  argv: string[],
  err: NodeJS.WriteStream = process.stderr,
  out: NodeJS.WritableStream = process.stdout,
): Promise<number> {
  return runCli("inventory", err, async () => {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        url: { type: "string" },
        token: { type: "string" },
        "token-file": { type: "string" },
        "data-dir": { type: "string" },
        config: { type: "string", short: "c" },
        output: { type: "string", short: "o", default: "-" },
      },
    });
    if (positionals.length > 0) throw new CommandError(`unexpected argument ${positionals[0]}\n${INVENTORY_USAGE}`, 2);
    if (values.url !== undefined && values["data-dir"] !== undefined)
      throw new CommandError("--url and --data-dir exclude each other", 2);
    if (values.output !== "-") await checkWritable("--output", values.output);
    let inventory: Inventory;
    if (values.url !== undefined) {
      const base = values.url.replace(/\/+$/, "");
      const res = await request(`${base}/admin/v1/inventory`, {
        headers: { authorization: `Bearer ${await adminToken(values)}` },
      });
      const text = await res.body.text();
      if (res.statusCode !== 200) throw new CommandError(`${base} answered ${res.statusCode}: ${text.slice(0, 2000)}`);
      inventory = parseInventory(text, `${base}/admin/v1/inventory`);
    } else {
      const config = commandConfig(values.config, values["data-dir"]);
      // Taking the lock would create the directory: a mistyped path must not list an empty, new cache.
      if (!(await stat(config.storage.path).catch(() => undefined))?.isDirectory())
        throw new CommandError(
          `${values["data-dir"] !== undefined ? "--data-dir" : "storage.path"} ${config.storage.path}: is not a directory`,
          2,
        );
      await checkDataDir(config, values["data-dir"]);
      const layer = await createCacheLayer(config, {
        log: commandLogger(),
        metrics: new Metrics(new Registry()),
        purpose: "mirror inventory",
      });
      try {
        inventory = await takeInventory({
          store: layer.blobStore,
          metadata: layer.metadata,
          upstreams: layer.upstreams.map((u) => u.name),
        });
      } finally {
        await layer.close();
      }
    }
    const text = `${JSON.stringify(inventory, null, 1)}\n`;
    if (values.output === "-") out.write(text);
    else {
      // Complete or absent: a listing cut short by a crash would not parse, and the export would stop on it.
      await writeFile(`${values.output}.partial`, text);
      await rename(`${values.output}.partial`, values.output);
    }
    const bytes = inventory.blobs.reduce((n, b) => n + b.size, 0);
    err.write(
      `inventory: ${inventory.references.length} references, ${inventory.blobs.length} blobs (${(bytes / (1024 * 1024)).toFixed(1)} MiB)\n`,
    );
    return 0;
  });
}
