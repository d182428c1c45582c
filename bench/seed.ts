/**
 * Seeds the upstream registry: random blobs written to disk and pushed with a streaming monolithic upload (a
 * 1 GiB blob is never held in memory), then image manifests over them, tagged.
 */
import { createHash, randomFill } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, stat } from "node:fs/promises";
import { request } from "node:http";
import { promisify } from "node:util";

const randomFillAsync = promisify(randomFill);

export interface SeededBlob {
  digest: string;
  size: number;
  /** The random bytes on disk, as generated (deleted by the caller once pushed, if it wants the space). */
  path: string;
}

export interface SeededManifest {
  tag: string;
  digest: string;
  mediaType: string;
  bytes: Buffer;
}

const CHUNK = 4 * 1024 * 1024;

/** Writes `size` random bytes to `path`, hashing as it goes; one 4 MiB buffer is reused throughout. */
export async function writeRandomFile(path: string, size: number): Promise<SeededBlob> {
  const hash = createHash("sha256");
  const file = await open(path, "wx");
  const buffer = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(1, size)));
  try {
    for (let done = 0; done < size;) {
      const n = Math.min(buffer.length, size - done);
      const chunk = buffer.subarray(0, n);
      await randomFillAsync(chunk);
      hash.update(chunk);
      await file.write(chunk, 0, n, done);
      done += n;
    }
  } finally {
    await file.close();
  }
  return { digest: `sha256:${hash.digest("hex")}`, size, path };
}

/** One request with the whole response body read; the body is a Buffer or a file streamed from disk. */
function send(
  url: string,
  method: string,
  headers: Record<string, string>,
  body: Buffer | { path: string } | undefined,
  timeoutMs: number,
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }),
      );
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`${method} ${url} timed out after ${timeoutMs} ms`)));
    req.on("error", reject);
    if (body === undefined) req.end();
    else if (Buffer.isBuffer(body)) req.end(body);
    else {
      const file = createReadStream(body.path, { highWaterMark: CHUNK });
      file.on("error", (err) => req.destroy(err));
      file.pipe(req);
    }
  });
}

/**
 * Monolithic upload (POST, then PUT of the whole body with `?digest=`), streaming the file from disk. Skips a
 * blob the registry already has.
 */
export async function pushBlobFile(
  registryUrl: string,
  repo: string,
  blob: { digest: string; path: string },
): Promise<void> {
  const head = await send(`${registryUrl}/v2/${repo}/blobs/${blob.digest}`, "HEAD", {}, undefined, 30_000);
  if (head.status === 200) return;
  const post = await send(
    `${registryUrl}/v2/${repo}/blobs/uploads/`,
    "POST",
    { "content-length": "0" },
    undefined,
    30_000,
  );
  const location = post.headers["location"];
  if (post.status !== 202 || typeof location !== "string")
    throw new Error(`POST upload answered ${post.status}: ${post.body}`);
  const uploadUrl = new URL(location, `${registryUrl}/`).href;
  const putUrl = `${uploadUrl}${uploadUrl.includes("?") ? "&" : "?"}digest=${encodeURIComponent(blob.digest)}`;
  const size = (await stat(blob.path)).size;
  const put = await send(
    putUrl,
    "PUT",
    { "content-type": "application/octet-stream", "content-length": String(size) },
    { path: blob.path },
    600_000,
  );
  if (put.status !== 201) throw new Error(`PUT blob ${blob.digest} answered ${put.status}: ${put.body}`);
}

export async function pushBlobBytes(registryUrl: string, repo: string, bytes: Buffer): Promise<string> {
  const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
  const post = await send(
    `${registryUrl}/v2/${repo}/blobs/uploads/`,
    "POST",
    { "content-length": "0" },
    undefined,
    30_000,
  );
  const location = post.headers["location"];
  if (post.status !== 202 || typeof location !== "string")
    throw new Error(`POST upload answered ${post.status}: ${post.body}`);
  const uploadUrl = new URL(location, `${registryUrl}/`).href;
  const putUrl = `${uploadUrl}${uploadUrl.includes("?") ? "&" : "?"}digest=${encodeURIComponent(digest)}`;
  const put = await send(
    putUrl,
    "PUT",
    { "content-type": "application/octet-stream", "content-length": String(bytes.length) },
    bytes,
    60_000,
  );
  if (put.status !== 201) throw new Error(`PUT blob ${digest} answered ${put.status}: ${put.body}`);
  return digest;
}

export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER = "application/vnd.oci.image.layer.v1.tar";

/** Pushes a config and an OCI image manifest listing `layers`, tagged `tag`. */
export async function pushManifest(
  registryUrl: string,
  repo: string,
  tag: string,
  layers: ReadonlyArray<{ digest: string; size: number }>,
): Promise<SeededManifest> {
  const config = Buffer.from(
    JSON.stringify(
      {
        architecture: "amd64",
        os: "linux",
        rootfs: { type: "layers", diff_ids: layers.map((l) => l.digest) },
        config: { Labels: { bench: tag } },
      },
      null,
      2,
    ),
  );
  const configDigest = await pushBlobBytes(registryUrl, repo, config);
  const bytes = Buffer.from(
    JSON.stringify(
      {
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: OCI_CONFIG, digest: configDigest, size: config.length },
        layers: layers.map((l) => ({ mediaType: OCI_LAYER, digest: l.digest, size: l.size })),
      },
      null,
      2,
    ),
  );
  const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
  const put = await send(
    `${registryUrl}/v2/${repo}/manifests/${tag}`,
    "PUT",
    { "content-type": OCI_MANIFEST, "content-length": String(bytes.length) },
    bytes,
    30_000,
  );
  if (put.status !== 201) throw new Error(`PUT manifest ${repo}:${tag} answered ${put.status}: ${put.body}`);
  return { tag, digest, mediaType: OCI_MANIFEST, bytes };
}
