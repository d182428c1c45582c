/**
 * Secrets read from files (Kubernetes and Docker secrets). The file's content is the secret, byte for byte,
 * except one trailing newline (what `echo` and most editors add); nothing else is trimmed.
 *
 * An empty or truncated file (a Secret not populated yet, the wrong key mounted) must never become a secret that
 * anyone can present, nor stop the whole mirror over one credential: a file that holds no usable secret —
 * unreadable, shorter than the minimum, or refused by the caller's check — leaves its secret DISABLED. A disabled
 * secret matches nothing; the reason (key, file, byte count, minimum) is logged as an error and listed by
 * /readyz. The file is watched (file-watch.ts), so writing a usable secret enables it without a restart, and a
 * file that becomes unusable again disables it again.
 *
 * Inline secrets in the config are checked by the schema instead, and a short one stops the start-up: the config
 * is read once, so nothing could ever fix it while the mirror runs.
 */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import type { Logger } from "pino";
import { watchFiles } from "./file-watch.ts";
import { errorMessage } from "../caught-errors.ts";

/** The shortest secret accepted anywhere (client tokens, the admin token), in bytes. */
export const MIN_SECRET_BYTES = 16;

/** What a secret file holds: the secret's bytes, or why there is no usable secret in it. */
type SecretFileContent = { secret: Buffer } | { problem: string; bytes?: number };

/**
 * Reads the secret in `path` (never throws). `key` is the config key that names the file, for the problem;
 * `check` may refuse a secret of the right length (it returns the reason).
 */
async function readSecretFile(
  path: string,
  key: string,
  check?: (secret: Buffer) => string | undefined,
): Promise<SecretFileContent> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    return { problem: `${key}: cannot read ${path}: ${errorMessage(err)}` };
  }
  let end = bytes.length;
  if (bytes[end - 1] === 0x0a) end -= bytes[end - 2] === 0x0d ? 2 : 1;
  if (end < MIN_SECRET_BYTES)
    return {
      problem: `${key}: ${path} holds a secret of ${end} bytes; at least ${MIN_SECRET_BYTES} are required`,
      bytes: end,
    };
  const secret = bytes.subarray(0, end);
  const refused = check?.(secret);
  return refused === undefined ? { secret } : { problem: `${key}: ${path}: ${refused}`, bytes: end };
}

export interface SecretFileOptions {
  path: string;
  /** The config key that names the file (`access.tokens.0.tokenFile`), for logs and /readyz. */
  key: string;
  /** What the secret enables, for logs and /readyz: `client token "ci"`, `the admin token`. */
  what: string;
  log: Logger;
  /** Refuses a secret of the right length, returning the reason (e.g. characters no client can send). */
  check?: (secret: Buffer) => string | undefined;
}

/** A secret in a file, kept current while the mirror runs; compared by the sha256 of its bytes. */
export class SecretFile {
  private content: { digest: Buffer } | { problem: string } | undefined;
  private reading: Promise<void> = Promise.resolve();
  private stopWatching: () => void = () => undefined;
  private closed = false;

  private readonly opts: SecretFileOptions;

  private constructor(opts: SecretFileOptions) {
    this.opts = opts;
  }

  /** Reads the file once (an unusable one is logged as an error, not thrown), then watches it. */
  static async open(opts: SecretFileOptions): Promise<SecretFile> {
    const file = new SecretFile(opts);
    await file.reload();
    file.stopWatching = watchFiles([opts.path], () => void file.reload());
    return file;
  }

  /** The sha256 of the secret, or undefined while the file holds no usable secret (then nothing matches it). */
  get digest(): Buffer | undefined {
    return this.content !== undefined && "digest" in this.content ? this.content.digest : undefined;
  }

  /** Why the secret is disabled (naming the key, the file and what it holds), or undefined while it is usable. */
  get problem(): string | undefined {
    return this.content !== undefined && "problem" in this.content
      ? `${this.opts.what} is disabled: ${this.content.problem}`
      : undefined;
  }

  close(): void {
    this.closed = true;
    this.stopWatching();
  }

  /** Re-reads the file. Reads run one after another, so the last change seen is the one that stays. */
  private reload(): Promise<void> {
    this.reading = this.reading.then(async () => {
      const { path, key, what, log, check } = this.opts;
      const read = await readSecretFile(path, key, check);
      if (this.closed) return;
      const before = this.content;
      if ("secret" in read) {
        const digest = createHash("sha256").update(read.secret).digest();
        this.content = { digest };
        // Silent at start when all is well; loud on every change of state after that.
        if (before !== undefined && "problem" in before)
          log.info({ key, file: path }, `${what} is enabled: ${key} holds a usable secret`);
        else if (before !== undefined && !before.digest.equals(digest))
          log.info({ key, file: path }, `${what} reloaded from ${key}`);
      } else {
        this.content = { problem: read.problem };
        if (before === undefined || !("problem" in before) || before.problem !== read.problem) {
          log.error({ key, file: path, bytes: read.bytes, minBytes: MIN_SECRET_BYTES }, this.problem);
        }
      }
    });
    return this.reading;
  }
}
