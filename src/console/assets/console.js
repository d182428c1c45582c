// The console's pages, drawn in the browser from the admin API (through /console/api/, which adds the session's
// admin token) and the console's own status and history. No framework: DOM built with textContent only (no
// innerHTML of data), uPlot for the charts. Errors from the API are shown as it wrote them.
"use strict";
(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const main = document.getElementById("page");
  const params = new URLSearchParams(location.search);

  /** An element: attributes (on* excluded: no inline handlers), then children (strings become text). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs ?? {})) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
    return put(el, ...children);
  }

  /** Appends children (nested arrays flattened, null and undefined skipped) after removing what was there. */
  function put(el, ...children) {
    el.replaceChildren();
    for (const c of children.flat(Infinity))
      if (c !== undefined && c !== null) el.append(c instanceof Node ? c : String(c));
    return el;
  }

  /** The API's own error text: `401 UNAUTHORIZED: message` from its `{"errors":[...]}` envelope. */
  class ApiError extends Error {}

  async function request(url, opts = {}) {
    const res = await fetch(url, {
      method: opts.method ?? "GET",
      credentials: "same-origin",
      headers: {
        "X-CSRF-Token": csrf,
        ...(opts.body !== undefined ? { "Content-Type": "application/json" } : {}),
        ...(opts.headers ?? {}),
      },
      body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
    });
    if (res.status === 401 && url.startsWith("/console/")) {
      location.assign("/console/login");
      throw new ApiError("signed out");
    }
    const text = await res.text();
    if (!res.ok) {
      let message = text;
      try {
        const errors = JSON.parse(text).errors;
        message = errors.map((e) => `${e.code}: ${e.message}`).join("; ");
      } catch {
        // not the error envelope: shown as it came
      }
      throw new ApiError(`${res.status} ${message}`);
    }
    return opts.raw ? { text, res } : JSON.parse(text);
  }
  const api = (path, opts) => request(`/console/api/${path}`, opts);

  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
  }
  const percent = (r) => (r === null || r === undefined ? "—" : `${(r * 100).toFixed(1)} %`);
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
  /** A number shown formatted, its exact value kept in data-value (what tests compare with /metrics). */
  const num = (name, value, format) => h("span", { "data-metric": name, "data-value": value ?? "" }, format(value));

  /** Messages of actions: a status line that tests and people read. */
  function notice(text, isError) {
    let box = document.getElementById("notice");
    if (!box) {
      box = h("p", { id: "notice", role: "status" });
      main.prepend(box);
    }
    box.className = isError ? "error" : "ok";
    box.textContent = text;
  }
  /**
   * Runs an action and says how it went. `data-loaded` is off from the start of an action until the page has
   * redrawn after it (the caller's reload sets it again), so tests and scripts know when the page is settled.
   */
  async function act(label, run) {
    delete main.dataset.loaded;
    try {
      const out = await run();
      notice(`${label}: done`, false);
      return out;
    } catch (err) {
      notice(`${label} failed: ${err.message}`, true);
      main.dataset.loaded = "true";
      return undefined;
    }
  }

  // ---- overview ---------------------------------------------------------------------------------------------
  async function overview() {
    const span = h(
      "div",
      { class: "spans", role: "group", "aria-label": "chart span" },
      ["hour", "day", "month"].map((s) =>
        h("button", { type: "button", "data-span": s, "aria-pressed": s === "day" }, s === "month" ? "30 days" : s),
      ),
    );
    const traffic = h("section", { id: "traffic", class: "card" });
    const charts = h(
      "section",
      { class: "card", id: "charts" },
      h("h2", {}, "History"),
      span,
      h("div", { id: "chart-bytes" }),
      h("div", { id: "chart-ratio" }),
    );
    const upstreams = h("section", { id: "upstreams", class: "card" });
    const storage = h("section", { id: "storage", class: "card" });
    const fills = h("section", { id: "fills", class: "card" });
    put(main, h("h1", {}, "Overview"), traffic, storage, upstreams, fills, charts);
    let chosen = "day";
    span.addEventListener("click", (e) => {
      const s = e.target.closest("button")?.dataset.span;
      if (!s) return;
      chosen = s;
      for (const b of span.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.span === s));
      void drawCharts(s);
    });

    async function refresh() {
      const [totals, status] = await Promise.all([api("totals"), request("/console/status.json")]);
      const t = totals.traffic;
      const row = (label, key, fmt) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, label),
          h("td", {}, num(`sinceStart.${key}`, pick(t.sinceStart, key), fmt)),
          h("td", {}, num(`total.${key}`, pick(t.total, key), fmt)),
        );
      put(
        traffic,
        h("h2", {}, "Traffic"),
        h(
          "table",
          {},
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              h("th", {}),
              h("th", { scope: "col" }, "since start"),
              h("th", { scope: "col" }, `since ${when(t.total.since)}`),
            ),
          ),
          h(
            "tbody",
            {},
            row("Hit ratio (answers)", "hitRatio", percent),
            row("Byte hit ratio", "byteHitRatio", percent),
            row("Answers", "requests.total", String),
            row("Sent from cache (saved)", "bytes.sentFromCache", bytes),
            row("Sent while fetching", "bytes.sentFromUpstream", bytes),
            row("Fetched from upstreams", "bytes.fetchedFromUpstream", bytes),
          ),
        ),
      );
      const st = status.storage;
      put(
        storage,
        h("h2", {}, "Storage"),
        h(
          "p",
          {},
          num("storage.bytes", st.bytes, bytes),
          " used",
          st.maxSize !== null
            ? [" of ", num("storage.maxSize", st.maxSize, bytes)]
            : " (no budget: the filesystem's watermarks apply)",
          `, ${st.objects} objects`,
        ),
        st.maxSize !== null
          ? h("meter", {
              min: 0,
              max: st.maxSize,
              low: Math.round(st.maxSize * st.lowWatermark),
              high: Math.round(st.maxSize * st.highWatermark),
              optimum: 0,
              value: st.bytes,
              "aria-label": "storage used",
            })
          : null,
        h("p", {}, `Eviction above ${percent(st.highWatermark)}, down to ${percent(st.lowWatermark)}.`),
        !st.writable ? h("p", { class: "error" }, "Disk full: misses are streamed without caching.") : null,
        st.evictionBlocked ? h("p", { class: "error" }, `Eviction stopped: ${st.evictionBlocked}`) : null,
      );
      put(
        upstreams,
        h("h2", {}, "Upstreams"),
        h(
          "table",
          {},
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Name", "State", "Rate limit left", "Last error"].map((c) => h("th", { scope: "col" }, c)),
            ),
          ),
          h(
            "tbody",
            {},
            status.upstreams.map((u) =>
              h(
                "tr",
                { "data-upstream": u.name },
                h(
                  "td",
                  {},
                  h("a", { href: `/console/browse?upstream=${encodeURIComponent(u.name)}` }, u.name),
                  h("div", { class: "muted" }, u.url),
                ),
                h(
                  "td",
                  { class: u.up ? "up" : "down", "data-label": "State" },
                  u.up ? "up" : `down (retry in ${Math.ceil(u.retryInMs / 1000)} s)`,
                ),
                h(
                  "td",
                  { "data-label": "Rate limit left" },
                  u.rateLimit.remaining !== null ? `${u.rateLimit.remaining} / ${u.rateLimit.limit ?? "?"}` : "—",
                ),
                h(
                  "td",
                  { "data-label": "Last error" },
                  u.lastError ? `${when(u.lastError.at)}: ${u.lastError.message}` : "—",
                ),
              ),
            ),
          ),
        ),
      );
      put(
        fills,
        h("h2", {}, `Downloads in flight (${status.fills.length})`),
        status.fills.length === 0
          ? h("p", { class: "muted" }, "None.")
          : h(
              "ul",
              {},
              status.fills.map((f) =>
                h(
                  "li",
                  {},
                  h("code", {}, `${f.upstream}/${f.repository}@${f.digest.slice(0, 19)}…`),
                  " ",
                  h("progress", { max: f.size ?? "", value: f.written }),
                  ` ${bytes(f.written)} of ${bytes(f.size)}`,
                ),
              ),
            ),
      );
      main.dataset.loaded = "true";
    }
    await refresh().catch((err) => notice(`Overview failed: ${err.message}`, true));
    void drawCharts(chosen);
    setInterval(() => void refresh().catch((err) => notice(`Overview failed: ${err.message}`, true)), 2000);
  }

  function pick(obj, path) {
    return path.split(".").reduce((o, k) => (o === null || o === undefined ? o : o[k]), obj);
  }

  const charts = [];
  async function drawCharts(span) {
    const { samples } = await request(`/console/history.json?span=${span}`);
    for (const c of charts.splice(0)) c.destroy();
    const bytesEl = document.getElementById("chart-bytes");
    const ratioEl = document.getElementById("chart-ratio");
    if (samples.length < 2) {
      put(
        bytesEl,
        h("p", { class: "muted" }, "Not enough history yet: samples are taken every console.historyInterval."),
      );
      put(ratioEl);
      return;
    }
    put(bytesEl);
    put(ratioEl);
    // Per interval: what the running totals grew by between two samples.
    const x = [];
    const cache = [];
    const upstream = [];
    const ratio = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1];
      const b = samples[i];
      x.push(b.t / 1000);
      cache.push(Math.max(0, b.sentFromCache - a.sentFromCache));
      upstream.push(Math.max(0, b.fetchedFromUpstream - a.fetchedFromUpstream));
      const answers = b.requests - a.requests;
      ratio.push(answers > 0 ? ((b.fromCache - a.fromCache) / answers) * 100 : null);
    }
    const width = Math.max(260, bytesEl.clientWidth || 600);
    const axisBytes = { values: (_u, ticks) => ticks.map(bytes), size: 84 };
    charts.push(
      new uPlot(
        {
          title: "Bytes sent from cache vs fetched from upstreams",
          width,
          height: 220,
          series: [
            {},
            { label: "from cache", stroke: "#2a7", fill: "rgba(34,170,119,0.15)", value: (_u, v) => bytes(v) },
            { label: "from upstreams", stroke: "#c53", value: (_u, v) => bytes(v) },
          ],
          axes: [{}, axisBytes],
        },
        [x, cache, upstream],
        bytesEl,
      ),
      new uPlot(
        {
          title: "Hit ratio (answers from cache)",
          width,
          height: 180,
          scales: { y: { range: [0, 100] } },
          series: [{}, { label: "hit ratio %", stroke: "#36c", spanGaps: true }],
        },
        [x, ratio],
        ratioEl,
      ),
    );
  }

  // ---- browse -----------------------------------------------------------------------------------------------
  async function browse() {
    const upstream = params.get("upstream");
    const repository = params.get("repository");
    if (upstream && repository) return repositoryPage(upstream, repository);
    const search = h("input", {
      type: "search",
      id: "search",
      placeholder: "Search repositories",
      "aria-label": "search repositories",
      value: params.get("q") ?? "",
    });
    const list = h("section", { id: "repositories", class: "card" });
    put(main, h("h1", {}, "Browse"), prefetchForm(), h("div", { class: "card" }, search), list);
    let repos = [];
    try {
      repos = (await api(`repositories${upstream ? `?upstream=${encodeURIComponent(upstream)}` : ""}`)).repositories;
    } catch (err) {
      notice(`Listing failed: ${err.message}`, true);
    }
    const draw = () => {
      const q = search.value.trim().toLowerCase();
      const shown = repos.filter((r) => `${r.upstream}/${r.repository}`.toLowerCase().includes(q));
      const byUpstream = new Map();
      for (const r of shown) byUpstream.set(r.upstream, [...(byUpstream.get(r.upstream) ?? []), r]);
      put(
        list,
        h("h2", {}, `Repositories (${shown.length})`),
        shown.length === 0 ? h("p", { class: "muted" }, "Nothing cached matches.") : null,
        [...byUpstream].map(([name, rs]) =>
          h(
            "div",
            { class: "upstream" },
            h("h3", {}, name),
            h(
              "ul",
              {},
              rs.map((r) =>
                h(
                  "li",
                  {},
                  h(
                    "a",
                    {
                      href: `/console/browse?upstream=${encodeURIComponent(r.upstream)}&repository=${encodeURIComponent(r.repository)}`,
                    },
                    r.repository,
                  ),
                  h("span", { class: "muted" }, ` ${r.tags} tag${r.tags === 1 ? "" : "s"}`),
                ),
              ),
            ),
          ),
        ),
      );
      main.dataset.loaded = "true";
    };
    search.addEventListener("input", draw);
    draw();
  }

  function prefetchForm() {
    const input = h("input", {
      name: "reference",
      id: "prefetch-reference",
      placeholder: "docker.io/library/alpine:3.20",
      required: "",
      "aria-label": "image reference",
    });
    const platforms = h("input", {
      name: "platforms",
      id: "prefetch-platforms",
      placeholder: "linux/amd64 (optional)",
      "aria-label": "platforms",
    });
    const out = h("div", { id: "prefetch-jobs" });
    const form = h(
      "form",
      { class: "card", id: "prefetch" },
      h("h2", {}, "Prefetch"),
      h("div", { class: "row" }, input, platforms, h("button", { type: "submit" }, "Prefetch")),
      out,
    );
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const references = input.value.split(/[\s,]+/).filter(Boolean);
      const plats = platforms.value.split(/[\s,]+/).filter(Boolean);
      for (const reference of references) {
        const job = await act(`Prefetch ${reference}`, () =>
          api("prefetch", { method: "POST", body: { reference, ...(plats.length ? { platforms: plats } : {}) } }),
        );
        if (job) void followJob(job, out);
      }
      main.dataset.loaded = "true";
    });
    return form;
  }

  async function followJob(job, out) {
    const bar = h("progress", { max: 1, value: 0 });
    const text = h("span", {});
    const item = h(
      "div",
      { class: "job", "data-job": job.id, "data-state": job.state },
      h("code", {}, job.reference),
      " ",
      bar,
      " ",
      text,
    );
    out.prepend(item);
    const show = (j) => {
      item.dataset.state = j.state;
      bar.max = Math.max(1, j.bytes.total);
      bar.value = j.bytes.done;
      text.textContent = `${j.state}: ${j.blobs.done}/${j.blobs.total} blobs, ${bytes(j.bytes.done)} of ${bytes(j.bytes.total)}${j.errors.length ? ` — ${j.errors.join("; ")}` : ""}`;
    };
    show(job);
    // Polled until it ends, at most an hour.
    for (let i = 0; i < 7200 && job.state === "running"; i++) {
      await new Promise((r) => setTimeout(r, 500));
      try {
        job = await api(`jobs/${encodeURIComponent(job.id)}`);
      } catch (err) {
        text.textContent = `status unavailable: ${err.message}`;
        return;
      }
      show(job);
    }
  }

  async function repositoryPage(upstream, repository) {
    const table = h("section", { class: "card", id: "tags" });
    const purgeRepo = h("button", { type: "button", class: "danger", id: "purge-repository" }, "Purge repository");
    purgeRepo.addEventListener("click", async () => {
      if (await act(`Purge ${repository}`, () => api("purge", { method: "POST", body: { upstream, repository } })))
        await load();
    });
    put(
      main,
      h("p", {}, h("a", { href: "/console/browse" }, "Browse"), ` › ${upstream} › ${repository}`),
      h("h1", {}, repository),
      h("div", { class: "actions" }, purgeRepo),
      table,
    );
    async function load() {
      let tags;
      let status;
      let recent;
      let pins;
      try {
        [tags, status, recent, pins] = await Promise.all([
          api(`tags?upstream=${encodeURIComponent(upstream)}&repository=${encodeURIComponent(repository)}`),
          request("/console/status.json"),
          api("blobs?limit=10000"),
          api("pins"),
        ]);
      } catch (err) {
        notice(`Listing failed: ${err.message}`, true);
        put(table);
        return;
      }
      const ttl = status.upstreams.find((u) => u.name === upstream)?.tagTtlMs ?? 0;
      const pinned = new Set(pins.pins.map((p) => p.reference));
      const lastAccess = new Map(recent.blobs.map((b) => [b.digest, b.lastAccess]));
      put(
        table,
        h("h2", {}, `Tags (${tags.tags.length})`),
        tags.tags.length === 0
          ? h("p", { class: "muted" }, "No tags cached.")
          : h(
              "table",
              {},
              h(
                "thead",
                {},
                h(
                  "tr",
                  {},
                  ["Tag", "Digest", "Size", "Last pulled", "Checked", ""].map((c) => h("th", { scope: "col" }, c)),
                ),
              ),
              h(
                "tbody",
                {},
                tags.tags.map((t) => {
                  const stale = ttl > 0 && Date.now() - Date.parse(t.checkedAt) > ttl;
                  const image = `/console/image?upstream=${encodeURIComponent(upstream)}&repository=${encodeURIComponent(repository)}&tag=${encodeURIComponent(t.tag)}&digest=${encodeURIComponent(t.digest)}`;
                  const refresh = h("button", { type: "button", "data-action": "refresh" }, "Refresh");
                  refresh.addEventListener("click", async () => {
                    if (
                      await act(`Refresh ${t.tag}`, () =>
                        api("refresh", { method: "POST", body: { upstream, repository, tag: t.tag } }),
                      )
                    )
                      await load();
                  });
                  const purge = h("button", { type: "button", "data-action": "purge", class: "danger" }, "Purge tag");
                  purge.addEventListener("click", async () => {
                    if (
                      await act(`Purge ${t.tag}`, () =>
                        api("purge", { method: "POST", body: { upstream, repository, tag: t.tag } }),
                      )
                    )
                      await load();
                  });
                  const del = h(
                    "button",
                    { type: "button", "data-action": "delete-digest", class: "danger" },
                    "Delete digest",
                  );
                  del.addEventListener("click", async () => {
                    if (
                      await act(`Delete ${t.digest.slice(0, 19)}`, () => api(`blobs/${t.digest}`, { method: "DELETE" }))
                    )
                      await load();
                  });
                  const reference = `${upstream}/${repository}:${t.tag}`;
                  const isPinned = pinned.has(reference);
                  const pin = h(
                    "button",
                    { type: "button", "data-action": isPinned ? "unpin" : "pin" },
                    isPinned ? "Unpin" : "Pin",
                  );
                  pin.addEventListener("click", async () => {
                    const done = isPinned
                      ? await act(`Unpin ${t.tag}`, () => api("unpin", { method: "POST", body: { reference } }))
                      : await act(`Pin ${t.tag}`, () =>
                          api("pin", { method: "POST", body: { upstream, repository, tag: t.tag } }),
                        );
                    if (done) await load();
                  });
                  const exportLink = h(
                    "a",
                    {
                      href: `/console/api/export?reference=${encodeURIComponent(`${upstream}/${repository}:${t.tag}`)}`,
                      download: `${repository.replaceAll("/", "_")}_${t.tag}.tar`,
                      class: "button",
                    },
                    "Export",
                  );
                  return h(
                    "tr",
                    { "data-tag": t.tag },
                    h(
                      "td",
                      {},
                      h("a", { href: image }, t.tag),
                      isPinned ? h("span", { class: "badge pinned", title: "never evicted" }, "pinned") : null,
                      stale
                        ? h(
                            "span",
                            { class: "badge stale", title: "older than tagTtl: revalidated on its next pull" },
                            "stale",
                          )
                        : null,
                    ),
                    h("td", { "data-label": "Digest" }, h("code", { title: t.digest }, `${t.digest.slice(0, 19)}…`)),
                    h("td", { "data-label": "Size" }, t.cached ? bytes(t.size) : "not cached"),
                    h("td", { "data-label": "Last pulled" }, when(lastAccess.get(t.digest))),
                    h("td", { "data-label": "Checked" }, when(t.checkedAt)),
                    h("td", { class: "actions" }, refresh, pin, purge, del, exportLink),
                  );
                }),
              ),
            ),
      );
      main.dataset.loaded = "true";
    }
    await load();
  }

  // ---- image ------------------------------------------------------------------------------------------------
  const MANIFEST_TYPES = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
  ].join(", ");

  async function imagePage() {
    const upstream = params.get("upstream") ?? "";
    const repository = params.get("repository") ?? "";
    const tag = params.get("tag");
    const digest = params.get("digest");
    const ref = digest ?? tag ?? "";
    const name = `${upstream}/${repository}`;
    put(
      main,
      h(
        "p",
        {},
        h("a", { href: "/console/browse" }, "Browse"),
        " › ",
        h(
          "a",
          {
            href: `/console/browse?upstream=${encodeURIComponent(upstream)}&repository=${encodeURIComponent(repository)}`,
          },
          name,
        ),
        ` › ${tag ?? digest}`,
      ),
      h("h1", {}, `${repository}${tag ? `:${tag}` : ""}`),
      pullCommands(name, tag, digest),
    );
    let manifest;
    try {
      // The mirror's own registry API, as any client pulls it (path prefix naming the upstream).
      const { text, res } = await request(`/v2/${name}/manifests/${ref}`, {
        headers: { Accept: MANIFEST_TYPES },
        raw: true,
      });
      manifest = {
        body: JSON.parse(text),
        mediaType: res.headers.get("content-type"),
        digest: res.headers.get("docker-content-digest"),
      };
    } catch (err) {
      notice(`Manifest failed: ${err.message}`, true);
      return;
    }
    const m = manifest.body;
    const section = h(
      "section",
      { class: "card", id: "manifest" },
      h("h2", {}, "Manifest"),
      h("p", {}, h("code", {}, manifest.digest ?? ""), " ", h("span", { class: "muted" }, manifest.mediaType ?? "")),
    );
    if (Array.isArray(m.manifests)) {
      section.append(
        h("h3", {}, "Platforms"),
        h(
          "table",
          {},
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Platform", "Digest", "Size"].map((c) => h("th", { scope: "col" }, c)),
            ),
          ),
          h(
            "tbody",
            {},
            m.manifests.map((d) => {
              const p = d.platform;
              const label = p ? [p.os, p.architecture, p.variant].filter(Boolean).join("/") : (d.artifactType ?? "—");
              const href = `/console/image?upstream=${encodeURIComponent(upstream)}&repository=${encodeURIComponent(repository)}&digest=${encodeURIComponent(d.digest)}`;
              return h(
                "tr",
                { "data-platform": label },
                h("td", {}, h("a", { href }, label)),
                h("td", {}, h("code", {}, `${d.digest.slice(0, 19)}…`)),
                h("td", {}, bytes(d.size)),
              );
            }),
          ),
        ),
      );
    } else {
      const layers = m.layers ?? [];
      const total = layers.reduce((s, l) => s + (l.size ?? 0), 0);
      section.append(
        h(
          "p",
          {},
          `Config ${m.config?.digest?.slice(0, 19) ?? "—"}… · ${layers.length} layers · ${bytes(total)} compressed`,
        ),
        h(
          "table",
          { id: "layers" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Layer", "Size", "Media type"].map((c) => h("th", { scope: "col" }, c)),
            ),
          ),
          h(
            "tbody",
            {},
            layers.map((l) =>
              h(
                "tr",
                { "data-layer": l.digest },
                h("td", {}, h("code", { title: l.digest }, `${l.digest.slice(0, 19)}…`)),
                h("td", {}, bytes(l.size)),
                h("td", { class: "muted" }, l.mediaType),
              ),
            ),
          ),
        ),
      );
    }
    main.append(section);
    main.dataset.loaded = "true";
  }

  function pullCommands(name, tag, digest) {
    const host = location.host;
    // The tag when there is one (what people pull); a digest otherwise (an index's child).
    const ref = `${host}/${name}${tag ? `:${tag}` : `@${digest}`}`;
    const plain = location.protocol === "http:";
    const commands = [
      ["docker", `docker pull ${ref}`],
      ["containerd", `ctr image pull ${plain ? "--plain-http " : ""}${ref}`],
      ["nerdctl", `nerdctl pull ${plain ? "--insecure-registry " : ""}${ref}`],
      ["podman", `podman pull ${plain ? "--tls-verify=false " : ""}${ref}`],
    ];
    return h(
      "section",
      { class: "card", id: "pull" },
      h("h2", {}, "Pull through this mirror"),
      plain ? h("p", { class: "muted" }, `Plain HTTP: docker needs "${host}" in insecure-registries.`) : null,
      commands.map(([client, cmd]) => {
        const code = h("code", { "data-client": client }, cmd);
        const copy = h("button", { type: "button", class: "copy" }, "Copy");
        copy.addEventListener("click", async () => {
          try {
            await navigator.clipboard.writeText(cmd);
            copy.textContent = "Copied";
          } catch {
            getSelection().selectAllChildren(code);
            copy.textContent = "Selected: press Ctrl+C";
          }
        });
        return h("div", { class: "command" }, h("span", { class: "client" }, client), code, copy);
      }),
    );
  }

  const pages = { overview, browse, image: imagePage };
  void pages[main.dataset.page]?.();
})();
