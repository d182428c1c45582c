import { createHash } from "node:crypto";
import { mkdtemp, rename, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { MIN_SECRET_BYTES, SecretFile, type SecretFileOptions } from "../../../src/config/secret-file.ts";
import { waitFor } from "../../harness/processes.ts";

const SECRET = "a-secret-of-24-bytes-xyz";
const digestOf = (text: string) => createHash("sha256").update(text).digest();
/** A change is seen at the next poll (once a second); a bound well above it. */
const RELOAD = { timeoutMs: 10_000, intervalMs: 50 };

describe("SecretFile", () => {
  let dir: string;
  let logs: Array<Record<string, unknown>>;
  const opened: SecretFile[] = [];
  const open = async (path: string, opts: Partial<SecretFileOptions> = {}) => {
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        logs.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        cb();
      },
    });
    const file = await SecretFile.open({
      path,
      key: "some.tokenFile",
      what: "the test token",
      log: pino({ level: "info" }, sink),
      ...opts,
    });
    opened.push(file);
    return file;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "secret-file-"));
  });
  afterEach(() => {
    for (const file of opened.splice(0)) file.close();
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("takes the file's bytes but one trailing newline, and nothing shorter than the minimum", async () => {
    const cases: Array<[string, string | RegExp]> = [
      [`${SECRET}\n`, SECRET],
      [`${SECRET}\r\n`, SECRET],
      [` ${SECRET} \n\n`, ` ${SECRET} \n`], // only the last newline is the file's: nothing else is trimmed
      [
        "",
        /^the test token is disabled: some\.tokenFile: .*-token holds a secret of 0 bytes; at least 16 are required$/,
      ],
      ["\n", /holds a secret of 0 bytes; at least 16 are required/],
      ["\r\n", /holds a secret of 0 bytes/],
      ["fifteen-bytes!!\n", /holds a secret of 15 bytes/],
    ];
    for (const [i, [content, expected]] of cases.entries()) {
      logs = [];
      const path = join(dir, `${i}-token`);
      await writeFile(path, content);
      const file = await open(path);
      if (typeof expected === "string") {
        expect(file.digest, JSON.stringify(content)).toEqual(digestOf(expected));
        expect(file.problem).toBeUndefined();
        expect(logs.filter((l) => l.level === 50)).toEqual([]);
      } else {
        expect(file.digest, JSON.stringify(content)).toBeUndefined();
        expect(file.problem).toMatch(expected);
        // Loud at start: an error naming the key, the file, what it holds and the minimum.
        const errors = logs.filter((l) => l.level === 50);
        expect(errors).toHaveLength(1);
        expect(errors[0]).toMatchObject({
          key: "some.tokenFile",
          file: path,
          bytes: Buffer.byteLength(content.replace(/\r?\n$/, "")),
          minBytes: MIN_SECRET_BYTES,
          msg: file.problem,
        });
      }
    }
  });

  it("is disabled while its file cannot be read, or the caller's check refuses it", async () => {
    logs = [];
    const missing = await open(join(dir, "missing-token"));
    expect(missing.digest).toBeUndefined();
    expect(missing.problem).toMatch(
      /^the test token is disabled: some\.tokenFile: cannot read .*missing-token: ENOENT/,
    );
    expect(logs.filter((l) => l.level === 50).map((l) => l.msg)).toEqual([missing.problem]);
    await writeFile(join(dir, "spaced-token"), "sixteen bytes ok\n");
    const refused = await open(join(dir, "spaced-token"), {
      check: (s) => (s.includes(0x20) ? "no spaces" : undefined),
    });
    expect(refused.digest).toBeUndefined();
    expect(refused.problem).toMatch(/some\.tokenFile: .*spaced-token: no spaces$/);
  });

  it("re-reads its file when it changes: enabled once it holds a secret, disabled again when it does not", async () => {
    logs = [];
    const path = join(dir, "late-token");
    const file = await open(path); // not there yet: the Secret is created after the mirror started
    expect(file.digest).toBeUndefined();

    await writeFile(path, `${SECRET}\n`);
    await waitFor(async () => file.digest !== undefined, { ...RELOAD, what: "the secret to be read" });
    expect(file.digest).toEqual(digestOf(SECRET));
    expect(file.problem).toBeUndefined();
    expect(logs.at(-1)).toMatchObject({
      level: 30,
      key: "some.tokenFile",
      file: path,
      msg: "the test token is enabled: some.tokenFile holds a usable secret",
    });

    await writeFile(path, "short\n");
    await waitFor(async () => file.digest === undefined, { ...RELOAD, what: "the secret to be disabled" });
    expect(file.problem).toMatch(/holds a secret of 5 bytes; at least 16 are required/);
    expect(logs.at(-1)).toMatchObject({ level: 50, bytes: 5, minBytes: 16, msg: file.problem });

    // Kubernetes replaces a mounted Secret by swapping a symlink: the path names another file.
    await writeFile(join(dir, "rotated-a"), `${SECRET}-rotated\n`);
    await rm(path);
    await symlink(join(dir, "rotated-a"), `${path}.tmp`);
    await rename(`${path}.tmp`, path);
    await waitFor(async () => file.digest !== undefined, { ...RELOAD, what: "the rotated secret to be read" });
    expect(file.digest).toEqual(digestOf(`${SECRET}-rotated`));
  });

  it("stops re-reading once closed", async () => {
    const path = join(dir, "closed-token");
    await writeFile(path, "");
    const file = await open(path);
    const other = await open(path); // a second reader of the same file shows when a change has been seen
    file.close();
    await writeFile(path, `${SECRET}\n`);
    await waitFor(async () => other.digest !== undefined, { ...RELOAD, what: "the change to be seen" });
    expect(file.digest).toBeUndefined();
  });
});
