/**
 * `mirror warmup <set> [--url URL] [--token TOKEN | --token-file F]`
 *
 * Asks a running mirror (its admin API) to run a warm-up set now, waits for that run to end, and prints each
 * image's result (once the run has ended, when its pins are recorded too). Exits 0 when every image is cached, 1 when one failed (or the mirror refused), 2 on bad usage.
 * If the set is already running, that run is followed instead of starting another (runs never overlap).
 */
import { parseArgs } from "node:util";
import { request } from "undici";
import type { WarmupSetStatus } from "../cache/warmup.ts";
import { adminToken, CommandError } from "./command-context.ts";

export const WARMUP_USAGE = `usage: mirror warmup <set> [--url http://127.0.0.1:5000] [--token TOKEN | --token-file FILE]
                    [--timeout 1h]

Runs a configured warm-up set (warmup: in the config) on a running mirror now, waits for the run to end and
prints each image's result: ok with the bytes cached, or failed with the reason. Exit status 0 when every image
is cached, 1 otherwise. --timeout (seconds, or with a unit: 90s, 30m, 2h) bounds the wait (default 1h).
The admin token may also come from MIRROR_ADMIN_TOKEN.`;

const POLL_MS = 500;

export async function warmupCommand(argv: string[], out: NodeJS.WriteStream = process.stderr): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      url: { type: "string", default: "http://127.0.0.1:5000" },
      token: { type: "string" },
      "token-file": { type: "string" },
      timeout: { type: "string", default: "1h" },
    },
  });
  if (positionals.length !== 1) {
    out.write(`${WARMUP_USAGE}\n`);
    return 2;
  }
  const timeoutMs = parseSeconds(values.timeout);
  if (timeoutMs === undefined) {
    out.write(`warmup: --timeout ${values.timeout}: expected e.g. 600, 90s, 30m or 2h\n`);
    return 2;
  }
  let token: string;
  try {
    token = await adminToken(values);
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    out.write(`warmup: ${err.message}\n`);
    return err.status;
  }
  const name = positionals[0]!;
  const url = `${values.url.replace(/\/+$/, "")}/admin/v1/warmup/${encodeURIComponent(name)}`;
  const headers = { authorization: `Bearer ${token}` };
  const started = await call(url, "POST", headers);
  if (started.status !== 202) {
    out.write(`warmup: ${started.status} ${started.text}\n`);
    return 1;
  }
  const { run, started: fresh } = JSON.parse(started.text) as { run: number; started: boolean };
  out.write(`warmup: set ${name}: run ${run} ${fresh ? "started" : "was already running: following it"}\n`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const polled = await call(url, "GET", headers);
    if (polled.status !== 200) {
      out.write(`warmup: ${polled.status} ${polled.text}\n`);
      return 1;
    }
    const set = JSON.parse(polled.text) as WarmupSetStatus;
    // Printed once the run has ended: only then is each image's pin recorded.
    if (set.lastRun !== null && set.lastRun.run >= run) {
      const last = set.lastRun;
      for (const image of last.images) {
        out.write(
          image.result === "ok"
            ? `ok      ${image.reference} ${image.digest ?? ""} ${image.blobs} blobs, ${image.bytes} bytes${image.pinned ? ", pinned" : ""}\n`
            : `failed  ${image.reference}: ${image.reason ?? "failed"}\n`,
        );
      }
      if (last.pinError !== undefined) out.write(`warmup: pins not recorded: ${last.pinError}\n`);
      out.write(`warmup: set ${name}: ${last.ok} ok, ${last.failed} failed, ${last.bytes} bytes\n`);
      return last.failed === 0 && last.pinError === undefined ? 0 : 1;
    }
    if (Date.now() >= deadline) {
      out.write(`warmup: set ${name}: run ${run} did not end within --timeout ${values.timeout}\n`);
      return 1;
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/** `600`, `90s`, `30m`, `2h` → milliseconds (1 second to 7 days); undefined when it is none of these. */
function parseSeconds(text: string): number | undefined {
  const m = /^(\d{1,6})(s|m|h)?$/.exec(text.trim());
  if (!m) return undefined;
  const value = Number(m[1]) * { s: 1, m: 60, h: 3600 }[(m[2] ?? "s") as "s" | "m" | "h"] * 1000;
  return value >= 1000 && value <= 7 * 24 * 3600 * 1000 ? value : undefined;
}

async function call(
  url: string,
  method: "GET" | "POST",
  headers: Record<string, string>,
): Promise<{ status: number; text: string }> {
  const res = await request(url, { method, headers });
  return { status: res.statusCode, text: await res.body.text() };
}
