/**
 * The console's HTML: small server-rendered shells. The data on each page comes from the admin API (through
 * the console's session proxy) and is drawn by `assets/console.js`; no inline script or style anywhere, so the
 * Content-Security-Policy can forbid both.
 */

export type ConsolePage = "overview" | "browse" | "image";

const TITLES: Record<ConsolePage, string> = { overview: "Overview", browse: "Browse", image: "Image" };

/** Text for HTML content and double-quoted attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function head(title: string, extra = ""): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)} · registry mirror</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/console/assets/console.css">
${extra}</head>
`;
}

export function loginPage(opts: { error?: string } = {}): string {
  return `${head("Sign in")}<body class="login">
<main>
<h1>Registry mirror</h1>
<form method="post" action="/console/login" class="card">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
${opts.error !== undefined ? `<p class="error" role="alert">${escapeHtml(opts.error)}</p>` : ""}
</form>
</main>
</body>
</html>
`;
}

export function appPage(page: ConsolePage, csrf: string): string {
  const nav = (["overview", "browse"] as const)
    .map(
      (p) =>
        `<a href="/console/${p === "overview" ? "" : p}"${p === page ? ' aria-current="page"' : ""}>${TITLES[p]}</a>`,
    )
    .join("");
  const scripts = `<meta name="csrf-token" content="${escapeHtml(csrf)}">
<link rel="stylesheet" href="/console/assets/uPlot.min.css">
<script src="/console/assets/uPlot.iife.min.js" defer></script>
<script src="/console/assets/console.js" defer></script>
`;
  return `${head(TITLES[page], scripts)}<body>
<header>
<span class="brand">Registry mirror</span>
<nav>${nav}</nav>
<form method="post" action="/console/logout" class="logout">
<input type="hidden" name="csrf" value="${escapeHtml(csrf)}">
<button type="submit">Sign out</button>
</form>
</header>
<main id="page" data-page="${page}">
<p class="loading">Loading…</p>
</main>
</body>
</html>
`;
}
