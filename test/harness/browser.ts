/**
 * Headless Chromium from Debian's `chromium` package, driven by puppeteer-core (which downloads no browser of
 * its own: none could be fetched here). Every request a page makes is recorded, so a test can assert where they
 * went. Stopped by closing it, then by its PID if it lingers.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { stopPid } from "./processes.ts";

export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

export interface TestBrowser {
  readonly name: string;
  readonly browser: Browser;
  /** The browser process's PID (what stop() ends, if closing does not). */
  readonly pid: number | undefined;
  /** Every URL any page of this browser requested, in order. */
  readonly requests: string[];
  /** Messages the pages logged at level error (CSP violations land here), and uncaught page errors. */
  readonly pageErrors: string[];
  newPage(opts?: { width: number; height: number }): Promise<Page>;
  stop(): Promise<void>;
}

export async function startBrowser(): Promise<TestBrowser> {
  const profile = await mkdtemp(join(tmpdir(), "chromium-profile-"));
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    // --no-sandbox: the tests run as root, where Chromium's sandbox cannot start.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions"],
    timeout: 60_000,
  });
  const pid = browser.process()?.pid;
  const requests: string[] = [];
  const pageErrors: string[] = [];
  return {
    name: "chromium",
    browser,
    pid,
    requests,
    pageErrors,
    async newPage(opts = { width: 1280, height: 900 }) {
      const page = await browser.newPage();
      await page.setViewport(opts);
      page.on("request", (req) => requests.push(req.url()));
      page.on("console", (msg) => {
        if (msg.type() === "error") pageErrors.push(msg.text());
      });
      page.on("pageerror", (err) => pageErrors.push(String(err)));
      return page;
    },
    async stop() {
      await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 10_000))]).catch(() => undefined);
      if (pid !== undefined) await stopPid(pid, "chromium");
      await rm(profile, { recursive: true, force: true });
    },
  };
}
