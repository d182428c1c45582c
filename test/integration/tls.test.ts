/**
 * TLS termination with a CA made here: a real client (skopeo, trusting only that CA) pulls through the mirror
 * over HTTPS, and a rotated certificate is served to new connections without a restart.
 */
import { mkdtemp, rm, copyFile, readFile } from "node:fs/promises";
import { connect } from "node:tls";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { runCommand, Teardown } from "../harness/processes.ts";
import { startRegistry } from "../harness/registry.ts";
import { createTestCa, type TestCa } from "../harness/test-ca.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());
let dir: string;
let mirror: TestMirror;
let ca: TestCa;
const image = buildImage({ format: "oci", layers: [randomLayer(30_000)] });

async function presentedCertificateCN(port: number): Promise<string> {
  const ca = await readFile(join(dir, "ca.crt"));
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port, ca }, () => {
      const cn = socket.getPeerCertificate().subject.CN;
      socket.end();
      resolve(Array.isArray(cn) ? cn.join(",") : (cn ?? ""));
    });
    socket.once("error", reject);
  });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "tls-"));
  teardown.add("tls dir", () => rm(dir, { recursive: true, force: true }));
  ca = await createTestCa(dir);
  await ca.issue("first");
  await copyFile(join(dir, "first.crt"), join(dir, "cert.pem"));
  await copyFile(join(dir, "first.key"), join(dir, "key.pem"));
  const upstream = teardown.track(await startRegistry());
  await pushImage(upstream.url, "library/secure", "v1", image);
  mirror = teardown.track(
    await startTestMirror({
      upstreams: { "docker.io": { url: upstream.url, default: true } },
      extra: { tls: { certFile: join(dir, "cert.pem"), keyFile: join(dir, "key.pem") } },
    }),
  );
});

describe("TLS termination", () => {
  it("serves a real client that trusts only the test CA", async () => {
    const certDir = join(dir, "client-certs");
    await runCommand("mkdir", ["-p", certDir], { timeoutMs: 5_000 });
    await copyFile(join(dir, "ca.crt"), join(certDir, "ca.crt"));
    const res = await runCommand(
      "skopeo",
      ["inspect", "--raw", "--cert-dir", certDir, `docker://127.0.0.1:${mirror.port}/library/secure:v1`],
      {
        timeoutMs: 60_000,
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dir },
      },
    );
    expect(res.code, res.stderr).toBe(0);
    expect(res.stdout).toBe(image.manifest.toString());
    // Without the CA, verification fails: the certificate really is checked.
    const untrusted = await runCommand(
      "skopeo",
      ["inspect", "--raw", `docker://127.0.0.1:${mirror.port}/library/secure:v1`],
      { timeoutMs: 60_000, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dir } },
    );
    expect(untrusted.code).not.toBe(0);
    expect(untrusted.stderr).toMatch(/certificate/);
  });

  it("serves a rotated certificate to new connections without a restart", async () => {
    expect(await presentedCertificateCN(mirror.port)).toBe("first");
    await ca.issue("second");
    await copyFile(join(dir, "second.key"), join(dir, "key.pem"));
    await copyFile(join(dir, "second.crt"), join(dir, "cert.pem"));
    let cn = "";
    for (let i = 0; i < 50 && cn !== "second"; i++) {
      await new Promise((r) => setTimeout(r, 200));
      cn = await presentedCertificateCN(mirror.port);
    }
    expect(cn).toBe("second");
  });
});
