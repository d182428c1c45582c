// Self-test of the headless Chromium harness: it loads a page from a loopback server, records every request the
// page makes (to this origin and to another), reports what the page logs as an error, and stops its process.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { startBrowser, type TestBrowser } from "../harness/browser.ts";
import { isAlive, Teardown } from "../harness/processes.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

async function listen(handler: Parameters<typeof createServer>[1]): Promise<{ url: string; server: Server }> {
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  teardown.add("page server", () => new Promise<void>((resolve) => server.close(() => resolve())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

describe("startBrowser", () => {
  let chromium: TestBrowser;

  it("records the page's requests to any origin and the errors it logs", async () => {
    const other = await listen((_req, res) => res.writeHead(404).end());
    const page = await listen((req, res) => {
      if (req.url === "/app.js") {
        res.writeHead(200, { "content-type": "text/javascript" });
        res.end(
          `fetch("/data").then(() => { document.body.dataset.done = "yes"; console.error("logged by the page"); });`,
        );
      } else if (req.url === "/data") res.writeHead(200, { "content-type": "application/json" }).end("{}");
      else {
        res.writeHead(200, { "content-type": "text/html" });
        res.end(
          `<!doctype html><link rel="icon" href="data:,"><img src="${other.url}/pixel.png"><script src="/app.js"></script>`,
        );
      }
    });
    chromium = await startBrowser();
    teardown.track(chromium);
    expect(chromium.pid).toBeGreaterThan(0);
    const tab = await chromium.newPage();
    await tab.goto(`${page.url}/`, { waitUntil: "networkidle0" });
    await tab.waitForSelector("body[data-done=yes]");
    expect(chromium.requests).toEqual(
      expect.arrayContaining([`${page.url}/`, `${page.url}/app.js`, `${page.url}/data`, `${other.url}/pixel.png`]),
    );
    expect(chromium.pageErrors).toContain("logged by the page");
  });

  it("stops its process", async () => {
    await chromium.stop();
    expect(await isAlive(chromium.pid!)).toBe(false);
  });
});
