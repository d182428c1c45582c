/**
 * A throwaway certificate authority made with openssl, for TLS on loopback: a CA certificate, and server
 * certificates for 127.0.0.1 signed by it. Valid for two days; everything lives in the directory given.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { runCommand } from "./processes.ts";

export interface TestCa {
  /** The CA certificate (PEM), what a client is told to trust. */
  readonly certPath: string;
  /** Issues `<dir>/<name>.crt` and `<dir>/<name>.key`: a serverAuth certificate for IP 127.0.0.1, CN=name. */
  issue(name: string): Promise<{ certPath: string; keyPath: string }>;
}

async function openssl(args: string[]): Promise<void> {
  const res = await runCommand("openssl", args, { timeoutMs: 30_000 });
  if (res.code !== 0) throw new Error(`openssl ${args.join(" ")}: ${res.stderr}`);
}

export async function createTestCa(dir: string, cn = "mirror-test-ca"): Promise<TestCa> {
  const certPath = join(dir, "ca.crt");
  const caKey = join(dir, "ca.key");
  await openssl([
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    caKey,
    "-out",
    certPath,
    "-days",
    "2",
    "-subj",
    `/CN=${cn}`,
  ]);
  return {
    certPath,
    async issue(name) {
      const keyPath = join(dir, `${name}.key`);
      const crt = join(dir, `${name}.crt`);
      await openssl([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        keyPath,
        "-out",
        join(dir, `${name}.csr`),
        "-subj",
        `/CN=${name}`,
      ]);
      await writeFile(join(dir, `${name}.ext`), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
      await openssl([
        "x509",
        "-req",
        "-in",
        join(dir, `${name}.csr`),
        "-CA",
        certPath,
        "-CAkey",
        caKey,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        join(dir, `${name}.ext`),
        "-out",
        crt,
      ]);
      return { certPath: crt, keyPath };
    },
  };
}
