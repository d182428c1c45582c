/**
 * Secrets read from files (Kubernetes and Docker secrets). The file's content is the secret, byte for byte,
 * except one trailing newline (what `echo` and most editors add); nothing else is trimmed. A secret shorter than
 * the minimum stops the start-up, naming the key that pointed at the file: an empty or truncated file (a secret
 * not populated yet, the wrong key mounted) must never become a secret that anyone can present.
 */
import { readFile } from "node:fs/promises";

/** The shortest secret accepted anywhere (client tokens, the admin token), in bytes. */
export const MIN_SECRET_BYTES = 16;

/** The secret in `path`; throws, naming `key`, when the file cannot be read or holds fewer than `minBytes` bytes. */
export async function readSecretFile(path: string, key: string, minBytes = MIN_SECRET_BYTES): Promise<string> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (err) {
    throw new Error(`${key}: cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
  let end = bytes.length;
  if (bytes[end - 1] === 0x0a) end -= bytes[end - 2] === 0x0d ? 2 : 1;
  if (end < minBytes) throw new Error(`${key}: ${path} holds a secret of ${end} bytes; at least ${minBytes} are required`);
  return bytes.subarray(0, end).toString("utf8");
}
