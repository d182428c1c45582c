/**
 * An upstream reached over HTTPS, as every public registry is: a TLS relay (certificate from a CA made here) in
 * front of the real registry. The mirror trusts it through the upstream's `tls.caFile`, refuses it without (a
 * clear UPSTREAM_ERROR naming the certificate problem, nothing cached), and takes it with `tls.insecure`.
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror } from "../harness/mirror.ts";
import { Teardown } from "../harness/processes.ts";
import { startRegistry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { createTestCa, type TestCa } from "../harness/test-ca.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());
const image = buildImage({ format: "oci", layers: [randomLayer(200_000)] });
const layer = image.layers[0]!;
let dir: string;
let ca: TestCa;
let relay: Relay;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "upstream-tls-"));
  teardown.add("tls dir", () => rm(dir, { recursive: true, force: true }));
  ca = await createTestCa(dir, "upstream-test-ca");
  const { certPath, keyPath } = await ca.issue("upstream");
  const registry = teardown.track(await startRegistry());
  await pushImage(registry.url, "team/app", "v1", image);
  relay = teardown.track(
    await startRelay(registry.url, { tls: { cert: await readFile(certPath), key: await readFile(keyPath) } }),
  );
});

async function pull(
  mirrorUrl: string,
): Promise<{ manifest: Awaited<ReturnType<typeof fetchRaw>>; blob: Awaited<ReturnType<typeof fetchRaw>> }> {
  const manifest = await fetchRaw(`${mirrorUrl}/v2/team/app/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
  const blob = await fetchRaw(`${mirrorUrl}/v2/team/app/blobs/${layer.digest}`);
  return { manifest, blob };
}

describe("an HTTPS upstream", () => {
  it("is pulled through when its CA is given in tls.caFile", async () => {
    expect(relay.url.startsWith("https://127.0.0.1:")).toBe(true);
    const mirror = teardown.track(
      await startTestMirror({
        upstreams: { private: { url: relay.url, default: true, tls: { caFile: ca.certPath } } },
      }),
    );
    const { manifest, blob } = await pull(mirror.url);
    expect(manifest.status).toBe(200);
    expect(manifest.body.equals(image.manifest)).toBe(true);
    expect(blob.status).toBe(200);
    expect(blob.body.equals(layer.bytes)).toBe(true);
    expect(await mirror.mirror.blobStore.size(layer.digest)).toBe(layer.bytes.length);
    expect(relay.requests.some((r) => r.method === "GET" && r.path.endsWith(layer.digest))).toBe(true);
  });

  it("is refused without the CA: UPSTREAM_ERROR naming the certificate problem, nothing sent or cached", async () => {
    const before = relay.requests.length;
    const mirror = teardown.track(await startTestMirror({ upstreams: { private: { url: relay.url, default: true } } }));
    const { manifest, blob } = await pull(mirror.url);
    expect(manifest.status).toBe(502);
    expect(errorCode(manifest)).toBe("UPSTREAM_ERROR");
    const detail = (JSON.parse(manifest.body.toString("utf8")) as { errors: Array<{ detail?: { code?: string } }> })
      .errors[0]?.detail;
    expect(detail?.code).toMatch(/CERT|VERIFY|SIGNATURE/);
    expect(blob.status).toBeGreaterThanOrEqual(500);
    expect(await mirror.mirror.blobStore.size(layer.digest)).toBeUndefined();
    expect(relay.requests.length).toBe(before); // no HTTP request got past the handshake
  });

  it("is taken without verification when tls.insecure is set", async () => {
    const mirror = teardown.track(
      await startTestMirror({ upstreams: { private: { url: relay.url, default: true, tls: { insecure: true } } } }),
    );
    const { manifest, blob } = await pull(mirror.url);
    expect(manifest.status).toBe(200);
    expect(manifest.body.equals(image.manifest)).toBe(true);
    expect(blob.status).toBe(200);
    expect(blob.body.equals(layer.bytes)).toBe(true);
  });
});
