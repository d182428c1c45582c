/**
 * `mirror prefetch <reference> [--platform os/arch]... [--url URL] [--token-file F]`
 *
 * Asks a running mirror (its admin API) to pull an image into its cache, and follows the job: a progress line
 * that rewrites itself on a terminal, plain log lines otherwise. Exits 0 when every blob is cached.
 */
import { parseArgs } from "node:util";
import { request } from "undici";
import type { JobStatus } from "../cache/prefetcher.ts";
import { adminToken, CommandError } from "./command-context.ts";

export const PREFETCH_USAGE = `usage: mirror prefetch <reference> [--platform os/arch]...
                      [--url http://127.0.0.1:5000] [--token TOKEN | --token-file FILE]

Pulls an image (every platform of an index unless --platform is given) into a running mirror's cache.
  <reference>   <upstream>/<repository>[:tag|@sha256:...], e.g. docker.io/library/alpine:3.20; a name
                without a configured upstream belongs to the default one (alpine:3.20), as with mirror export
The admin token may also come from MIRROR_ADMIN_TOKEN.`;

export async function prefetchCommand(argv: string[], out: NodeJS.WriteStream = process.stderr): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      platform: { type: "string", multiple: true },
      url: { type: "string", default: "http://127.0.0.1:5000" },
      token: { type: "string" },
      "token-file": { type: "string" },
      "poll-ms": { type: "string", default: "500" },
    },
  });
  if (positionals.length !== 1) {
    out.write(`${PREFETCH_USAGE}\n`);
    return 2;
  }
  // Whole milliseconds within reason: anything else (NaN, 0) would poll the mirror in a 1 ms loop.
  const pollMs = Number(values["poll-ms"]);
  if (!Number.isSafeInteger(pollMs) || pollMs < 10 || pollMs > 60_000) {
    out.write(`prefetch: --poll-ms ${values["poll-ms"]}: expected whole milliseconds from 10 to 60000\n`);
    return 2;
  }
  let token: string;
  try {
    token = await adminToken(values);
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    out.write(`prefetch: ${err.message}\n`);
    return err.status;
  }
  const base = values.url.replace(/\/+$/, "");
  const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
  const started = await call(`${base}/admin/v1/prefetch`, "POST", headers, {
    reference: positionals[0],
    platforms: values.platform ?? [],
  });
  if (started.status !== 202) {
    out.write(`prefetch: ${started.status} ${started.text}\n`);
    return 1;
  }
  let job = JSON.parse(started.text) as JobStatus;
  const tty = out.isTTY === true;
  const began = Date.now();
  let lastLog = 0;
  for (;;) {
    const line = progressLine(job, (Date.now() - began) / 1000);
    if (tty) out.write(`\r\u001b[2K${line}`);
    else if (Date.now() - lastLog >= 2_000 || job.state !== "running") {
      out.write(`${line}\n`);
      lastLog = Date.now();
    }
    if (job.state !== "running") break;
    await new Promise((r) => setTimeout(r, pollMs));
    const polled = await call(`${base}/admin/v1/jobs/${job.id}`, "GET", headers);
    if (polled.status !== 200) {
      out.write(`\nprefetch: ${polled.status} ${polled.text}\n`);
      return 1;
    }
    job = JSON.parse(polled.text) as JobStatus;
  }
  if (tty) out.write("\n");
  for (const err of job.errors) out.write(`prefetch: error: ${err}\n`);
  return job.state === "done" ? 0 : 1;
}

function progressLine(job: JobStatus, seconds: number): string {
  const mib = (n: number) => (n / (1024 * 1024)).toFixed(1);
  const rate = seconds > 0 ? job.bytes.done / seconds : 0;
  return `${job.reference} ${job.state}: ${job.manifests} manifests, blobs ${job.blobs.done}/${job.blobs.total}, ${mib(job.bytes.done)}/${mib(job.bytes.total)} MiB, ${mib(rate)} MiB/s`;
}

async function call(
  url: string,
  method: "GET" | "POST",
  headers: Record<string, string>,
  body?: unknown,
): Promise<{ status: number; text: string }> {
  const res = await request(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.statusCode, text: await res.body.text() };
}
