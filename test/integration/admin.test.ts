/**
 * The admin API against a real upstream: prefetch (endpoint and CLI) of a multi-arch index, listings, totals,
 * purge by digest, and refusal without the token (or while the token file holds none).
 */
import { createHash } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildImage,
  buildIndex,
  buildNestedIndex,
  pushImage,
  pushIndex,
  pushNestedIndex,
  randomLayer,
  type BuiltIndex,
} from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { runCommand, Teardown, waitFor } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const TOKEN = "admin-token-for-tests-0123";
const teardown = new Teardown();
afterAll(() => teardown.run());
let upstream: Registry;
let mirror: TestMirror;

const multiArch = (name: string): BuiltIndex =>
  buildIndex([
    buildImage({
      format: "oci",
      architecture: "amd64",
      layers: [randomLayer(150_000), randomLayer(60_000)],
      labels: { name },
    }),
    buildImage({ format: "oci", architecture: "arm64", layers: [randomLayer(140_000)], labels: { name } }),
  ]);

beforeAll(async () => {
  upstream = teardown.track(await startRegistry());
  mirror = teardown.track(
    await startTestMirror({
      upstreams: { "docker.io": { url: upstream.url, default: true } },
      extra: { admin: { token: TOKEN } },
    }),
  );
});

const admin = (method: "GET" | "POST" | "DELETE", path: string, body?: unknown, token = TOKEN) =>
  fetchRaw(`${mirror.url}/admin/v1/${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    ...(body !== undefined ? { body: Buffer.from(JSON.stringify(body)) } : {}),
  });

async function waitForJob(
  id: string,
): Promise<{ state: string; blobs: { total: number; done: number }; manifests: number; errors: string[] }> {
  for (let i = 0; i < 200; i++) {
    const job = JSON.parse((await admin("GET", `jobs/${id}`)).body.toString()) as {
      state: string;
      blobs: { total: number; done: number };
      manifests: number;
      errors: string[];
    };
    if (job.state !== "running") return job;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("job did not finish");
}

describe("admin API", () => {
  it("prefetches every platform of a multi-arch index, so it pulls with the upstream down", async () => {
    const index = multiArch("all");
    await pushIndex(upstream.url, "team/multi", "v1", index);
    const started = await admin("POST", "prefetch", { reference: "docker.io/team/multi:v1" });
    expect(started.status).toBe(202);
    const job = await waitForJob((JSON.parse(started.body.toString()) as { id: string }).id);
    expect(job).toMatchObject({ state: "done", manifests: 3, errors: [] });
    const blobs = index.children.flatMap((c) => c.blobs());
    expect(job.blobs).toEqual({ total: blobs.length, done: blobs.length });
    await upstream.stop();
    try {
      const top = await fetchRaw(`${mirror.url}/v2/team/multi/manifests/v1`, {
        headers: { accept: ALL_MANIFEST_TYPES },
      });
      expect(top.body.equals(index.manifest)).toBe(true);
      for (const child of index.children) {
        expect(
          (
            await fetchRaw(`${mirror.url}/v2/team/multi/manifests/${child.digest}`, {
              headers: { accept: ALL_MANIFEST_TYPES },
            })
          ).status,
        ).toBe(200);
        for (const blob of child.blobs()) {
          const res = await fetchRaw(`${mirror.url}/v2/team/multi/blobs/${blob.digest}`);
          expect(res.headers["x-mirror-cache"]).toBe("hit");
          expect(sha256(res.body)).toBe(blob.digest);
        }
      }
    } finally {
      await upstream.start();
    }
  });

  it("prefetches only the selected platforms", async () => {
    const index = multiArch("arm-only");
    await pushIndex(upstream.url, "team/selective", "v1", index);
    const started = await admin("POST", "prefetch", {
      reference: "docker.io/team/selective:v1",
      platforms: ["linux/arm64"],
    });
    expect((await waitForJob((JSON.parse(started.body.toString()) as { id: string }).id)).state).toBe("done");
    const [amd64, arm64] = index.children;
    for (const blob of arm64!.blobs()) expect(await mirror.mirror.blobStore.size(blob.digest)).toBe(blob.bytes.length);
    for (const blob of amd64!.layers) expect(await mirror.mirror.blobStore.size(blob.digest)).toBeUndefined();
  });

  it("prefetches an index whose child is another index: every level, every platform, every layer", async () => {
    const nested = buildNestedIndex(multiArch("nested"));
    await pushNestedIndex(upstream.url, "team/nested", "v1", nested);
    const started = await admin("POST", "prefetch", { reference: "docker.io/team/nested:v1" });
    const job = await waitForJob((JSON.parse(started.body.toString()) as { id: string }).id);
    const blobs = nested.inner.children.flatMap((c) => c.blobs());
    // outer index, inner index, two image manifests
    expect(job).toMatchObject({
      state: "done",
      manifests: 4,
      errors: [],
      blobs: { total: blobs.length, done: blobs.length },
    });
    for (const blob of blobs)
      expect(await mirror.mirror.blobStore.size(blob.digest), blob.digest).toBe(blob.bytes.length);
  });

  it("fails a prefetch that reaches no image instead of reporting it done", async () => {
    const nested = buildNestedIndex(multiArch("no-such-platform"));
    await pushNestedIndex(upstream.url, "team/nested-none", "v1", nested);
    const started = await admin("POST", "prefetch", {
      reference: "docker.io/team/nested-none:v1",
      platforms: ["linux/s390x"],
    });
    const job = await waitForJob((JSON.parse(started.body.toString()) as { id: string }).id);
    expect(job).toMatchObject({ state: "failed", blobs: { total: 0, done: 0 } });
    expect(job.errors.join("\n")).toMatch(/no manifest of the index matches the platforms linux\/s390x/);
  });

  it("has a CLI that follows the job to the end", async () => {
    const image = buildImage({ format: "docker", layers: [randomLayer(200_000, { format: "docker" })] });
    await pushImage(upstream.url, "library/clitool", "v2", image);
    const res = await runCommand(
      process.execPath,
      [
        "src/main.ts",
        "prefetch",
        "docker.io/library/clitool:v2",
        "--url",
        mirror.url,
        "--token",
        TOKEN,
        "--poll-ms",
        "50",
      ],
      { timeoutMs: 30_000 },
    );
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toMatch(/docker\.io\/library\/clitool:v2 done: 1 manifests, blobs 2\/2/);
    for (const blob of image.blobs()) expect(await mirror.mirror.blobStore.size(blob.digest)).toBe(blob.bytes.length);
    const bad = await runCommand(
      process.execPath,
      [
        "src/main.ts",
        "prefetch",
        "docker.io/library/clitool:v2",
        "--url",
        mirror.url,
        "--token",
        "wrong-token-0123456789",
      ],
      { timeoutMs: 30_000 },
    );
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/401/);
  });

  it("has a CLI that refuses a poll period that is no whole milliseconds (it would poll in a 1 ms loop)", async () => {
    for (const poll of ["1m", "0", "abc"]) {
      const res = await runCommand(
        process.execPath,
        [
          "src/main.ts",
          "prefetch",
          "docker.io/library/clitool:v2",
          "--url",
          mirror.url,
          "--token",
          TOKEN,
          "--poll-ms",
          poll,
        ],
        { timeoutMs: 30_000 },
      );
      expect(res.code, poll).toBe(2);
      expect(res.stderr).toContain(`prefetch: --poll-ms ${poll}: expected whole milliseconds from 10 to 60000`);
    }
  });

  it("lists repositories, tags and blobs, reports totals, and purges a digest", async () => {
    const repos = JSON.parse((await admin("GET", "repositories?upstream=docker.io")).body.toString()) as {
      repositories: Array<{ repository: string; tags: number }>;
    };
    expect(repos.repositories).toContainEqual({ upstream: "docker.io", repository: "team/multi", tags: 1 });
    const tags = JSON.parse((await admin("GET", "tags?upstream=docker.io&repository=team/multi")).body.toString()) as {
      tags: Array<{ tag: string; cached: boolean; digest: string }>;
    };
    expect(tags.tags).toHaveLength(1);
    expect(tags.tags[0]).toMatchObject({ tag: "v1", cached: true });
    const totals = JSON.parse((await admin("GET", "totals")).body.toString()) as {
      bytes: number;
      objects: number;
      writable: boolean;
    };
    expect(totals.objects).toBe(mirror.mirror.blobStore.index.objects);
    expect(totals.bytes).toBe(mirror.mirror.blobStore.index.bytes);
    expect(totals.bytes).toBeGreaterThan(400_000);
    expect(totals.writable).toBe(true);
    const listed = JSON.parse((await admin("GET", "blobs?limit=3")).body.toString()) as {
      total: number;
      blobs: Array<{ digest: string; size: number; lastAccess: string }>;
    };
    expect(listed.blobs).toHaveLength(3);
    expect(listed.total).toBe(totals.objects);
    const victim = listed.blobs[0]!;
    const deleted = await admin("DELETE", `blobs/${victim.digest}`);
    expect(JSON.parse(deleted.body.toString())).toEqual({ deleted: victim.digest, bytes: victim.size });
    expect(await mirror.mirror.blobStore.size(victim.digest)).toBeUndefined();
    expect(errorCode(await admin("DELETE", `blobs/${victim.digest}`))).toBe("BLOB_UNKNOWN");
    expect(errorCode(await admin("DELETE", "blobs/sha256:..%2f"))).toBe("DIGEST_INVALID");
  });

  it("refuses every endpoint without the token", async () => {
    for (const [method, path] of [
      ["GET", "totals"],
      ["GET", "repositories"],
      ["GET", "blobs"],
      ["POST", "prefetch"],
      ["POST", "purge"],
      ["DELETE", `blobs/sha256:${"a".repeat(64)}`],
    ] as const) {
      const res = await admin(method, path, method === "POST" ? {} : undefined, "not-the-token");
      expect(res.status, `${method} ${path}`).toBe(401);
    }
  });

  it("starts with an empty admin token file, the admin API closed to everyone, and opens it once the file is written", async () => {
    const dir = await mkdtemp(join(tmpdir(), "admin-token-file-"));
    teardown.add("admin token dir", () => rm(dir, { recursive: true, force: true }));
    const tokenFile = join(dir, "admin-token");
    await writeFile(tokenFile, ""); // the Secret is mounted, but not populated yet
    const late = teardown.track(
      await startTestMirror({
        upstreams: { "docker.io": { url: upstream.url, default: true } },
        extra: { admin: { tokenFile } },
      }),
    );
    const totals = (token: string) =>
      fetchRaw(`${late.url}/admin/v1/totals`, { headers: { authorization: `Bearer ${token}` } });
    const reasons = async () =>
      (JSON.parse((await fetchRaw(`${late.url}/readyz`)).body.toString()) as { reasons: string[] }).reasons;
    expect(await reasons()).toEqual([
      expect.stringMatching(
        /^the admin token is disabled: admin\.tokenFile: .*admin-token holds a secret of 0 bytes; at least 16 are required$/,
      ),
    ]);
    for (const token of ["", "\u00a0", TOKEN]) expect((await totals(token)).status, JSON.stringify(token)).toBe(401);

    await writeFile(tokenFile, `${TOKEN}\n`);
    await waitFor(async () => (await reasons()).length === 0, {
      timeoutMs: 10_000,
      intervalMs: 100,
      what: "the admin token file to be re-read",
    });
    expect((await totals(TOKEN)).status).toBe(200);
    expect((await totals("\u00a0")).status).toBe(401);
  });
});
