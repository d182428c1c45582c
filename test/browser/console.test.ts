/**
 * The web console (/console/) in a real browser: Debian's headless Chromium driven by puppeteer-core, against a
 * real mirror (in this process) pulling from a real upstream registry. Signs in (and is refused with a wrong
 * token), reads the overview after a cold and a warm pull and holds its numbers to /metrics, browses to an image,
 * prefetches another and watches it finish, purges, and shows an API error verbatim; a request without the CSRF
 * token is refused (plain HTTP, no browser). Every request the browser made must have gone to the mirror's
 * origin. Screenshots of every page, at desktop and phone width, go to test-artifacts/console/ (gitignored).
 */
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Page } from "puppeteer-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startBrowser, type TestBrowser } from "../harness/browser.ts";
import {
  buildImage,
  buildIndex,
  pushImage,
  pushIndex,
  randomLayer,
  type BuiltImage,
  type BuiltIndex,
} from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { Teardown, waitFor } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "../integration/client.ts";

const TOKEN = "console-admin-token-0123456789";
const UPSTREAM = "reg.test";
export const ARTIFACTS = join(import.meta.dirname, "..", "..", "test-artifacts", "console");
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };

const teardown = new Teardown();
afterAll(() => teardown.run());
let upstream: Registry;
let mirror: TestMirror;
let chromium: TestBrowser;
let page: Page;
let one: BuiltIndex;
let two: BuiltImage;
let three: BuiltImage;
/** In front of the same registry, as a second upstream whose bodies and answers a test can hold up. */
let relay: Relay;
const SLOW = "slow.test";

beforeAll(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  upstream = teardown.track(await startRegistry());
  one = buildIndex([
    buildImage({ format: "oci", architecture: "amd64", layers: [randomLayer(120_000), randomLayer(40_000)] }),
    buildImage({ format: "oci", architecture: "arm64", layers: [randomLayer(100_000)] }),
  ]);
  await pushIndex(upstream.url, "team/one", "1.0", one);
  two = buildImage({ format: "oci", layers: [randomLayer(300_000)] });
  await pushImage(upstream.url, "team/two", "2.0", two);
  three = buildImage({ format: "oci", layers: [randomLayer(2_000_000)] });
  await pushImage(upstream.url, "team/three", "3.0", three);
  relay = teardown.track(await startRelay(upstream.url));
  mirror = teardown.track(
    await startTestMirror({
      upstreams: { [UPSTREAM]: { url: upstream.url, default: true }, [SLOW]: { url: relay.url } },
      extra: {
        admin: { token: TOKEN },
        console: { enabled: true, historyInterval: "1s" },
        storage: { maxSize: "1GiB" },
      },
    }),
  );
  chromium = teardown.track(await startBrowser());
  page = await chromium.newPage(DESKTOP);
});

/** Pulls `team/one:1.0` (the index, its amd64 image, that image's blobs) as a client would; answers the body bytes. */
async function pullOne(): Promise<number> {
  let total = 0;
  const get = async (path: string, accept?: string) => {
    const res = await fetchRaw(`${mirror.url}/v2/${UPSTREAM}/team/one/${path}`, {
      headers: accept ? { accept } : {},
    });
    expect(res.status, path).toBe(200);
    total += res.body.length;
  };
  await get("manifests/1.0", ALL_MANIFEST_TYPES);
  const amd64 = one.children[0]!;
  await get(`manifests/${amd64.digest}`, ALL_MANIFEST_TYPES);
  for (const blob of amd64.blobs()) await get(`blobs/${blob.digest}`);
  return total;
}

/** The sum of a metric's samples whose labels include `match` (e.g. `source="cache"`). */
async function metricSum(name: string, match = ""): Promise<number> {
  const text = (await fetchRaw(`${mirror.url}/metrics`)).body.toString("utf8");
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (match !== "" && !line.includes(match)) continue;
    sum += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return sum;
}

async function shoot(name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `${name}-desktop.png`), fullPage: true });
  const phone = await chromium.newPage(PHONE);
  try {
    await phone.goto(page.url(), { waitUntil: "networkidle0" });
    if (!page.url().endsWith("/login")) await phone.waitForSelector("main[data-loaded]", { timeout: 15_000 });
    await phone.screenshot({ path: join(ARTIFACTS, `${name}-phone.png`), fullPage: true });
    // Nothing wider than the phone's screen: no sideways scrolling of the page itself.
    const overflow = (await phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")) as number;
    expect(overflow, `${name} at phone width overflows by ${overflow}px`).toBeLessThanOrEqual(0);
  } finally {
    await phone.close();
  }
}

async function loaded(url: string): Promise<void> {
  await page.goto(url, { waitUntil: "domcontentloaded" });
  await page.waitForSelector("main[data-loaded]", { timeout: 15_000 });
}

const metricValue = (name: string) =>
  inPage<string>(`document.querySelector(${JSON.stringify(`[data-metric="${name}"]`)}).dataset.value`).then(Number);

/**
 * Runs `expression` in the page. Written as text: the tests are type-checked without the DOM library, which
 * the server code must not see.
 */
const inPage = <T>(expression: string) => page.evaluate(expression) as Promise<T>;
const texts = (selector: string) =>
  inPage<string[]>(`[...document.querySelectorAll(${JSON.stringify(selector)})].map((el) => el.textContent)`);
const attributes = (selector: string, name: string) =>
  inPage<string[]>(
    `[...document.querySelectorAll(${JSON.stringify(selector)})].map((el) => el.getAttribute(${JSON.stringify(name)}))`,
  );

async function adminJson<T>(path: string): Promise<T> {
  const res = await fetchRaw(`${mirror.url}/admin/v1/${path}`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(res.status, path).toBe(200);
  return JSON.parse(res.body.toString("utf8")) as T;
}

const sessionCookie = async () => (await page.cookies()).find((c) => c.name === "mirror_console");

describe("console", () => {
  it("is absent unless enabled, and refuses a wrong token", async () => {
    const plain = teardown.track(
      await startTestMirror({
        upstreams: { [UPSTREAM]: { url: upstream.url, default: true } },
        extra: { admin: { token: TOKEN } },
      }),
    );
    expect((await fetchRaw(`${plain.url}/console/login`)).status).toBe(404);

    await page.goto(`${mirror.url}/console/`, { waitUntil: "domcontentloaded" });
    expect(new URL(page.url()).pathname).toBe("/console/login");
    await page.type("#token", "not-the-admin-token-at-all");
    const [answer] = await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
    expect(answer?.status()).toBe(401);
    expect(await texts(".error")).toEqual(["Wrong token."]);
    expect(await sessionCookie()).toBeUndefined();
    await shoot("login");
    // The API behind the pages answers nobody without a session.
    const res = await fetchRaw(`${mirror.url}/console/api/totals`);
    expect(res.status).toBe(401);
    expect(errorCode(res)).toBe("UNAUTHORIZED");
  });

  it("signs in with the admin token: an HttpOnly, SameSite=Strict session; a strict CSP on every page", async () => {
    await page.goto(`${mirror.url}/console/login`, { waitUntil: "domcontentloaded" });
    await page.type("#token", TOKEN);
    await Promise.all([page.waitForNavigation(), page.click("button[type=submit]")]);
    expect(new URL(page.url()).pathname).toBe("/console/");
    const cookie = await sessionCookie();
    expect(cookie).toMatchObject({ httpOnly: true, sameSite: "Strict", path: "/console", secure: false });
    const res = await fetchRaw(`${mirror.url}/console/`, { headers: { cookie: `mirror_console=${cookie!.value}` } });
    expect(res.status).toBe(200);
    const csp = String(res.headers["content-security-policy"]);
    expect(csp).toContain("default-src 'self'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).not.toContain("unsafe-inline");
    // Scripts only by src: nothing inline for the policy to have to allow.
    const html = res.body.toString("utf8");
    expect(html.match(/<script\b[^>]*>/g)?.every((tag) => / src="\/console\/assets\//.test(tag))).toBe(true);
    expect(html).not.toMatch(/ style=| on[a-z]+=/);
  });

  it("shows the traffic of a cold and a warm pull with the numbers of /metrics, and a history chart", async () => {
    const cold = await pullOne();
    const warm = await pullOne();
    // Samples are taken every second: wait for two after the pulls, so the chart has an interval to draw.
    const since = Date.now();
    await waitFor(
      async () => {
        const res = await inPage<unknown>('fetch("/console/history.json?span=hour").then((r) => r.json())');
        return (res as { samples: Array<{ t: number }> }).samples.filter((s) => s.t > since).length >= 2;
      },
      { timeoutMs: 15_000, what: "two history samples after the pulls" },
    );
    await loaded(`${mirror.url}/console/`);
    const fromCache = await metricSum("mirror_sent_bytes_total", 'source="cache"');
    const fromUpstream = await metricSum("mirror_sent_bytes_total", 'source="upstream"');
    const fetched = await metricSum("mirror_upstream_fetched_bytes_total");
    expect(fromCache).toBe(warm);
    expect(fromUpstream).toBe(cold);
    expect(await metricValue("sinceStart.bytes.sentFromCache")).toBe(fromCache);
    expect(await metricValue("total.bytes.sentFromCache")).toBe(fromCache);
    expect(await metricValue("sinceStart.bytes.sentFromUpstream")).toBe(fromUpstream);
    expect(await metricValue("sinceStart.bytes.fetchedFromUpstream")).toBe(fetched);
    let hits = 0;
    let answers = 0;
    for (const result of ["hit", "coalesced", "revalidated", "stale", "miss"]) {
      const n = await metricSum("mirror_requests_total", `result="${result}"`);
      answers += n;
      if (result !== "miss") hits += n;
    }
    // Two pulls of two manifests and three blobs each.
    expect(answers).toBe(10);
    expect(await metricValue("sinceStart.requests.total")).toBe(answers);
    expect(await metricValue("sinceStart.hitRatio")).toBeCloseTo(hits / answers, 12);
    // Storage against its budget, and the upstream's health.
    expect(await metricValue("storage.bytes")).toBe(await metricSum("mirror_cache_size_bytes"));
    expect(await metricValue("storage.maxSize")).toBe(1024 ** 3);
    expect(await texts(`tr[data-upstream="${UPSTREAM}"] td.up`)).toEqual(["up"]);
    // uPlot drew the two charts (canvas elements) from the history.
    await page.waitForSelector("#chart-bytes canvas", { timeout: 10_000 });
    expect((await texts("#charts canvas")).length).toBeGreaterThanOrEqual(2);
    await page.click('button[data-span="hour"]');
    await page.waitForSelector("#chart-ratio canvas", { timeout: 10_000 });
    await shoot("overview");
  });

  it("browses to the image: search, tags, platforms, layers, pull commands for this mirror", async () => {
    await loaded(`${mirror.url}/console/browse`);
    await page.type("#search", "one");
    const links = await texts("#repositories a");
    expect(links).toEqual(["team/one"]);
    await shoot("browse");
    await Promise.all([page.waitForNavigation(), page.click("#repositories a")]);
    await page.waitForSelector("main[data-loaded]");
    const [row] = await texts('tr[data-tag="1.0"]');
    expect(row).toContain(one.digest.slice(0, 19));
    await shoot("repository");
    await Promise.all([page.waitForNavigation(), page.click('tr[data-tag="1.0"] td a')]);
    await page.waitForSelector("main[data-loaded]");
    const platforms = await attributes("tr[data-platform]", "data-platform");
    expect(platforms).toEqual(["linux/amd64", "linux/arm64"]);
    const commands = await texts("#pull code");
    expect(commands).toEqual([
      `docker pull ${mirror.host}/${UPSTREAM}/team/one:1.0`,
      `ctr image pull --plain-http ${mirror.host}/${UPSTREAM}/team/one:1.0`,
      `nerdctl pull --insecure-registry ${mirror.host}/${UPSTREAM}/team/one:1.0`,
      `podman pull --tls-verify=false ${mirror.host}/${UPSTREAM}/team/one:1.0`,
    ]);
    await shoot("image-index");
    await Promise.all([page.waitForNavigation(), page.click('tr[data-platform="linux/amd64"] a')]);
    await page.waitForSelector("main[data-loaded]");
    const layers = await attributes("tr[data-layer]", "data-layer");
    expect(layers).toEqual(one.children[0]!.layers.map((l) => l.digest));
    await shoot("image");
  });

  it("prefetches another image and follows it to the end; shows an API error verbatim", async () => {
    await loaded(`${mirror.url}/console/browse`);
    await page.type("#prefetch-reference", `${UPSTREAM}/team/two:2.0`);
    await page.click("#prefetch button[type=submit]");
    await page.waitForSelector('.job[data-state="done"]', { timeout: 30_000 });
    const [text] = await texts(".job");
    expect(text).toMatch(/done: 2\/2 blobs/);
    const tags = await fetchRaw(`${mirror.url}/admin/v1/tags?upstream=${UPSTREAM}&repository=team/two`, {
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect(JSON.parse(tags.body.toString("utf8"))).toMatchObject({ tags: [{ tag: "2.0", cached: true }] });
    await shoot("prefetch");

    // The admin API's own answer to a bad reference, as the console shows it.
    const direct = await fetchRaw(`${mirror.url}/admin/v1/prefetch`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
      body: Buffer.from(JSON.stringify({ reference: "Bad//Name" })),
    });
    const { code, message } = (
      JSON.parse(direct.body.toString("utf8")) as { errors: Array<{ code: string; message: string }> }
    ).errors[0]!;
    await inPage('document.querySelector("#prefetch-reference").value = ""');
    await page.type("#prefetch-reference", "Bad//Name");
    await page.click("#prefetch button[type=submit]");
    await page.waitForSelector("#notice.error");
    expect((await texts("#notice"))[0]).toBe(`Prefetch Bad//Name failed: ${direct.status} ${code}: ${message}`);
  });

  it("refreshes, pins and unpins a tag, each through the admin API", async () => {
    await loaded(`${mirror.url}/console/browse?upstream=${UPSTREAM}&repository=team/two`);
    await page.click('tr[data-tag="2.0"] button[data-action="refresh"]');
    await page.waitForFunction('document.getElementById("notice")?.textContent === "Refresh 2.0: done"');
    await page.waitForSelector("main[data-loaded]");
    await page.click('tr[data-tag="2.0"] button[data-action="pin"]');
    await page.waitForSelector('tr[data-tag="2.0"] .badge.pinned');
    await page.waitForSelector("main[data-loaded]");
    const reference = `${UPSTREAM}/team/two:2.0`;
    expect((await adminJson<{ pins: unknown[] }>("pins")).pins).toMatchObject([{ reference, digest: two.digest }]);
    // Recorded where the janitor reads pins (and `mirror import --pin` writes them).
    expect(await readFile(join(mirror.dataDir, "pins.json"), "utf8")).toContain(reference);
    await shoot("repository-pinned");
    await page.click('tr[data-tag="2.0"] button[data-action="unpin"]');
    await page.waitForSelector('tr[data-tag="2.0"] button[data-action="pin"]');
    expect((await adminJson<{ pins: unknown[] }>("pins")).pins).toEqual([]);
    // A tag that is not cached cannot be pinned.
    const refused = await fetchRaw(`${mirror.url}/admin/v1/pin`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
      body: Buffer.from(JSON.stringify({ upstream: UPSTREAM, repository: "team/two", tag: "9.9" })),
    });
    expect(refused.status).toBe(404);
    expect(errorCode(refused)).toBe("MANIFEST_UNKNOWN");
    const notPinned = await fetchRaw(`${mirror.url}/admin/v1/unpin`, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
      body: Buffer.from(JSON.stringify({ reference })),
    });
    expect(notPinned.status).toBe(404);
  });

  it("downloads an export bundle and deletes a digest, through the admin API", async () => {
    await loaded(`${mirror.url}/console/browse?upstream=${UPSTREAM}&repository=team/two`);
    const [href] = await attributes('tr[data-tag="2.0"] a.button', "href");
    expect(href).toBe(`/console/api/export?reference=${encodeURIComponent(`${UPSTREAM}/team/two:2.0`)}`);
    const cookie = `mirror_console=${(await sessionCookie())!.value}`;
    const bundle = await fetchRaw(`${mirror.url}${href}`, { headers: { cookie } });
    expect(bundle.status).toBe(200);
    expect(bundle.headers["content-type"]).toBe("application/x-tar");
    expect(Number(bundle.headers["content-length"])).toBe(bundle.body.length);
    for (const blob of two.blobs()) expect(bundle.body.indexOf(blob.bytes), blob.digest).toBeGreaterThan(0);

    await page.click('tr[data-tag="2.0"] button[data-action="delete-digest"]');
    await page.waitForFunction(
      `document.getElementById("notice")?.textContent === "Delete ${two.digest.slice(0, 19)}: done"`,
    );
    await page.waitForSelector("main[data-loaded]");
    expect(await texts('tr[data-tag="2.0"] td:nth-child(3)')).toEqual(["not cached"]);
    const blobs = await adminJson<{ blobs: Array<{ digest: string }> }>("blobs?limit=10000");
    expect(blobs.blobs.map((b) => b.digest)).not.toContain(two.digest);
  });

  it("refuses an action without the CSRF token; purges through the admin API with it", async () => {
    const cookie = `mirror_console=${(await sessionCookie())!.value}`;
    const purge = (headers: Record<string, string>) =>
      fetchRaw(`${mirror.url}/console/api/purge`, {
        method: "POST",
        headers: { cookie, "content-type": "application/json", ...headers },
        body: Buffer.from(JSON.stringify({ upstream: UPSTREAM, repository: "team/one" })),
      });
    for (const headers of [{}, { "x-csrf-token": "forged" }] as Array<Record<string, string>>) {
      const refused = await purge(headers);
      expect(refused.status).toBe(403);
      expect(errorCode(refused)).toBe("DENIED");
    }
    const stillThere = await fetchRaw(`${mirror.url}/console/api/tags?upstream=${UPSTREAM}&repository=team/one`, {
      headers: { cookie },
    });
    expect((JSON.parse(stillThere.body.toString("utf8")) as { tags: unknown[] }).tags).toHaveLength(1);
    // Sign-out is an action too.
    expect((await fetchRaw(`${mirror.url}/console/logout`, { method: "POST", headers: { cookie } })).status).toBe(403);

    // In the browser (which sends the token): purge the tag from its repository page.
    await loaded(`${mirror.url}/console/browse?upstream=${UPSTREAM}&repository=team/one`);
    await page.click('tr[data-tag="1.0"] button[data-action="purge"]');
    await page.waitForFunction('document.getElementById("notice")?.textContent === "Purge 1.0: done"');
    await page.waitForFunction("document.querySelector('tr[data-tag=\"1.0\"]') === null");
    const gone = await fetchRaw(`${mirror.url}/admin/v1/tags?upstream=${UPSTREAM}&repository=team/one`, {
      headers: { authorization: `Bearer ${TOKEN}` },
    });
    expect((JSON.parse(gone.body.toString("utf8")) as { tags: unknown[] }).tags).toEqual([]);
  });

  it("shows a download in flight with its progress, and an upstream's last error", async () => {
    const layer = three.layers[0]!;
    relay.setFault([
      { kind: "stallBody", afterBytes: 100_000, match: /\/blobs\// },
      { kind: "status", status: 503, match: /\/manifests\/broken/ },
    ]);
    const failed = await fetchRaw(`${mirror.url}/v2/${SLOW}/team/three/manifests/broken`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(failed.status).toBeGreaterThanOrEqual(500);
    // A client starts the layer's download, which the relay holds after 100 kB; it gives up when the test is done.
    const client = new AbortController();
    const pulling = fetch(`${mirror.url}/v2/${SLOW}/team/three/blobs/${layer.digest}`, { signal: client.signal })
      .then((res) => res.arrayBuffer())
      .catch(() => undefined);
    try {
      await loaded(`${mirror.url}/console/`);
      await page.waitForSelector("#fills progress", { timeout: 15_000 });
      const [item] = await texts("#fills li");
      expect(item).toContain(`${SLOW}/team/three@${layer.digest.slice(0, 19)}`);
      await page.waitForFunction('Number(document.querySelector("#fills progress")?.getAttribute("value")) >= 100000', {
        timeout: 15_000,
      });
      expect(await attributes("#fills progress", "max")).toEqual([String(layer.bytes.length)]);
      const [lastError] = await texts(`tr[data-upstream="${SLOW}"] td:last-child`);
      expect(lastError).toMatch(/answered 503$/);
      await shoot("overview-downloading");
    } finally {
      client.abort();
      relay.setFault(null);
      await pulling;
    }
  });

  it("signs out: the session no longer opens the API", async () => {
    const cookie = `mirror_console=${(await sessionCookie())!.value}`;
    await loaded(`${mirror.url}/console/`);
    await Promise.all([page.waitForNavigation(), page.click(".logout button")]);
    expect(new URL(page.url()).pathname).toBe("/console/login");
    expect((await fetchRaw(`${mirror.url}/console/api/totals`, { headers: { cookie } })).status).toBe(401);
  });

  it("made no request to any other origin, and no page reported an error", () => {
    expect(chromium.requests.length).toBeGreaterThan(20);
    const elsewhere = chromium.requests.filter((url) => new URL(url).origin !== mirror.url);
    expect(elsewhere).toEqual([]);
    // Errors the pages logged: CSP violations and script errors would be here. Expected: the refused sign-in
    // (401) and the refused prefetch of a bad reference (400), each once.
    expect(chromium.pageErrors.sort()).toEqual([
      "Failed to load resource: the server responded with a status of 400 (Bad Request)",
      "Failed to load resource: the server responded with a status of 401 (Unauthorized)",
    ]);
  });
});
