/**
 * The one configuration schema. Every default lives here; unknown keys are rejected (`strict`) so a typo in a
 * YAML file is an error, not a silently ignored setting. Durations accept `ms` strings ("5m", "30s") or
 * milliseconds; sizes accept bytes.
 */
import { isIP } from "node:net";
import ms from "ms";
import { z } from "zod";
import { matchProblem, tagRegexProblem } from "./cache-rules.ts";
import { MIN_SECRET_BYTES } from "./secret-file.ts";

// zod compiles a parser function (new Function) for each object schema the first time it parses with it, which
// pays off only over many parses; the configuration is parsed once per start (and per reload). Interpreted, the
// first load of a small configuration file (YAML parser already loaded) took 17-24 ms here against 25-34 ms with
// the compiled parsers (10 starts each). This is zod's global setting: the configuration is the only thing the
// mirror parses with zod.
z.config({ jitless: true });

/**
 * The longest duration accepted: 100 years, far beyond anything a key here means, and well inside what the
 * values meet (Redis expiry times, exact integer arithmetic on epoch milliseconds).
 */
export const MAX_DURATION_MS = ms("100y"); // the messages below say "100 years"

/**
 * Durations: `ms` strings ("30s", "5m", "1h") or milliseconds, rounded to whole milliseconds, from `min` (1 ms
 * unless a key needs more) up to MAX_DURATION_MS, and kept as written. `zeroMeansOff`: 0 is accepted too, for the
 * keys where the docs say what 0 turns off; elsewhere 0 is an error, not a timer that fires at once.
 * `use` says what the value becomes, recorded as the schema's metadata so that `longDurationWarnings` (load.ts)
 * finds every key of each kind:
 * - "timer" (the default): a timer delay (setTimeout, setInterval, a socket, undici or ioredis timeout), which
 *   waits at most MAX_TIMER_MS, about 24.8 days (timerDelay in timer-delay.ts);
 * - "age": only compared with elapsed time (TTLs, back-offs), so honoured at any length.
 */
function durationIn(opts: { min?: number; zeroMeansOff?: boolean; use?: DurationUse } = {}) {
  const min = opts.min ?? 1;
  const use: DurationUse = opts.use ?? "timer";
  return z
    .union([z.number().int(), z.string()])
    .transform((value, ctx) => {
      const parsed = typeof value === "number" ? value : (ms(value as ms.StringValue) as number | undefined);
      if (typeof parsed !== "number" || !Number.isFinite(parsed) || parsed < 0) {
        ctx.addIssue({ code: "custom", message: `invalid duration ${JSON.stringify(value)} (examples: 30s, 5m, 1h)` });
        return z.NEVER;
      }
      const rounded = Math.round(parsed);
      if (rounded === 0 && opts.zeroMeansOff) return 0;
      if (rounded < min || rounded > MAX_DURATION_MS) {
        const shown = typeof value === "number" ? `${value} ms` : `${JSON.stringify(value)} (${rounded} ms)`;
        const range = `from ${ms(min)} up to 100 years${opts.zeroMeansOff ? ", or 0 for off" : ""}`;
        ctx.addIssue({ code: "custom", message: `duration ${shown} is out of range: ${range}` });
        return z.NEVER;
      }
      return rounded;
    })
    .meta({ durationUse: use });
}

/** What a duration key's value becomes: see durationIn. */
export type DurationUse = "timer" | "age";

/** The use of a duration schema (under its default/optional wrappers already); undefined for any other schema. */
export function durationUseOf(schema: z.ZodType): DurationUse | undefined {
  const use = schema.meta()?.durationUse;
  return use === "timer" || use === "age" ? use : undefined;
}

/** A duration that becomes a timer delay, 1 ms or more. */
const duration = durationIn();

/**
 * Sizes: bytes as a number, or a string with a unit. KB/MB/GB/TB are decimal, KiB/MiB/GiB/TiB binary (the
 * `bytes` package treats both as binary and knows no GiB, so this small parser is ours).
 */
const UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};
const size = z.union([z.number().int().positive(), z.string()]).transform((value, ctx) => {
  if (typeof value === "number") return value;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const unit = UNITS[(m?.[2] || "b").toLowerCase()];
  if (!m || unit === undefined) {
    ctx.addIssue({
      code: "custom",
      message: `invalid size ${JSON.stringify(value)} (examples: 50GiB, 500MB, 1073741824)`,
    });
    return z.NEVER;
  }
  // Checked after the unit is applied and rounded down: "0.5" is 0 bytes, which is no size.
  const bytes = Math.floor(Number(m[1]) * unit);
  if (bytes < 1 || !Number.isSafeInteger(bytes)) {
    const why =
      bytes < 1
        ? `is ${bytes} bytes once rounded down to whole bytes: at least 1 byte`
        : `is more than ${Number.MAX_SAFE_INTEGER} bytes`;
    ctx.addIssue({ code: "custom", message: `size ${JSON.stringify(value)} ${why}` });
    return z.NEVER;
  }
  return bytes;
});

/** A TCP port in a `host:port` string: 1-65535, or 0 where `zero` (listen on any free port). */
function portInRange(text: string, zero: boolean): boolean {
  const port = Number(/:(\d{1,5})$/.exec(text)?.[1] ?? "");
  return Number.isInteger(port) && port <= 65_535 && (port > 0 || zero);
}

const listenAddress = z
  .string()
  .regex(/^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):\d{1,5}$/, "expected host:port, e.g. 0.0.0.0:5000 or [::1]:5000")
  .refine((a) => portInRange(a, true), "the port must be 0 to 65535 (0: any free port)");

/** A registry host as clients name it: what containerd sends as `?ns=` and what path-prefix mirrors use. */
const registryHost = z
  .string()
  .regex(
    /^[a-z0-9]+(?:[.-][a-z0-9]+)*(?::\d{1,5})?$/,
    "expected a lower-case registry host such as docker.io or registry.example.com:5000",
  )
  .refine((h) => !h.includes(":") || portInRange(h, false), "the port must be 1 to 65535");

/** The URL, or undefined when it does not parse (the `url()` check reports that; refinements still run). */
const parsedUrl = (u: string): URL | undefined => (URL.canParse(u) ? new URL(u) : undefined);

/**
 * A host pattern for `redirectHosts`: `host` or `host:port`, where `*` stands for any characters within one DNS
 * label and `**` for one or more labels. The last label is literal, so a pattern never means "any host".
 */
const hostPattern = z
  .string()
  .regex(
    /^[a-z0-9*-]+(?:\.[a-z0-9*-]+)*(?::\d{1,5})?$/,
    "expected a lower-case host pattern such as production.cloudflare.docker.com, *.cloudfront.net or 127.0.0.1:9000",
  )
  .refine(
    (p) => !p.replace(/:\d+$/, "").split(".").at(-1)!.includes("*"),
    "the last label of a host pattern must be literal (e.g. *.cloudfront.net, not cdn.*)",
  );

/**
 * An upstream's origin. One message per value, naming what to write: the check never throws (a URL that does
 * not parse is an issue like any other), so every other problem in the file is reported with it.
 */
const upstreamUrl = z.string().superRefine((u, ctx) => {
  const url = parsedUrl(u);
  if (url === undefined || !/^https?:$/.test(url.protocol) || !u.includes("://")) {
    // `ghcr.io` and `ghcr.io:443` parse as a scheme or not at all: suggest the origin that was probably meant.
    const hint = /^[A-Za-z0-9.-]+(?::\d+)?$/.test(u) ? ` (did you mean https://${u}?)` : "";
    ctx.addIssue({
      code: "custom",
      message: `${JSON.stringify(u.slice(0, 200))} is not an http:// or https:// URL${hint}`,
    });
  } else if (!["", "/"].includes(url.pathname) || url.search !== "" || url.hash !== "") {
    ctx.addIssue({
      code: "custom",
      message: `${JSON.stringify(u.slice(0, 200))} must be an origin, e.g. https://ghcr.io (no path, query or fragment)`,
    });
  }
});

/**
 * A file or directory path. Marked so that loading (load.ts: resolvePaths) finds every such key: a relative
 * path written in a config file is relative to that file's directory, any other (environment, the default
 * `./data`) to the working directory; the loaded configuration holds absolute paths only.
 */
const filePath = z.string().min(1).meta({ filePath: true });

/** Whether a schema (under its default/optional wrappers already) is a path: see filePath. */
export function isFilePath(schema: z.ZodType): boolean {
  return schema.meta()?.filePath === true;
}

export const upstreamSchema = z
  .object({
    /** The registry's API origin, e.g. https://registry-1.docker.io. The only host this upstream ever contacts. */
    url: upstreamUrl,
    /** Serves plain `/v2/<name>/...` requests (dockerd `registry-mirrors`). At most one upstream may be the default. */
    default: z.boolean().default(false),
    /** Other names clients use for this registry (containerd `?ns=` values, path prefixes). */
    aliases: z.array(registryHost).default([]),
    /** How long a tag → digest pointer is trusted without asking the upstream; 0: revalidated on every request. */
    tagTtl: durationIn({ zeroMeansOff: true, use: "age" }).default(5 * 60_000),
    /**
     * How long a request for content the mirror holds waits on this upstream: revalidating a tag past its TTL,
     * confirming a cached blob or manifest for a repository not yet linked to it. When it passes, the cached answer
     * is served (marked stale) or, where the cache may not answer alone, the request fails with UNAVAILABLE; the
     * upstream request goes on in the background under its own timeouts and updates the cache when it answers.
     * Requests for content the mirror does not hold wait for the upstream as long as `timeouts` allow.
     */
    revalidateTimeout: duration.default(2_000),
    /**
     * Past its TTL, serve a tag's cached pointer at once and revalidate it in the background (the next request
     * sees the result), instead of waiting up to `revalidateTimeout` for the upstream.
     */
    staleWhileRevalidate: z.boolean().default(false),
    /** How long an upstream 404 for a tag or manifest is remembered, so a storm of misses reaches it once; 0: not remembered. */
    negativeTtl: durationIn({ zeroMeansOff: true, use: "age" }).default(30_000),
    /** Never contact this upstream: serve only what is cached (air-gapped mode). */
    offline: z.boolean().default(false),
    /**
     * Prefix for single-component names (`alpine` → `library/alpine`), as Docker Hub needs. When absent it comes
     * from the preset for the upstream's host (see UPSTREAM_PRESETS), otherwise none.
     */
    libraryPrefix: z
      .string()
      .regex(/^[a-z0-9]+(?:[._-][a-z0-9]+)*$/)
      .nullable()
      .optional(),
    timeouts: z
      .object({
        /** TCP + TLS connection set-up. */
        connect: duration.default(10_000),
        /** From request sent to response headers received. */
        headers: duration.default(30_000),
        /** Longest pause between two body chunks. */
        bodyIdle: duration.default(60_000),
        /**
         * Longest a whole exchange a client waits on may take, however the bytes trickle in: a manifest, tag
         * list or blob HEAD with its token fetch, redirects and retries, up to the last byte of the body (error
         * bodies included). A token fetch shared by several requests has this deadline of its own. Blob
         * downloads have `fill.timeout` instead once their body starts. Absent: `headers` + 2 × `bodyIdle` (2.5
         * minutes with the defaults): the answer starts as late as a slow upstream may, and then its body, small
         * for everything this covers, may pause twice as long as a live transfer ever does in total.
         */
        total: duration.optional(),
      })
      .strict()
      .prefault({}),
    /**
     * Which repositories may be pulled through this upstream, as glob patterns (`*` within one path component,
     * `**` across components): a repository must match an `allow` pattern (when any are given) and no `deny`
     * pattern. Anything else is refused with DENIED before any upstream request.
     */
    repositories: z
      .object({ allow: z.array(z.string().min(1)).optional(), deny: z.array(z.string().min(1)).default([]) })
      .strict()
      .prefault({}),
    /** Blob downloads from this upstream at once; more wait in a bounded queue (limits.maxQueuedFills). */
    maxConcurrentFills: z.number().int().positive().default(16),
    /** Cap on concurrent connections to this upstream (per origin it talks to). */
    maxConnections: z.number().int().positive().default(32),
    /**
     * Credentials for the upstream's token service or Basic auth. Each value may come from the file (or
     * `MIRROR_UPSTREAMS__<NAME>__CREDENTIALS__PASSWORD`), or from a file path (Kubernetes secrets), re-read on
     * every token fetch so rotated secrets take effect. Never logged.
     */
    credentials: z
      .object({
        username: z.string().min(1).optional(),
        usernameFile: filePath.optional(),
        password: z.string().optional(),
        passwordFile: filePath.optional(),
      })
      .strict()
      .refine(
        (c) => (c.username === undefined) !== (c.usernameFile === undefined),
        "set exactly one of username, usernameFile",
      )
      .refine(
        (c) => (c.password === undefined) !== (c.passwordFile === undefined),
        "set exactly one of password, passwordFile",
      )
      .optional(),
    /**
     * Hosts besides the upstream's own that its token realm may name (Docker Hub: auth.docker.io, from the
     * preset). A challenge naming any other host is refused: credentials never go anywhere unlisted.
     */
    authHosts: z.array(registryHost).optional(),
    /**
     * Hosts besides the upstream's own and its authHosts that its redirects may lead to: the CDNs and storage
     * buckets registries send blob downloads to (Docker Hub: production.cloudflare.docker.com, ..., from the
     * preset). Patterns: `*` within one DNS label, `**` across labels (`*.cloudfront.net`); without a port only
     * the scheme's default port matches. A redirect anywhere else, or from https to http, is refused.
     */
    redirectHosts: z.array(hostPattern).optional(),
    /**
     * Let redirects reach hosts at loopback, link-local or private addresses (storage on your own network).
     * Off: such a redirect is refused, checked on the address actually connected to. The upstream's own host
     * and its authHosts are exempt: the operator chose those.
     */
    allowPrivateRedirects: z.boolean().default(false),
    /** Retries, with back-off, of a request that failed before any response (connection refused or reset). */
    retries: z.number().int().min(0).max(10).default(2),
    /** Redirects followed per request (blob GETs are redirected to CDNs); Authorization never crosses origins. */
    maxRedirects: z.number().int().min(0).max(20).default(5),
    health: z
      .object({
        /** Consecutive failures (transport errors, 5xx) after which the upstream is treated as down. */
        failureThreshold: z.number().int().positive().default(3),
        /** First down period; doubled after each failed probe, up to `maxBackoff`. */
        initialBackoff: durationIn({ use: "age" }).default(5_000),
        maxBackoff: durationIn({ use: "age" }).default(5 * 60_000),
      })
      .strict()
      .prefault({}),
    /**
     * Other configured upstreams asked, in order, when this one cannot answer: down (unreachable, or marked down
     * by `health`), rate-limiting (429) or timing out. Same repository names; content verified by digest as
     * always; a fallback's own `repositories` rules apply. Checked at start-up (upstream-fallbacks.ts).
     */
    fallbacks: z.array(registryHost).default([]),
    tls: z
      .object({
        /** PEM bundle of CAs to trust for this upstream (private registries), instead of the system's. */
        caFile: filePath.optional(),
        /** Skip certificate verification. Only for registries you control; logged as a warning at start. */
        insecure: z.boolean().default(false),
      })
      .strict()
      .prefault({}),
  })
  .strict();

/**
 * One per-repository cache rule (`rules:`). Field checks here (each reported with the rule's index in its path);
 * checks across fields and against the upstreams are in cache-rules.ts (ruleProblems), on the raw input.
 */
const cacheRuleSchema = z
  .object({
    /** `<upstream>/<repository glob>`: `*` within one path component, `**` across them (repository-pattern.ts). */
    match: z.string().superRefine((m, ctx) => {
      const problem = matchProblem(m);
      if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
    }),
    /** A regular expression over the tag; a rule with `tags` applies only to manifest requests by tag. */
    tags: z
      .string()
      .superRefine((t, ctx) => {
        const problem = tagRegexProblem(t);
        if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem });
      })
      .optional(),
    /** Overrides the upstream's `tagTtl` for matching tags; 0: revalidated on every request. */
    tagTtl: durationIn({ zeroMeansOff: true, use: "age" }).optional(),
    /** A cached matching tag is never revalidated: served from the cache with no upstream request, ever. */
    immutable: z.boolean().default(false),
    /** false: pass through, verified, never stored (blobs and manifests). */
    cache: z.boolean().default(true),
    /** Overrides `storage.maxIdle` for content pulled through matching repositories; 0: never idle-expired. */
    maxIdle: durationIn({ zeroMeansOff: true, use: "age" }).optional(),
  })
  .strict();

/** An IP address, or a CIDR range (`10.0.0.0/8`, `fd00::/8`). */
const addressOrRange = z.string().refine((value) => {
  const [address, prefix, ...rest] = value.split("/");
  const family = isIP(address ?? "");
  if (family === 0 || rest.length > 0) return false;
  if (prefix === undefined) return true;
  return /^\d{1,3}$/.test(prefix) && Number(prefix) <= (family === 4 ? 32 : 128);
}, "expected an IP address or a CIDR range such as 10.0.0.0/8");

/** A platform as the prefetcher selects it: `os/architecture[/variant]`. */
const platformName = z
  .string()
  .regex(/^[a-z0-9]+\/[a-z0-9_]+(?:\/[a-z0-9]+)?$/, "expected os/architecture[/variant], e.g. linux/amd64");

/**
 * A warm-up set (`warmup:`): images pulled into the cache on a schedule, through the same machinery as the admin
 * prefetch. The images are listed inline or read from a file (one reference per line, `#` comments), which is
 * re-read when it changes (a Kubernetes ConfigMap); the references are checked at start-up as `mirror export`
 * reads them (the config loader lists every one that does not parse).
 */
export const warmupSetSchema = z
  .object({
    /** Names the set in the admin API, the CLI, logs and metrics. */
    name: z
      .string()
      .regex(
        /^[a-z0-9][a-z0-9._-]{0,62}$/,
        "expected a lower-case name of letters, digits, '.', '_', '-' (at most 63)",
      ),
    /** How long from the end of one run to the start of the next (runs of one set never overlap). */
    every: durationIn({ min: 1_000 }).default(6 * 60 * 60_000),
    /** How long after start-up the first run begins. */
    firstRunAfter: durationIn({ zeroMeansOff: true }).default(30_000),
    /** The references: `<upstream>/<repository>[:tag|@sha256:...]` (a name without an upstream is the default one's). */
    images: z.array(z.string().min(1)).optional(),
    /** A file of references instead, one per line; blank lines and `#` comments are skipped. */
    file: filePath.optional(),
    /** Which platforms of an index to fetch: `all` (every one) or a list such as [linux/amd64]. */
    platforms: z.union([z.literal("all"), z.array(platformName).min(1)]).default("all"),
    /** Pin what each run fetched (as `mirror import --pin` does): kept through eviction, moved on the next run. */
    pin: z.boolean().default(false),
  })
  .strict()
  .refine((w) => (w.images === undefined) !== (w.file === undefined), "set exactly one of images, file");

export const configSchema = z
  .object({
    /** Address the registry API listens on. */
    listen: listenAddress.default("0.0.0.0:5000"),
    /**
     * Proxies and load balancers whose `X-Forwarded-For` is believed: addresses or CIDR ranges. A request whose
     * connection comes from one of them is logged with the client that header names; from anyone else the
     * header is ignored. Only the access log uses it: the per-client limits count the connection's peer.
     */
    trustedProxies: z.array(addressOrRange).default([]),
    storage: z
      .object({
        /** Cache directory: blobs, manifests, temp files, metadata journal. */
        path: filePath.default("./data"),
        /** Budget for cached content (e.g. 50GiB). Absent: only the filesystem's watermarks apply. */
        maxSize: size.optional(),
        /** Eviction starts above this fraction of the budget (and of the filesystem)... */
        highWatermark: z.number().gt(0).lte(1).default(0.9),
        /** ...and deletes least-recently-used content until usage is under this fraction. */
        lowWatermark: z.number().gt(0).lt(1).default(0.8),
        /** How often watermarks are checked besides after each download (each check reads the filesystem's usage). */
        checkInterval: durationIn({ min: 1_000 }).default(30_000),
        /**
         * Content never evicted: `<upstream>/<repository>` (every tag) or `<upstream>/<repository>:<tag>`, with
         * everything those tags reach (index children, configs, layers). Air-gapped sites pin what they must keep.
         */
        pinned: z.array(z.string()).default([]),
        /**
         * Blobs and manifests in an S3-compatible object store instead of under `path` (which then holds temp
         * files, the journal and the pin lists only). Absent: the filesystem store.
         */
        s3: z
          .object({
            /** The S3 API's origin, e.g. http://rgw:7480; absent = AWS (by region). */
            endpoint: z
              .string()
              .regex(/^https?:\/\/[^/?#]+\/?$/, "expected an http:// or https:// origin, e.g. http://rgw:7480")
              .optional(),
            region: z.string().min(1).default("us-east-1"),
            bucket: z.string().min(3).max(63),
            /** Prefix of every key in the bucket (e.g. "mirror/"), so one bucket can hold several caches. */
            prefix: z.string().default(""),
            /** Path-style addressing (http://host/bucket/key): what Ceph RGW and MinIO usually need. */
            forcePathStyle: z.boolean().default(true),
            /** Credentials inline or from files (Kubernetes secrets); none: the AWS SDK's default chain. */
            accessKeyId: z.string().min(1).optional(),
            accessKeyIdFile: filePath.optional(),
            secretAccessKey: z.string().min(1).optional(),
            secretAccessKeyFile: filePath.optional(),
            /** Blob GETs on a hit answered with a 307 to a presigned GET on the object store. */
            redirect: z.boolean().default(false),
            /**
             * The origin the presigned URLs of redirect mode name, when clients reach the store under another name
             * than the mirror does (e.g. nodes outside the cluster's DNS); absent: `endpoint`.
             */
            redirectEndpoint: z
              .string()
              .regex(/^https?:\/\/[^/?#]+\/?$/, "expected an http:// or https:// origin, e.g. https://s3.example.com")
              .optional(),
            /**
             * The longest a read waits for the store's answer (a HEAD, a GET's headers; not its body): past it the
             * request is served from the upstream instead.
             */
            readTimeout: duration.default(10_000),
          })
          .strict()
          .refine((c) => c.redirectEndpoint === undefined || c.redirect, {
            message: "redirectEndpoint is used only with redirect: true",
          })
          .refine((c) => c.accessKeyId === undefined || c.accessKeyIdFile === undefined, {
            message: "set accessKeyId or accessKeyIdFile, not both",
          })
          .refine((c) => c.secretAccessKey === undefined || c.secretAccessKeyFile === undefined, {
            message: "set secretAccessKey or secretAccessKeyFile, not both",
          })
          .refine(
            (c) =>
              (c.accessKeyId === undefined && c.accessKeyIdFile === undefined) ===
              (c.secretAccessKey === undefined && c.secretAccessKeyFile === undefined),
            { message: "set both an access key id and a secret access key, or neither (the SDK's default chain)" },
          )
          .optional(),
        /**
         * Idle expiry: content (blobs, manifests, and the tag pointers whose manifest goes) not pulled for this
         * long is evicted by the janitor's periodic check, whatever the budget. Pinned content is exempt. Absent:
         * off (content leaves only under disk or budget pressure). A rule's `maxIdle` overrides it.
         */
        maxIdle: durationIn({ use: "age" }).optional(),
      })
      .strict()
      .refine((st) => st.lowWatermark < st.highWatermark, "lowWatermark must be below highWatermark")
      .prefault({}),
    /** Shared metadata store for several replicas; absent means the embedded in-process store. */
    redis: z
      .object({
        url: z.string().regex(/^rediss?:\/\//, "expected redis:// or rediss:// URL"),
        /** Prefix of every key, so several mirrors (or other users) can share one Redis. */
        keyPrefix: z.string().default("mirror:"),
        /** A Redis call slower than this is answered from the embedded store instead (degraded mode). */
        commandTimeout: duration.default(500),
      })
      .strict()
      .optional(),
    /**
     * Several replicas sharing one cache (with `redis`): a cold blob wanted on several replicas at once is
     * downloaded from its upstream by one of them, which holds a lease in Redis naming `advertiseUrl`; the others
     * stream that download from it, authenticated with the shared secret, and verify it as if it came from the
     * upstream. Absent: every replica downloads for itself.
     */
    cluster: z
      .object({
        /** How the other replicas reach this one (e.g. http://<pod IP>:5000): its own listener, seen from them. */
        advertiseUrl: z
          .url({ protocol: /^https?$/, error: "expected an http:// or https:// URL" })
          .refine(
            (u) => !URL.canParse(u) || (new URL(u).pathname === "/" && !new URL(u).search),
            "expected no path or query",
          ),
        /** The secret every replica shares (at least 16 bytes), inline... */
        secret: z.string().min(16, "cluster secret must be at least 16 characters").optional(),
        /** ...or in a file (a Kubernetes Secret), re-read when it changes. */
        secretFile: filePath.optional(),
        /**
         * How long a download's lease outlives its holder: renewed every third of it while the download runs,
         * so a replica that dies mid-download holds up the others' retries this long at most.
         */
        leaseTtl: durationIn({ min: 3_000 }).default(15_000),
      })
      .strict()
      .refine((c) => (c.secret === undefined) !== (c.secretFile === undefined), "set exactly one of secret, secretFile")
      .optional(),
    log: z
      .object({ level: z.enum(["trace", "debug", "info", "warn", "error", "fatal", "silent"]).default("info") })
      .strict()
      .prefault({}),
    limits: z
      .object({
        /** Largest manifest accepted from an upstream (the spec requires at least 4 MiB). */
        manifestMaxBytes: z
          .number()
          .int()
          .min(4 * 1024 * 1024)
          .default(8 * 1024 * 1024),
        /** Most bytes of an upstream's tag list, all its pages together (the mirror reads it whole, then pages it). */
        tagListMaxBytes: z
          .number()
          .int()
          .positive()
          .default(4 * 1024 * 1024),
        /** Request line plus headers a client may send (Node's maxHeaderSize): bounds URL and header sizes. */
        maxHeaderBytes: z
          .number()
          .int()
          .min(4096)
          .max(1024 * 1024)
          .default(16 * 1024),
        /**
         * A client must finish sending its request headers within this time (slowloris). Node compares it with
         * each connection's start at every connection check: an age, no timer of its own.
         */
        headersTimeout: durationIn({ use: "age" }).default(10_000),
        /** A connection with no bytes moving either way for this long is closed. */
        idleTimeout: duration.default(120_000),
        /** Downloads waiting for a free slot (upstreams.<name>.maxConcurrentFills) before 429 TOOMANYREQUESTS. */
        maxQueuedFills: z.number().int().min(0).default(256),
        /** Clients reading one in-progress download at once, before 429 TOOMANYREQUESTS. */
        maxReadersPerFill: z.number().int().positive().default(1024),
        /** Open client connections; a connection beyond this is closed as it arrives (Node's server.maxConnections). */
        maxConnections: z.number().int().positive().default(1024),
        /**
         * Requests in progress at once from one client address (an IPv6 client: its /64), before 429
         * TOOMANYREQUESTS. The probes (/healthz, /readyz) are not counted.
         */
        maxRequestsPerClient: z.number().int().positive().default(64),
      })
      .strict()
      .prefault({}),
    fill: z
      .object({
        /** A blob download that has not finished after this long is abandoned (nothing is committed). */
        timeout: duration.default(60 * 60_000),
      })
      .strict()
      .prefault({}),
    /** Never contact any upstream: serve only what is cached (air-gapped mode); overrides every upstream's `offline`. */
    offline: z.boolean().default(false),
    /** TLS termination: both files PEM; reloaded when they change, so certificates rotate without a restart. */
    tls: z.object({ certFile: filePath, keyFile: filePath }).strict().optional(),
    /**
     * Who may pull what. Without this section every client is anonymous and allowed, unless an upstream has
     * credentials: then `anonymous` must be set explicitly (the mirror would otherwise open private images to
     * anyone who can reach it).
     */
    access: z
      .object({
        /** An htpasswd file with bcrypt entries (`htpasswd -B`): users who log in with Basic auth. */
        htpasswdFile: filePath.optional(),
        /**
         * Static bearer tokens (e.g. for CI): `Authorization: Bearer <token>` acts as user `name`. A token, inline
         * or from its file (one trailing newline dropped), has at least 16 bytes and no whitespace. An inline one
         * is checked here and at start (it stops the start-up); a file is re-read when it changes, and while it
         * holds no usable token that token is disabled (secret-file.ts).
         */
        tokens: z
          .array(
            z
              .object({
                name: z.string().min(1),
                token: z
                  .string()
                  .refine(
                    (t) => Buffer.byteLength(t) >= MIN_SECRET_BYTES,
                    `a token must be at least ${MIN_SECRET_BYTES} bytes`,
                  )
                  .optional(),
                tokenFile: filePath.optional(),
              })
              .strict()
              .refine(
                (t) => (t.token === undefined) !== (t.tokenFile === undefined),
                "set exactly one of token, tokenFile",
              ),
          )
          .default([]),
        /**
         * Failed credential checks (wrong password, unknown user or token) allowed from one client address (an
         * IPv6 client: its /64) per `window`; beyond that, every request of that client that carries credentials
         * is answered 429 TOOMANYREQUESTS (with Retry-After) until the window ends, without checking them.
         */
        failedAuth: z
          .object({ max: z.number().int().positive().default(10), window: duration.default(60_000) })
          .strict()
          .prefault({}),
        /** Whether clients without credentials may pull (subject to the rules). */
        anonymous: z.boolean().optional(),
        /**
         * Ordered rules; the first that matches decides. `subjects`: user names, `anonymous`, or `*` (anyone).
         * `upstreams` and `repositories` (globs) narrow it; absent means any. When no rule matches, logged-in
         * users are allowed and anonymous clients are allowed iff `anonymous` is true.
         */
        rules: z
          .array(
            z
              .object({
                subjects: z.array(z.string().min(1)).min(1),
                upstreams: z.array(z.string()).optional(),
                repositories: z.array(z.string().min(1)).optional(),
                action: z.enum(["allow", "deny"]),
              })
              .strict(),
          )
          .default([]),
      })
      .strict()
      .optional(),
    /** The admin API under /admin/v1/ (purge, refresh). Off unless a token is configured. */
    admin: z
      .object({
        token: z.string().min(16, "admin token must be at least 16 characters").optional(),
        /** File holding the token (Kubernetes secret); re-read when it changes, the admin API closed while it holds no usable token. */
        tokenFile: filePath.optional(),
      })
      .strict()
      .refine((a) => a.token === undefined || a.tokenFile === undefined, "set token or tokenFile, not both")
      .prefault({}),
    /** The web console at /console/ (src/console/): off unless enabled; it signs in with the admin token. */
    console: z
      .object({
        enabled: z.boolean().default(false),
        /** How often the traffic history behind the console's charts is sampled (kept in `<storage.path>/console-history.json`). */
        historyInterval: durationIn({ min: 1_000 }).default(60_000),
      })
      .strict()
      .prefault({}),
    metrics: z
      .object({
        /** Serve `/metrics` at all. */
        enabled: z.boolean().default(true),
        /** A separate address for `/metrics` (e.g. 127.0.0.1:9090) so it is not exposed with the registry port. */
        listen: listenAddress.optional(),
      })
      .strict()
      .prefault({}),
    /** Warm-up sets: images kept in the cache ahead of need (warmupSetSchema); names are unique (warmup-list.ts). */
    warmup: z.array(warmupSetSchema).default([]),
    /** Per-repository cache rules (cache-rules.ts): the first whose `match` and `tags` fit a request decides. */
    rules: z.array(cacheRuleSchema).default([]),
    /** How long a graceful shutdown waits for in-flight fills and responses; 0: it does not wait. */
    shutdownGrace: durationIn({ zeroMeansOff: true }).default(25_000),
    upstreams: z.record(registryHost, upstreamSchema).default({
      "docker.io": {
        url: "https://registry-1.docker.io",
        default: true,
        aliases: ["registry-1.docker.io", "index.docker.io"],
        tagTtl: 5 * 60_000,
        negativeTtl: 30_000,
        revalidateTimeout: 2_000,
        staleWhileRevalidate: false,
        offline: false,
        timeouts: { connect: 10_000, headers: 30_000, bodyIdle: 60_000 },
        repositories: { deny: [] },
        maxConcurrentFills: 16,
        maxConnections: 32,
        allowPrivateRedirects: false,
        retries: 2,
        maxRedirects: 5,
        health: { failureThreshold: 3, initialBackoff: 5_000, maxBackoff: 5 * 60_000 },
        tls: { insecure: false },
        fallbacks: [],
      },
    }),
  })
  .strict();

/**
 * Checks across upstreams. They run on the raw input, independently of the schema, so that they are reported
 * together with field errors (a schema refinement would be skipped while any field is invalid).
 */
export function crossUpstreamProblems(rawUpstreams: unknown): string[] {
  if (rawUpstreams === null || typeof rawUpstreams !== "object" || Array.isArray(rawUpstreams)) return [];
  const problems: string[] = [];
  const entries = Object.entries(rawUpstreams as Record<string, unknown>).map(
    ([name, u]) => [name, (u ?? {}) as { default?: unknown; aliases?: unknown }] as const,
  );
  const defaults = entries.filter(([, u]) => u.default === true).map(([name]) => name);
  if (defaults.length > 1) problems.push(`upstreams: only one upstream may be default, got ${defaults.join(", ")}`);
  const owners = new Map<string, string>();
  for (const [name, u] of entries) {
    const aliases = Array.isArray(u.aliases) ? u.aliases.filter((a): a is string => typeof a === "string") : [];
    for (const alias of [name, ...aliases]) {
      const owner = owners.get(alias.toLowerCase());
      if (owner !== undefined && owner !== name)
        problems.push(`upstreams.${name}.aliases: ${alias} already names upstream ${owner}`);
      owners.set(alias.toLowerCase(), name);
    }
  }
  return problems;
}

/**
 * Per-host defaults, as data: the quirks of well-known registries are configuration, not code branches.
 * Applied to an upstream whose url host is listed, for the keys it does not set itself. `redirectHosts` are
 * where each registry sends blob downloads (and, for registry.k8s.io, every request), as its operators
 * publish them for firewall allowlists.
 */
export const UPSTREAM_PRESETS: ReadonlyArray<{
  hosts: readonly string[];
  defaults: { libraryPrefix: string | null; authHosts: readonly string[]; redirectHosts: readonly string[] };
}> = [
  {
    hosts: ["registry-1.docker.io", "index.docker.io", "docker.io"],
    defaults: {
      libraryPrefix: "library",
      authHosts: ["auth.docker.io"],
      // Cloudflare and CloudFront in front of its storage; R2 and S3 buckets directly for some clients.
      redirectHosts: [
        "production.cloudflare.docker.com",
        "production.cloudfront.docker.com",
        "docker-images-prod.*.r2.cloudflarestorage.com",
        "docker-images-prod*.**.amazonaws.com",
      ],
    },
  },
  {
    hosts: ["ghcr.io"],
    defaults: { libraryPrefix: null, authHosts: [], redirectHosts: ["pkg-containers.githubusercontent.com"] },
  },
  {
    hosts: ["quay.io"],
    defaults: {
      libraryPrefix: null,
      authHosts: [],
      redirectHosts: ["cdn*.quay.io", "quayio-production-s3.**.amazonaws.com"],
    },
  },
  // Red Hat's registries serve their blobs from quay.io's CDN.
  {
    hosts: ["registry.redhat.io", "registry.access.redhat.com"],
    defaults: { libraryPrefix: null, authHosts: [], redirectHosts: ["cdn*.quay.io"] },
  },
  // registry.k8s.io redirects to Artifact Registry regions and to per-region S3 buckets.
  {
    hosts: ["registry.k8s.io"],
    defaults: {
      libraryPrefix: null,
      authHosts: [],
      redirectHosts: ["*.pkg.dev", "prod-registry-k8s-io-*.**.amazonaws.com"],
    },
  },
  {
    hosts: ["gcr.io", "us.gcr.io", "eu.gcr.io", "asia.gcr.io", "k8s.gcr.io", "mirror.gcr.io"],
    defaults: { libraryPrefix: null, authHosts: [], redirectHosts: ["storage.googleapis.com", "*.pkg.dev"] },
  },
];

export type ConfigInput = z.input<typeof configSchema>;
type ParsedConfig = z.output<typeof configSchema>;
type ParsedUpstream = ParsedConfig["upstreams"][string];
export type UpstreamConfig = Omit<ParsedUpstream, "libraryPrefix" | "authHosts" | "redirectHosts" | "timeouts"> & {
  name: string;
  timeouts: ParsedUpstream["timeouts"] & { total: number };
  libraryPrefix: string | null;
  authHosts: readonly string[];
  redirectHosts: readonly string[];
};
export type Config = Omit<ParsedConfig, "upstreams"> & { upstreams: Readonly<Record<string, UpstreamConfig>> };
