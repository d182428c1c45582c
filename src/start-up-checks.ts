/**
 * What the environment must give a valid configuration before the mirror starts: the data directory, the
 * ports, the files the keys name. All is checked before anything is opened or listened on, and every problem
 * is one line naming its key and what was tried, all reported together (main.ts prints them and exits 2), so
 * that an operator fixes them in one go instead of meeting them one stack trace at a time.
 *
 * With `storage.s3`, the object store is probed for real: the bucket is listed (it exists, the credentials are
 * accepted) and a probe object is written under the prefix and deleted again (the bucket can be written).
 *
 * Secret files (`admin.tokenFile`, `access.tokens[].tokenFile`) must exist here; what they hold is checked by
 * secret-file.ts, which leaves a secret disabled, not the mirror stopped, while a file is empty (a Kubernetes
 * Secret mounted but not yet populated).
 */
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";
import { readableFileProblem, writableDirectoryProblem } from "./config/file-checks.ts";
import type { Config } from "./config/schema.ts";
import { parseListen } from "./http/server.ts";
import { warmupFileProblems } from "./config/warmup-list.ts";
import { errorMessage } from "./caught-errors.ts";

export async function startUpProblems(config: Config): Promise<string[]> {
  const checks: Array<Promise<string | undefined | string[]>> = [
    writableDirectoryProblem("storage.path", config.storage.path),
  ];
  const file = (key: string, path: string | undefined) => {
    if (path !== undefined) checks.push(readableFileProblem(key, path));
  };
  if (config.tls) checks.push(tlsProblems(config.tls));
  file("access.htpasswdFile", config.access?.htpasswdFile);
  for (const [i, t] of (config.access?.tokens ?? []).entries()) file(`access.tokens.${i}.tokenFile`, t.tokenFile);
  file("admin.tokenFile", config.admin.tokenFile);
  checks.push(...upstreamFileProblems(config));
  checks.push(warmupFileProblems(config));
  if (config.storage.s3) checks.push(s3Problems(config.storage.s3));
  const [main, metrics] = listenAddresses(config);
  checks.push(portProblem(main![0], main![1]));
  if (metrics !== undefined) {
    const same = metrics[1] === main![1] && parseListen(main![1]).port !== 0;
    checks.push(
      same ? Promise.resolve(`metrics.listen ${metrics[1]}: the same address as listen`) : portProblem(...metrics),
    );
  }
  return (await Promise.all(checks)).flat().filter((p): p is string => p !== undefined);
}

/**
 * The files the upstreams' keys name (CA bundles, credentials): what the mirror needs to reach its upstreams,
 * and the transfer commands too (src/cli), which check them with their cache directory.
 */
export function upstreamFileProblems(config: Pick<Config, "upstreams">): Array<Promise<string | undefined>> {
  const checks: Array<Promise<string | undefined>> = [];
  const file = (key: string, path: string | undefined) => {
    if (path !== undefined) checks.push(readableFileProblem(key, path));
  };
  for (const [name, u] of Object.entries(config.upstreams)) {
    file(`upstreams.${name}.tls.caFile`, u.tls.caFile);
    file(`upstreams.${name}.credentials.usernameFile`, u.credentials?.usernameFile);
    file(`upstreams.${name}.credentials.passwordFile`, u.credentials?.passwordFile);
  }
  return checks;
}

/** Each address the mirror listens on, with its key. */
function listenAddresses(config: Config): Array<[key: string, address: string]> {
  const addresses: Array<[string, string]> = [["listen", config.listen]];
  if (config.metrics.enabled && config.metrics.listen !== undefined)
    addresses.push(["metrics.listen", config.metrics.listen]);
  return addresses;
}

/** Both files readable, and a certificate and key that belong together (what https.createServer needs). */
async function tlsProblems(tls: NonNullable<Config["tls"]>): Promise<string[]> {
  const problems = (
    await Promise.all([
      readableFileProblem("tls.certFile", tls.certFile),
      readableFileProblem("tls.keyFile", tls.keyFile),
    ])
  ).filter((p) => p !== undefined);
  if (problems.length > 0) return problems;
  try {
    // Loaded here, with `tls` configured only: node:tls costs ~30 ms at start-up (test/integration/lazy-loading.test.ts).
    const { createSecureContext } = process.getBuiltinModule("node:tls");
    createSecureContext({ cert: await readFile(tls.certFile), key: await readFile(tls.keyFile) });
    return [];
  } catch (err) {
    return [
      `tls.certFile ${tls.certFile}, tls.keyFile ${tls.keyFile}: not a usable certificate and key: ${errorMessage(err)}`,
    ];
  }
}

/** Whether `address` can be listened on now: a listener is opened there and closed again. */
async function portProblem(key: string, address: string): Promise<string | undefined> {
  const { host, port } = parseListen(address);
  if (port === 0) return undefined;
  const probe = createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      probe.once("error", reject);
      probe.listen({ host, port, exclusive: true }, () => resolve());
    });
    return undefined;
  } catch (err) {
    return `${key} ${address}: ${listenErrorText(err)}`;
  } finally {
    await new Promise<void>((resolve) => (probe.listening ? probe.close(() => resolve()) : resolve()));
  }
}

/** What a failed listen means (by the error's code). */
export function listenErrorText(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  switch (code) {
    case "EADDRINUSE":
      return "address already in use (another process listens there)";
    case "EACCES":
      return "permission denied (ports below 1024 need privileges)";
    case "EADDRNOTAVAIL":
      return "no network interface here has this address";
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return "the host name does not resolve";
    default:
      return errorMessage(err);
  }
}

/**
 * The line for an error thrown by listening (a port taken between the check and the listen), naming the key
 * whose address it was; undefined for an error that is no listen failure (a bug: its stack is wanted).
 */
export function listenProblem(config: Config, err: unknown): string | undefined {
  const e = err as (NodeJS.ErrnoException & { port?: number }) | null;
  if (e?.syscall !== "listen" && e?.syscall !== "getaddrinfo") return undefined;
  const found = listenAddresses(config).find(([, address]) => parseListen(address).port === e.port);
  const [key, address] = found ?? ["listen", config.listen];
  return `${key} ${address}: ${listenErrorText(err)}`;
}

/** A probe of the object store gives up after this long (the SDK retries within it). */
const S3_PROBE_TIMEOUT_MS = 15_000;

/**
 * The object store of `storage.s3`, probed: its key files readable, the bucket there and listable with these
 * credentials, and writable (a probe object under the prefix, written and deleted again). One line per problem.
 */
async function s3Problems(s3: NonNullable<Config["storage"]["s3"]>): Promise<string[]> {
  const files = (
    await Promise.all([
      s3.accessKeyIdFile !== undefined
        ? readableFileProblem("storage.s3.accessKeyIdFile", s3.accessKeyIdFile)
        : undefined,
      s3.secretAccessKeyFile !== undefined
        ? readableFileProblem("storage.s3.secretAccessKeyFile", s3.secretAccessKeyFile)
        : undefined,
    ])
  ).filter((p): p is string => p !== undefined);
  if (files.length > 0) return files;
  const where = `storage.s3.bucket ${s3.bucket} at ${s3.endpoint ?? `AWS ${s3.region}`}`;
  // Loaded only with an s3 block (see cache-layer.ts).
  const { DeleteObjectCommand, ListObjectsV2Command, PutObjectCommand } = await import("@aws-sdk/client-s3");
  const { createS3Client } = await import("./storage/s3-content-store.ts");
  const client = await createS3Client(s3);
  const signal = () => ({ abortSignal: AbortSignal.timeout(S3_PROBE_TIMEOUT_MS) });
  try {
    try {
      await client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: s3.prefix, MaxKeys: 1 }), signal());
    } catch (err) {
      return [s3ProblemText(where, err, "cannot be listed")];
    }
    const key = `${s3.prefix}start-up-probe/${randomBytes(8).toString("hex")}`;
    try {
      await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: "probe" }), signal());
      await client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: key }), signal());
    } catch (err) {
      return [s3ProblemText(where, err, "not writable")];
    }
    return [];
  } finally {
    client.destroy();
  }
}

/** What an S3 error at start means, by its code: no bucket, credentials refused, no access, no connection. */
function s3ProblemText(where: string, err: unknown, what: string): string {
  const e = err as { name?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number } };
  const status = e.$metadata?.httpStatusCode;
  switch (e.name) {
    case "NoSuchBucket":
      return `${where}: no such bucket`;
    case "InvalidAccessKeyId":
    case "SignatureDoesNotMatch":
    case "InvalidToken":
    case "ExpiredToken":
      return `${where}: the object store rejects the credentials (${e.name}): check storage.s3.accessKeyId and secretAccessKey`;
    case "AccessDenied":
      return `${where}: ${what}: access denied for these credentials`;
    case "TimeoutError":
    case "AbortError":
      return `${where}: no answer within ${S3_PROBE_TIMEOUT_MS / 1000} s`;
  }
  if (status === undefined) return `${where}: cannot reach the object store: ${listenErrorText(err)}`;
  return `${where}: ${what}: ${e.name ?? "error"} (HTTP ${status})`;
}
