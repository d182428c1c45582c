/**
 * A plain HTTP client for integration tests: raw status, headers and body bytes, and a broken transfer reported
 * as a value (tests assert that a bad upstream breaks the client's transfer).
 */
import { request } from "undici";

export interface Fetched {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  /** Set when the transfer broke after the headers arrived. */
  broken?: Error;
}

export async function fetchRaw(
  url: string,
  opts: {
    method?: "GET" | "HEAD" | "PUT" | "DELETE" | "POST";
    headers?: Record<string, string | string[]>;
    body?: Buffer;
  } = {},
): Promise<Fetched> {
  const res = await request(url, { method: opts.method ?? "GET", headers: opts.headers, body: opts.body });
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of res.body) chunks.push(chunk as Buffer);
  } catch (err) {
    return { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), broken: err as Error };
  }
  return { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) };
}

export function errorCode(res: Fetched): string | undefined {
  try {
    return (JSON.parse(res.body.toString("utf8")) as { errors: Array<{ code: string }> }).errors[0]?.code;
  } catch {
    return undefined;
  }
}

export const ALL_MANIFEST_TYPES = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.docker.distribution.manifest.v2+json",
].join(", ");
