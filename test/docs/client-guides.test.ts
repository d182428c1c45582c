// The client setup guides in docs/clients/, checked the way a reader would use them:
//   - every json, toml and yaml block parses (TOML with smol-toml; kind's containerd patches too), and
//     blocks tagged `yaml mirror` are valid mirror configurations for the mirror's own loader;
//   - each client's snippets agree with the mirror config shown beside them (every registry a client is
//     told to send to the mirror is an upstream name or alias there) and with the client's rules (dockerd
//     wants bare origins, containerd needs resolve, override_path needs the /v2/<upstream> path);
//   - the snippets that real clients here can run, run: dockerd starts with docker.md's daemon.json and
//     pulls through a mirror; containerd pulls with containerd.md's hosts.toml files, in both the ns= and the
//     override_path form; and air-gapped.md's recipe (fill, copy the cache, start offline) serves a pull.
import { randomUUID } from "node:crypto";
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse as parseToml } from "smol-toml";
import { parse as parseYaml } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../src/config/load.ts";
import { startContainerd } from "../harness/containerd.ts";
import { startDockerd } from "../harness/dockerd.ts";
import { buildImage, busyboxLayer, pushImage, type BuiltImage } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { Teardown } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";

/** The shapes of the guides' snippets, as the clients read them (checked field by field below). */
interface DaemonJson {
  "registry-mirrors": string[];
  "insecure-registries"?: string[];
}
interface HostsToml {
  server: string;
  host: Record<string, { capabilities: string[]; override_path?: boolean }>;
}
interface RegistriesConf {
  registry: Array<{ prefix: string; location: string; mirror: Array<{ location: string; insecure?: boolean }> }>;
}
interface K3sRegistries {
  mirrors: Record<string, { endpoint: string[] }>;
}
interface KindCluster {
  kind: string;
  apiVersion: string;
  containerdConfigPatches: string[];
  nodes: Array<{ extraMounts: Array<{ containerPath: string }> }>;
}
interface MirrorConfigSnippet {
  offline?: boolean;
  storage: Record<string, unknown>;
  upstreams: Record<string, Record<string, unknown>>;
}

const DOCS = new URL("../../docs/clients/", import.meta.url).pathname;
const GUIDES = ["docker.md", "containerd.md", "podman-crio.md", "k3s-rke2.md", "kind.md", "air-gapped.md"];
/** The mirror address the guides use, replaced by a real one where a snippet is run. */
const DOC_MIRROR = "mirror.example.internal:5000";

interface Block {
  guide: string;
  lang: string;
  meta: string;
  text: string;
  line: number;
}

async function blocks(guide: string): Promise<Block[]> {
  const text = await readFile(join(DOCS, guide), "utf8");
  const found: Block[] = [];
  for (const m of text.matchAll(/^```(\w*)([^\n]*)\n([\s\S]*?)^```\s*$/gm)) {
    found.push({ guide, lang: m[1]!, meta: m[2]!.trim(), text: m[3]!, line: text.slice(0, m.index).split("\n").length });
  }
  return found;
}

/** The guide's blocks in `lang`, parsed, with the shape the caller expects (the assertions check it). */
async function parsed<T>(guide: string, lang: string, keep: (value: Record<string, unknown>) => boolean = () => true): Promise<Array<{ block: Block; value: T }>> {
  return (await blocks(guide))
    .filter((b) => b.lang === lang)
    .map((block) => ({ block, raw: parseBlock(block) }))
    .filter(({ raw }) => keep(raw))
    .map(({ block, raw }) => ({ block, value: raw as T }));
}

function parseBlock(b: Block): Record<string, unknown> {
  if (b.lang === "json") return JSON.parse(b.text) as Record<string, unknown>;
  if (b.lang === "toml") return parseToml(b.text);
  if (b.lang === "yaml") return parseYaml(b.text) as Record<string, unknown>;
  throw new Error(`no parser for ${b.lang}`);
}

function first<T>(items: T[]): T {
  if (items[0] === undefined) throw new Error("expected at least one snippet");
  return items[0];
}

/** Every registry name the guide's mirror config answers to (upstream names and aliases). */
async function mirrorNames(guide: string): Promise<Set<string>> {
  const names = new Set<string>();
  for (const b of (await blocks(guide)).filter((x) => x.lang === "yaml" && x.meta === "mirror")) {
    for (const u of Object.values(parseConfig(parseYaml(b.text)).upstreams)) for (const n of [u.name, ...u.aliases]) names.add(n);
  }
  return names;
}

describe("client guides: every snippet parses", () => {
  it("has every guide, each with snippets", async () => {
    expect((await readdir(DOCS)).sort()).toEqual([...GUIDES].sort());
    for (const guide of GUIDES) expect((await blocks(guide)).filter((b) => ["json", "toml", "yaml"].includes(b.lang)).length, guide).toBeGreaterThan(0);
  });

  it.each(GUIDES)("%s: json, toml and yaml blocks parse; `yaml mirror` blocks are valid mirror configs", async (guide) => {
    for (const b of await blocks(guide)) {
      if (!["json", "toml", "yaml"].includes(b.lang)) continue;
      const where = `${guide}:${b.line} (${b.lang})`;
      let value: Record<string, unknown> | undefined;
      expect(() => (value = parseBlock(b)), where).not.toThrow();
      expect(value, where).toBeTypeOf("object");
      if (b.meta === "mirror") expect(() => parseConfig(value), where).not.toThrow();
    }
  });
});

describe("client guides: snippets agree with the mirror and the clients' rules", () => {
  it("docker.md: registry-mirrors are bare origins, plain HTTP ones listed as insecure", async () => {
    const configs = await parsed<DaemonJson>("docker.md", "json");
    expect(configs.length).toBeGreaterThanOrEqual(2);
    for (const { value } of configs) {
      for (const mirror of value["registry-mirrors"]) {
        const url = new URL(mirror);
        expect(url.pathname + url.search + url.hash, `${mirror}: dockerd refuses a path`).toBe("/");
        if (url.protocol === "http:") expect(value["insecure-registries"], mirror).toContain(url.host);
      }
    }
  });

  it("containerd.md: hosts.toml files name the registry as server and the mirror with pull and resolve", async () => {
    const names = await mirrorNames("containerd.md");
    const files = await parsed<HostsToml>("containerd.md", "toml", (v) => "server" in v);
    expect(files.length).toBeGreaterThanOrEqual(3);
    for (const { block, value } of files) {
      expect(new URL(value.server).protocol, `${block.line}`).toBe("https:");
      for (const [hostUrl, host] of Object.entries(value.host)) {
        expect(host.capabilities, `${block.line}`).toEqual(["pull", "resolve"]);
        const url = new URL(hostUrl);
        if (host.override_path === true) {
          // The path is the API root: /v2/<an upstream of the mirror>.
          const [, v2, upstream] = url.pathname.split("/");
          expect(v2).toBe("v2");
          expect(names.has(upstream!), `${upstream} is an upstream of the guide's mirror config`).toBe(true);
        } else {
          expect(url.pathname).toBe("/");
        }
      }
      // containerd finds the file by registry host; the server's host must be one the mirror serves.
      const registry = new URL(value.server).host;
      expect(names.has(registry) || names.has(registry.replace(/^registry-1\./, "")), registry).toBe(true);
    }
    const configs = await parsed<Record<string, unknown>>("containerd.md", "toml", (v) => "version" in v);
    expect(configs.map(({ value }) => JSON.stringify(value))).toEqual([
      JSON.stringify({ version: 2, plugins: { "io.containerd.grpc.v1.cri": { registry: { config_path: "/etc/containerd/certs.d" } } } }),
      JSON.stringify({ version: 3, plugins: { "io.containerd.cri.v1.images": { registry: { config_path: "/etc/containerd/certs.d" } } } }),
    ]);
  });

  it("podman-crio.md: each registry's mirror location is the mirror plus an upstream name as path prefix", async () => {
    const names = await mirrorNames("podman-crio.md");
    const { value } = first(await parsed<RegistriesConf>("podman-crio.md", "toml"));
    const registries = value.registry;
    expect(registries.length).toBeGreaterThanOrEqual(3);
    for (const r of registries) {
      expect(names.has(r.prefix), r.prefix).toBe(true);
      expect(r.mirror).toEqual([{ location: `${DOC_MIRROR}/${r.prefix}`, insecure: true }]);
    }
  });

  it("k3s-rke2.md: every mirrored registry is an upstream, every endpoint a bare origin", async () => {
    const names = await mirrorNames("k3s-rke2.md");
    const files = (await parsed<K3sRegistries>("k3s-rke2.md", "yaml")).filter(({ block }) => block.meta !== "mirror");
    expect(files.length).toBeGreaterThanOrEqual(2);
    for (const { value } of files) {
      for (const [registry, entry] of Object.entries(value.mirrors)) {
        expect(names.has(registry), registry).toBe(true);
        for (const endpoint of entry.endpoint) expect(new URL(endpoint).pathname).toBe("/");
      }
    }
  });

  it("kind.md: the containerd patch is TOML setting config_path, and the mounts put the hosts files there", async () => {
    const cluster = first(await parsed<KindCluster>("kind.md", "yaml")).value;
    expect(cluster).toMatchObject({ kind: "Cluster", apiVersion: "kind.x-k8s.io/v1alpha4" });
    const patch = parseToml(first(cluster.containerdConfigPatches)) as { plugins: Record<string, { registry: { config_path: string } }> };
    const configPath = patch.plugins["io.containerd.grpc.v1.cri"]?.registry.config_path;
    expect(configPath).toBe("/etc/containerd/certs.d");
    for (const node of cluster.nodes) expect(node.extraMounts).toContainEqual(expect.objectContaining({ containerPath: configPath }));
    const hosts = first(await parsed<HostsToml>("kind.md", "toml")).value;
    expect(Object.keys(hosts.host)).toEqual(["http://registry-mirror:5000"]);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Real clients running the guides' snippets

const teardown = new Teardown();
afterAll(() => teardown.run());

const RUN = randomUUID().slice(0, 8);
const HUB_REPO = `library/guide-${RUN}`;
const GHCR_REPO = `team/guide-${RUN}`;

let registry: Registry;
let mirror: TestMirror;
let image: BuiltImage;
let work: string;

/** A guide's snippet with the documented mirror address replaced by the real one. */
const localised = (text: string): string => text.replaceAll(DOC_MIRROR, mirror.host);

describe("client guides: real clients", () => {
  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), "client-guides-"));
    teardown.add("work dir", () => rm(work, { recursive: true, force: true }));
    registry = teardown.track(await startRegistry());
    image = buildImage({ layers: [busyboxLayer("docker")], format: "docker", cmd: ["/bin/true"] });
    await pushImage(registry.url, HUB_REPO, "latest", image);
    await pushImage(registry.url, GHCR_REPO, "1.0", image);
    // The guides' mirror config for containerd, pointed at the local registry for both upstreams.
    mirror = teardown.track(
      await startTestMirror({
        upstreams: {
          "docker.io": { url: registry.url, default: true, aliases: ["registry-1.docker.io", "index.docker.io"] },
          "ghcr.io": { url: registry.url },
        },
      }),
      "mirror",
    );
  });

  /** The guide's upstreams, every one pointed at the local registry. */
  const localUpstreams = (config: MirrorConfigSnippet): Record<string, Record<string, unknown> & { url: string }> =>
    Object.fromEntries(Object.entries(config.upstreams).map(([name, u]) => [name, { ...u, url: registry.url }]));

  async function pulledThroughMirror(repo: string): Promise<boolean> {
    await registry.sync();
    return image.blobs().every((b) => registry.count({ method: "GET", kind: "blobs", pathIncludes: b.digest, status: 200 }) >= 1) && registry.count({ kind: "manifests", repo }) >= 1;
  }

  it("docker.md: dockerd starts with the guide's daemon.json and pulls a Docker Hub name through the mirror", { timeout: 180_000 }, async () => {
    const { block } = first(await parsed<DaemonJson>("docker.md", "json"));
    const daemonJson = join(work, "daemon.json");
    await writeFile(daemonJson, localised(block.text));
    const dockerd = teardown.track(await startDockerd({ extraArgs: [`--config-file=${daemonJson}`] }), "dockerd (daemon.json)");
    const info = await dockerd.docker(["info", "--format", "{{json .RegistryConfig.Mirrors}}"]);
    expect(JSON.parse(info.stdout)).toEqual([`http://${mirror.host}/`]);
    const pull = await dockerd.docker(["pull", `guide-${RUN}`]);
    expect(pull.code, `${pull.stdout}${pull.stderr}`).toBe(0);
    expect(await pulledThroughMirror(HUB_REPO)).toBe(true);
    await dockerd.stop();
  });

  it("containerd.md: ctr pulls with the guide's hosts.toml files, by ns= and by override_path", { timeout: 180_000 }, async () => {
    const hostsFiles = await parsed<HostsToml>("containerd.md", "toml", (v) => "server" in v);
    const byNs = first(hostsFiles.filter(({ value }) => value.server === "https://registry-1.docker.io"));
    const byPath = first(hostsFiles.filter(({ value }) => Object.values(value.host).some((h) => h.override_path === true)));
    const containerd = teardown.track(await startContainerd());

    const nsDir = join(work, "hosts-ns");
    await mkdir(join(nsDir, "docker.io"), { recursive: true });
    await writeFile(join(nsDir, "docker.io", "hosts.toml"), localised(byNs.block.text));
    registry.clearRequests();
    const hub = await containerd.ctr(["image", "pull", "--hosts-dir", nsDir, `docker.io/${HUB_REPO}:latest`]);
    expect(hub.code, `${hub.stdout}${hub.stderr}`).toBe(0);

    const pathDir = join(work, "hosts-path");
    await mkdir(join(pathDir, "ghcr.io"), { recursive: true });
    await writeFile(join(pathDir, "ghcr.io", "hosts.toml"), localised(byPath.block.text));
    registry.clearRequests();
    const ghcr = await containerd.ctr(["image", "pull", "--hosts-dir", pathDir, `ghcr.io/${GHCR_REPO}:1.0`]);
    expect(ghcr.code, `${ghcr.stdout}${ghcr.stderr}`).toBe(0);
    await registry.sync();
    expect(registry.count({ kind: "manifests", repo: GHCR_REPO })).toBeGreaterThanOrEqual(1);
    await containerd.stop();
  });

  it("air-gapped.md: a cache filled online, copied, and started with the guide's offline config serves the pull", { timeout: 120_000 }, async () => {
    const configs = (await blocks("air-gapped.md")).filter((b) => b.lang === "yaml" && b.meta === "mirror");
    expect(configs.length).toBe(2);
    const [online, offline] = configs.map((b) => parseYaml(b.text) as MirrorConfigSnippet) as [MirrorConfigSnippet, MirrorConfigSnippet];
    // Fill: the guide's online config (budget and pins), with a local cache directory and upstream.
    const cache = join(work, "site-cache");
    const filler = await startTestMirror({
      dataDir: cache,
      upstreams: localUpstreams(online),
      extra: { storage: { ...online.storage, path: cache } },
    });
    for (const path of [`/v2/${HUB_REPO}/manifests/latest`, ...image.blobs().map((b) => `/v2/${HUB_REPO}/blobs/${b.digest}`)]) {
      const res = await fetch(`${filler.url}${path}`, { headers: { accept: image.mediaType } });
      expect(res.status, path).toBe(200);
      await res.arrayBuffer();
    }
    await filler.mirror.close();

    // Carry it to the site: a copy of the whole directory, and no upstream at all.
    const site = join(work, "site-copy");
    await cp(cache, site, { recursive: true });
    await registry.stop();
    expect(offline.offline).toBe(true);
    const atSite = teardown.track(
      await startTestMirror({
        dataDir: site,
        upstreams: localUpstreams(offline),
        extra: { offline: true, storage: { ...offline.storage, path: site } },
      }),
      "offline mirror",
    );
    const manifest = await fetch(`${atSite.url}/v2/${HUB_REPO}/manifests/latest`, { headers: { accept: image.mediaType } });
    expect(manifest.status).toBe(200);
    expect(manifest.headers.get("docker-content-digest")).toBe(image.digest);
    await manifest.arrayBuffer();
    for (const blob of image.blobs()) {
      const res = await fetch(`${atSite.url}/v2/${HUB_REPO}/blobs/${blob.digest}`);
      expect(Buffer.from(await res.arrayBuffer()).equals(blob.bytes)).toBe(true);
    }
    // What was never cached is a clean 404, not a hang or a 5xx.
    const missing = await fetch(`${atSite.url}/v2/${HUB_REPO}/manifests/never-pulled`, { headers: { accept: image.mediaType } });
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { errors: Array<{ code: string }> }).errors[0]?.code).toBe("MANIFEST_UNKNOWN");
  });
});
