// Self-tests of the upstream registry harness against a real distribution 2.8: images pushed by the
// image builder read back byte-exact, the request log counts exactly what was sent, and stop()/start()
// keeps port and content.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildImage,
  buildIndex,
  busyboxLayer,
  MediaTypes,
  pushImage,
  pushIndex,
  randomLayer,
  sha256,
  type BuiltImage,
} from "../harness/image-builder.ts";
import { parseGoDuration, parseLogLine, startRegistry, type Registry } from "../harness/registry.ts";
import { Teardown } from "../harness/processes.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

/** Every manifest type a client may ask for, like dockerd's Accept set. */
const ACCEPT_ALL = [
  MediaTypes.ociIndex,
  MediaTypes.ociManifest,
  MediaTypes.dockerManifestList,
  MediaTypes.dockerManifest,
].join(", ");

async function getManifest(
  registry: Registry,
  repo: string,
  ref: string,
): Promise<{ status: number; body: Buffer; type: string | null; digest: string | null }> {
  const res = await fetch(`${registry.url}/v2/${repo}/manifests/${ref}`, { headers: { accept: ACCEPT_ALL } });
  return {
    status: res.status,
    body: Buffer.from(await res.arrayBuffer()),
    type: res.headers.get("content-type"),
    digest: res.headers.get("docker-content-digest"),
  };
}

async function getBlob(
  registry: Registry,
  repo: string,
  digest: string,
): Promise<{ status: number; body: Buffer; digest: string | null }> {
  const res = await fetch(`${registry.url}/v2/${repo}/blobs/${digest}`);
  return {
    status: res.status,
    body: Buffer.from(await res.arrayBuffer()),
    digest: res.headers.get("docker-content-digest"),
  };
}

describe("startRegistry", () => {
  let registry: Registry;
  let oci: BuiltImage;
  let docker: BuiltImage;

  beforeAll(async () => {
    // distribution reads every REGISTRY_* variable as configuration; the harness must not pass ours on.
    const saved = process.env["REGISTRY_HTTP_ADDR"];
    process.env["REGISTRY_HTTP_ADDR"] = "127.0.0.1:1";
    try {
      registry = teardown.track(await startRegistry());
    } finally {
      if (saved === undefined) delete process.env["REGISTRY_HTTP_ADDR"];
      else process.env["REGISTRY_HTTP_ADDR"] = saved;
    }
    oci = buildImage({ layers: [randomLayer(50_000), randomLayer(70_000)], format: "oci" });
    docker = buildImage({ layers: [busyboxLayer("docker")], format: "docker", cmd: ["/bin/sh", "-c", "echo hi"] });
    // Pushed here rather than in a test, so every test can also run on its own (vitest -t).
    await pushImage(registry.url, "selftest/oci", "v1", oci);
    await pushImage(registry.url, "selftest/docker", "v1", docker);
  });

  it("listens on 127.0.0.1 and answers /v2/ like a registry", async () => {
    expect(registry.url).toBe(`http://127.0.0.1:${registry.port}`);
    expect(registry.host).toBe(`127.0.0.1:${registry.port}`);
    const res = await fetch(`${registry.url}/v2/`);
    expect(res.status).toBe(200);
    expect(res.headers.get("docker-distribution-api-version")).toBe("registry/2.0");
  });

  it("stores pushed OCI and Docker images byte-exact", async () => {
    for (const [repo, image] of [
      ["selftest/oci", oci],
      ["selftest/docker", docker],
    ] as const) {
      for (const ref of ["v1", image.digest]) {
        const m = await getManifest(registry, repo, ref);
        expect(m.status).toBe(200);
        expect(m.body.equals(image.manifest)).toBe(true);
        expect(sha256(m.body)).toBe(image.digest);
        expect(m.digest).toBe(image.digest);
        expect(m.type).toBe(image.mediaType);
      }
      for (const blob of image.blobs()) {
        const b = await getBlob(registry, repo, blob.digest);
        expect(b.status).toBe(200);
        expect(b.digest).toBe(blob.digest);
        expect(b.body.equals(blob.bytes)).toBe(true);
      }
    }
  });

  it("stores an index and its children", async () => {
    const amd = buildImage({ layers: [randomLayer(1000)], format: "oci", architecture: "amd64" });
    const arm = buildImage({ layers: [randomLayer(1000)], format: "oci", architecture: "arm64" });
    const index = buildIndex([amd, arm]);
    await pushIndex(registry.url, "selftest/multi", "latest", index);

    const m = await getManifest(registry, "selftest/multi", "latest");
    expect(m.status).toBe(200);
    expect(m.type).toBe(MediaTypes.ociIndex);
    expect(m.digest).toBe(index.digest);
    expect(m.body.equals(index.manifest)).toBe(true);
    for (const child of [amd, arm]) {
      const c = await getManifest(registry, "selftest/multi", child.digest);
      expect(c.digest).toBe(child.digest);
      expect(c.body.equals(child.manifest)).toBe(true);
    }
  });

  it("pushing the same image again uploads no blob twice", async () => {
    await registry.sync();
    registry.clearRequests();
    await pushImage(registry.url, "selftest/oci", "v1-again", oci);
    await registry.sync();
    expect(registry.count({ method: "HEAD", kind: "blobs" })).toBe(oci.blobs().length);
    expect(registry.count({ kind: "uploads" })).toBe(0);
    expect(registry.count({ method: "PUT", kind: "manifests" })).toBe(1);
  });

  it("counts exactly the requests that were made, by method, kind and path, in the order they were made", async () => {
    await registry.sync();
    registry.clearRequests();
    const [layer] = oci.layers;
    if (layer === undefined) throw new Error("image has no layer");
    await getManifest(registry, "selftest/oci", "v1");
    await getBlob(registry, "selftest/oci", layer.digest);
    await getBlob(registry, "selftest/oci", layer.digest);
    await fetch(`${registry.url}/v2/selftest/oci/manifests/v1`, { method: "HEAD", headers: { accept: ACCEPT_ALL } });
    await getManifest(registry, "selftest/oci", "no-such-tag");
    await (await fetch(`${registry.url}/v2/selftest/oci/tags/list`)).arrayBuffer();
    await registry.sync();

    expect(registry.requests().map((r) => `${r.method} ${r.kind} ${r.status}`)).toEqual([
      "GET manifests 200",
      "GET blobs 200",
      "GET blobs 200",
      "HEAD manifests 200",
      "GET manifests 404",
      "GET tags 200",
    ]);
    expect(registry.count({ method: "GET", kind: "blobs", pathIncludes: layer.digest })).toBe(2);
    expect(registry.count({ method: "GET", kind: "manifests" })).toBe(2);
    expect(registry.count({ method: "GET", kind: "manifests", status: 404 })).toBe(1);
    expect(registry.count({ kind: "manifests" })).toBe(3);
    expect(registry.count({ kind: "tags" })).toBe(1);
    expect(registry.count({ repo: "selftest/oci" })).toBe(6);
    expect(registry.count({ pathIncludes: "no-such-tag" })).toBe(1);
    const blobGet = registry.requests()[1];
    expect(blobGet?.path).toBe(`/v2/selftest/oci/blobs/${layer.digest}`);
    expect(blobGet?.written).toBe(layer.bytes.length);
  });

  it("answers by the Accept header, as distribution 2.8 does (quirks a mirror must forward Accept for)", async () => {
    const status = async (repo: string, ref: string, accept?: string): Promise<number> => {
      const res = await fetch(
        `${registry.url}/v2/${repo}/manifests/${ref}`,
        accept === undefined ? {} : { headers: { accept } },
      );
      await res.arrayBuffer();
      return res.status;
    };
    // OCI manifests are hidden (404 MANIFEST_UNKNOWN) from clients that do not list the OCI type, by tag and digest.
    expect(await status("selftest/oci", "v1")).toBe(404);
    expect(await status("selftest/oci", oci.digest)).toBe(404);
    expect(await status("selftest/oci", "v1", MediaTypes.dockerManifest)).toBe(404);
    expect(await status("selftest/oci", "v1", MediaTypes.ociManifest)).toBe(200);
    // A Docker schema 2 manifest asked for by TAG without the schema 2 type is "converted" to schema 1,
    // which fails with 400 MANIFEST_INVALID; by digest it is served as stored.
    expect(await status("selftest/docker", "v1")).toBe(400);
    expect(await status("selftest/docker", "v1", "*/*")).toBe(400);
    expect(await status("selftest/docker", docker.digest)).toBe(200);
    expect(await status("selftest/docker", "v1", MediaTypes.dockerManifest)).toBe(200);
  });

  it("keeps port and content across stop() and start()", async () => {
    const before = registry.url;
    await registry.stop();
    await expect(fetch(`${registry.url}/v2/`)).rejects.toThrow();
    await registry.start();
    expect(registry.url).toBe(before);
    const m = await getManifest(registry, "selftest/oci", "v1");
    expect(m.status).toBe(200);
    expect(m.body.equals(oci.manifest)).toBe(true);
    const [layer] = oci.layers;
    if (layer === undefined) throw new Error("image has no layer");
    const b = await getBlob(registry, "selftest/oci", layer.digest);
    expect(b.body.equals(layer.bytes)).toBe(true);
    await registry.start(); // already running: no-op
  });
});

describe("parseLogLine", () => {
  it("reads distribution 2.8's request lines and ignores everything else", () => {
    // Verbatim shapes from distribution 2.8.2 with `formatter: json` (fields trimmed).
    const ok =
      '{"go.version":"go1.19.8","http.request.host":"127.0.0.1:15999","http.request.method":"GET","http.request.uri":"/v2/foo/blobs/sha256:e3","http.response.duration":"1.005795752s","http.response.status":200,"http.response.written":9879743,"level":"info","msg":"response completed","time":"2026-11-23T18:43:55.881552692Z"}';
    const err =
      '{"err.code":"manifest unknown","http.request.method":"GET","http.request.uri":"/v2/foo/manifests/x","http.response.status":404,"http.response.written":91,"level":"error","msg":"response completed with error","vars.name":"foo"}';
    const upload =
      '{"http.request.method":"PUT","http.request.uri":"/v2/a/b/blobs/uploads/u?_state=x\\u0026digest=sha256:1","http.response.status":201,"msg":"response completed"}';
    expect(parseLogLine(ok)).toEqual({
      method: "GET",
      path: "/v2/foo/blobs/sha256:e3",
      status: 200,
      written: 9879743,
      kind: "blobs",
      repo: "foo",
      startedAt: expect.closeTo(Date.parse("2026-11-23T18:43:55.881Z") + 0.552692 - 1005.795752, 3) as number,
    });
    expect(parseLogLine(err)).toMatchObject({ status: 404, kind: "manifests", repo: "foo" });
    expect(parseLogLine(upload)).toMatchObject({
      method: "PUT",
      kind: "uploads",
      repo: "a/b",
      path: "/v2/a/b/blobs/uploads/u?_state=x&digest=sha256:1",
    });
    expect(parseLogLine('{"level":"info","msg":"listening on 127.0.0.1:15999"}')).toBeUndefined();
    expect(parseLogLine("not json")).toBeUndefined();
  });

  it("parses Go duration strings", () => {
    expect(parseGoDuration("4.956718ms")).toBeCloseTo(4.956718, 9);
    expect(parseGoDuration("850µs")).toBeCloseTo(0.85, 9);
    expect(parseGoDuration("1m2.5s")).toBe(62_500);
    expect(parseGoDuration("120ns")).toBeCloseTo(0.00012, 9);
  });
});
