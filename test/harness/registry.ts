// The upstream registry for integration tests: Debian's `docker-registry` (CNCF distribution 2.8) on a
// free loopback port with filesystem storage in a temp dir. Its JSON log is parsed so tests can count
// the requests that actually reached the upstream ("exactly one GET of this blob"). A host process, or with
// TEST_SERVICES=containers a container of the same Debian package (services.ts), its log read the same way.
//
// It can require authentication, as real upstreams do: `auth: { token }` (the Docker token flow, with a
// harness token server as the realm) or `auth: { htpasswd }` (Basic). RegistryAuthenticator and
// registryFetch are the client side of both, for seeding and for tests that talk to the registry directly.
import bcrypt from "bcryptjs";
import { mkdtemp, rm, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { freePort, waitFor } from "./processes.ts";
import { startService, type ServiceProcess } from "./services.ts";
import type { TokenServer } from "./token-server.ts";

/** A user name and password, as sent with Basic auth (to the registry itself, or to a token realm). */
export interface Credentials {
  username: string;
  password: string;
}

/**
 * How the registry authenticates clients. `token`: distribution's `auth: token`, verifying JWTs from that
 * token server (realm, service, issuer and root certificate are taken from it). `htpasswd`: user →
 * password, written as the bcrypt htpasswd file distribution requires (it rejects other hash types).
 */
export type RegistryAuth = { token: TokenServer } | { htpasswd: Record<string, string> };

export interface RegistryOptions {
  rootDir?: string;
  /** Require authentication; an open registry (every request allowed) when absent. */
  auth?: RegistryAuth;
}

/** What a request was for, from its path. */
export type RequestKind = "base" | "manifests" | "blobs" | "uploads" | "tags" | "catalog" | "other";

/** One completed request, as distribution logged it ("response completed" / "response completed with error"). */
export interface UpstreamRequest {
  method: string;
  /** The request URI as sent, query string included (e.g. "/v2/library/x/blobs/sha256:..."). */
  path: string;
  status: number;
  kind: RequestKind;
  /** Repository name from the path ("library/x"), when the path names one. */
  repo?: string;
  /** Response body bytes the registry wrote: less than the blob size when the client disconnected early. */
  written: number;
  /**
   * When the request arrived, in epoch milliseconds (fractional), computed as log time minus the logged
   * duration. Log lines come out in COMPLETION order, and not even reliably that (see requests()); this
   * gives the order in which requests were made.
   */
  startedAt: number;
  /**
   * Why auth refused the request (then status is 401), as distribution logged it: "authorization token
   * required", "insufficient scope", "invalid token", or for htpasswd `basic authentication challenge for
   * realm "...": invalid authorization credential` (no or unreadable credentials) / `...: authentication
   * failure` (wrong user or password).
   */
  authError?: string;
}

export interface RequestFilter {
  method?: string;
  kind?: RequestKind;
  pathIncludes?: string;
  status?: number;
  repo?: string;
}

export interface Registry {
  readonly name: string;
  /** http://127.0.0.1:PORT */
  readonly url: string;
  /** 127.0.0.1:PORT */
  readonly host: string;
  readonly port: number;
  /** Filesystem storage root; survives stop()/start(). */
  readonly rootDir: string;
  /** Stops the registry process; storage and the request log are kept. */
  stop(): Promise<void>;
  /** Starts it again on the same port with the same storage; a no-op if it is running. */
  start(): Promise<void>;
  /** stop() and delete the temp dirs this harness created (not a caller-supplied rootDir). */
  dispose(): Promise<void>;
  /**
   * Requests completed so far (since the last clearRequests), in the order they ARRIVED (by startedAt).
   * distribution serves blobs with sendfile and logs afterwards, so a client can finish a blob GET and
   * send its next request before the blob's log line exists: raw log order would misplace it.
   */
  requests(): UpstreamRequest[];
  clearRequests(): void;
  count(filter: RequestFilter): number;
  /**
   * Waits until the log has caught up with the requests whose responses clients have already received;
   * call it before count()/requests() that must include a request that just finished. distribution logs
   * a request only after its response went out, so this sends a marker request, waits for the marker's
   * log line, then for the log to stay quiet briefly (a blob's line can trail a later request's line).
   * Requires the registry to be running.
   */
  sync(): Promise<void>;
  /** Recent registry output, for error messages. */
  output(): string;
  /** "none" for an open registry. */
  readonly authMode: "none" | "token" | "htpasswd";
  /**
   * An Authorization header value for the harness's own requests (readiness, sync, a blob host fetching
   * bytes): full access to `repo` (and none to any other) with a token minted directly, so the token server
   * records nothing; Basic with the first htpasswd user; undefined for an open registry.
   */
  harnessAuthorization(repo?: string): string | undefined;
}

const STARTUP_TIMEOUT_MS = 20_000;
const SYNC_TIMEOUT_MS = 5_000;
/** Query marker of the harness's own sync requests, which are kept out of requests(). */
const SYNC_MARKER = "harness-sync=";
/** sync(): how long the log must stay quiet after the marker, and the most it waits for that. */
const SYNC_QUIET_MS = 50;
const SYNC_QUIET_MAX_MS = 1_000;

export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  if (opts.auth !== undefined && "htpasswd" in opts.auth && Object.keys(opts.auth.htpasswd).length === 0) {
    throw new Error("startRegistry: auth.htpasswd needs at least one user");
  }
  const workDir = await mkdtemp(join(tmpdir(), "harness-registry-"));
  const rootDir = opts.rootDir ?? join(workDir, "storage");
  await mkdir(rootDir, { recursive: true });
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const url = `http://${host}`;
  const configPath = join(workDir, "config.yml");
  const auth = opts.auth;
  let authConfig: string[] = [];
  let harnessAuthorization: (repo?: string) => string | undefined = () => undefined;
  if (auth !== undefined && "token" in auth) {
    const token = auth.token;
    authConfig = tokenAuthConfig(token);
    harnessAuthorization = (repo) =>
      `Bearer ${token.mintToken({ subject: "harness", access: repo === undefined ? [] : [{ type: "repository", name: repo, actions: ["pull", "push", "delete"] }] })}`;
  } else if (auth !== undefined) {
    const [first = ["", ""]] = Object.entries(auth.htpasswd);
    const htpasswdPath = join(workDir, "htpasswd");
    await writeFile(htpasswdPath, htpasswdFile(auth.htpasswd));
    authConfig = htpasswdAuthConfig(htpasswdPath);
    harnessAuthorization = () => basicAuthorization({ username: first[0], password: first[1] });
  }
  await writeFile(configPath, registryConfig(host, rootDir, authConfig));

  let log: UpstreamRequest[] = [];
  let lastLineAt = 0;
  const syncSeen = new Set<string>();
  let syncCounter = 0;
  let proc: ServiceProcess | undefined;
  // Output of earlier runs, so an error after a restart still shows why the first run ended.
  let previousOutput = "";

  const onLine = (line: string): void => {
    const entry = parseLogLine(line);
    if (entry === undefined) return;
    lastLineAt = Date.now();
    const syncAt = entry.path.indexOf(SYNC_MARKER);
    if (syncAt !== -1) {
      syncSeen.add(entry.path.slice(syncAt + SYNC_MARKER.length));
      return;
    }
    // Insert by arrival time; lines almost always come in order, so this scans from the end briefly.
    let at = log.length;
    while (at > 0 && (log[at - 1]?.startedAt ?? 0) > entry.startedAt) at--;
    log.splice(at, 0, entry);
  };

  const start = async (): Promise<void> => {
    if (proc?.running()) return;
    if (proc !== undefined) previousOutput = (previousOutput + proc.output()).slice(-64 * 1024);
    // A killed container is still there (exited): remove it. A no-op for an exited host process.
    await proc?.stop();
    // distribution reads EVERY REGISTRY_* variable as configuration (REGISTRY_AUTH_FILE meant for skopeo
    // breaks it), so it gets a clean environment rather than ours.
    const started = await startService({
      image: "registry",
      cmd: "docker-registry",
      args: ["serve", configPath],
      // What it reads and writes: its config (and htpasswd), its storage, the token server's certificate.
      paths: [
        workDir,
        rootDir,
        ...(auth !== undefined && "token" in auth ? [dirname(auth.token.rootCertBundlePath)] : []),
      ],
      readyLog: /listening on /,
      // distribution 2.8 has no SIGTERM handler: as a container's PID 1 it would ignore `docker stop`.
      init: true,
      name: `docker-registry ${host}`,
      env: { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME: workDir },
      cwd: workDir,
      onLine,
    });
    proc = started;
    try {
      // With auth this also proves the auth configuration works: the harness's own credentials get in.
      await waitFor(
        async () =>
          (await fetch(`${url}/v2/`, { headers: authHeaders(), signal: AbortSignal.timeout(2_000) })).status === 200,
        {
          timeoutMs: STARTUP_TIMEOUT_MS,
          what: `docker-registry to answer GET ${url}/v2/ with 200${auth === undefined ? "" : " to the harness's credentials"}`,
          whileRunning: started,
        },
      );
    } catch (err) {
      await started.stop();
      throw err;
    }
  };

  const stop = async (): Promise<void> => {
    await proc?.stop();
  };

  const requests = (): UpstreamRequest[] => [...log];
  const authHeaders = (): Record<string, string> => {
    const value = harnessAuthorization();
    return value === undefined ? {} : { authorization: value };
  };

  const registry: Registry = {
    name: `docker-registry ${host}`,
    url,
    host,
    port,
    rootDir,
    start,
    stop,
    async dispose() {
      await stop();
      await rm(workDir, { recursive: true, force: true });
    },
    requests,
    clearRequests: () => {
      log = [];
    },
    count: (filter) => requests().filter((r) => matches(r, filter)).length,
    async sync() {
      const id = `${process.pid}-${++syncCounter}`;
      const res = await fetch(`${url}/v2/?${SYNC_MARKER}${id}`, {
        headers: authHeaders(),
        signal: AbortSignal.timeout(SYNC_TIMEOUT_MS),
      });
      await res.arrayBuffer();
      await waitFor(async () => syncSeen.has(id), {
        timeoutMs: SYNC_TIMEOUT_MS,
        what: `registry log line of sync request ${id}`,
        intervalMs: 10,
      });
      syncSeen.delete(id);
      const quietUntil = Date.now() + SYNC_QUIET_MAX_MS;
      while (Date.now() - lastLineAt < SYNC_QUIET_MS && Date.now() < quietUntil) {
        await new Promise((resolve) => setTimeout(resolve, SYNC_QUIET_MS / 5));
      }
    },
    output: () => previousOutput + (proc?.output() ?? ""),
    authMode: auth === undefined ? "none" : "token" in auth ? "token" : "htpasswd",
    harnessAuthorization,
  };

  try {
    await start();
  } catch (err) {
    await rm(workDir, { recursive: true, force: true });
    throw err;
  }
  return registry;
}

/**
 * distribution 2.8 with `formatter: json` prints one JSON object per line; each finished request is one
 * line whose msg is "response completed" (or "response completed with error" for 4xx/5xx) carrying
 * http.request.method, http.request.uri and http.response.status. The separate Apache-style access log
 * is switched off so that each request appears exactly once.
 */
function registryConfig(host: string, rootDir: string, authConfig: string[]): string {
  return [
    "version: 0.1",
    "log:",
    "  level: info",
    "  formatter: json",
    "  accesslog:",
    "    disabled: true",
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${JSON.stringify(rootDir)}`,
    "  delete:",
    "    enabled: true",
    // No descriptor cache: a test that deletes or damages a blob on disk must see the registry notice.
    "  cache:",
    "    blobdescriptor: ''",
    "http:",
    `  addr: ${host}`,
    // A fixed secret keeps upload URLs valid across stop()/start().
    "  secret: harness-registry-secret",
    ...authConfig,
    "",
  ].join("\n");
}

/** distribution's `auth: token` section: it trusts tokens whose x5c chain (or kid) leads to the bundle. */
function tokenAuthConfig(token: TokenServer): string[] {
  return [
    "auth:",
    "  token:",
    `    realm: ${JSON.stringify(token.realm)}`,
    `    service: ${JSON.stringify(token.service)}`,
    `    issuer: ${JSON.stringify(token.issuer)}`,
    `    rootcertbundle: ${JSON.stringify(token.rootCertBundlePath)}`,
  ];
}

/** The realm distribution names in its `Basic realm="..."` challenge in htpasswd mode. */
export const HTPASSWD_REALM = "harness-registry";

function htpasswdAuthConfig(path: string): string[] {
  return ["auth:", "  htpasswd:", `    realm: ${HTPASSWD_REALM}`, `    path: ${JSON.stringify(path)}`];
}

/**
 * `user:bcrypt-hash` lines. Cost 4, the minimum, because distribution checks the hash on EVERY request
 * (no session) and the default cost 10 would add tens of milliseconds to each. bcryptjs writes `$2b$`
 * hashes, which Go's bcrypt accepts like Apache's `$2y$`.
 */
function htpasswdFile(users: Record<string, string>): string {
  return Object.entries(users)
    .map(([user, password]) => {
      if (user.includes(":") || user.includes("\n"))
        throw new Error(`htpasswd: invalid user name ${JSON.stringify(user)}`);
      return `${user}:${bcrypt.hashSync(password, 4)}\n`;
    })
    .join("");
}

/** `Basic base64(user:password)`. */
export function basicAuthorization(credentials: Credentials): string {
  return `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`, "utf8").toString("base64")}`;
}

/** One parsed `WWW-Authenticate` challenge: scheme lower-cased, parameter names lower-cased. */
export interface AuthChallenge {
  scheme: string;
  params: Record<string, string>;
}

/**
 * Parses the first challenge of a WWW-Authenticate value: `Bearer realm="...",service="...",scope="a:b:pull,push"`.
 * Quoted values may hold commas (scopes do), so this reads quoted-strings properly rather than splitting.
 */
export function parseChallenge(header: string | null | undefined): AuthChallenge | undefined {
  if (header === null || header === undefined) return undefined;
  const m = /^\s*([A-Za-z][\w-]*)\s*(.*)$/s.exec(header);
  if (m === null) return undefined;
  const [, scheme = "", rest = ""] = m;
  const params: Record<string, string> = {};
  const param = /\s*([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?/gy;
  for (let p = param.exec(rest); p !== null && p[0] !== ""; p = param.exec(rest)) {
    const [, name = "", quoted, bare] = p;
    params[name.toLowerCase()] = quoted !== undefined ? quoted.replace(/\\(.)/g, "$1") : (bare ?? "");
  }
  return { scheme: scheme.toLowerCase(), params };
}

/**
 * The client side of registry auth, the way docker and containerd do it: send the request; on a 401, read
 * the challenge and retry once with Basic credentials (Basic challenge) or with a token fetched from the
 * realm for the challenge's service and scope (Bearer challenge; anonymously when it has no credentials).
 * Keeps the Authorization it got per registry origin and sends it up front from then on, so a push
 * authenticates once, not per blob. Use one per logical operation; it is not meant to outlive a test.
 *
 * When the credentials do not get in, it hands back the registry's own 401 (unread), whatever the realm
 * said. Bodies must be re-sendable (Buffer or string), because a challenged request is sent twice.
 */
export class RegistryAuthenticator {
  private readonly credentials: Credentials | undefined;
  private readonly cached = new Map<string, string>();

  constructor(credentials?: Credentials) {
    this.credentials = credentials;
  }

  async fetch(url: string, init: RequestInit = {}): Promise<Response> {
    const origin = new URL(url).origin;
    const known = this.cached.get(origin);
    const first = await fetch(url, withAuthorization(init, known));
    if (first.status !== 401) return first;
    const authorization = await this.answer(parseChallenge(first.headers.get("www-authenticate")));
    if (authorization === undefined || authorization === known) return first;
    await first.body?.cancel();
    this.cached.set(origin, authorization);
    return fetch(url, withAuthorization(init, authorization));
  }

  /** The Authorization header value that answers a challenge, or undefined when there is none to give. */
  private async answer(challenge: AuthChallenge | undefined): Promise<string | undefined> {
    if (challenge?.scheme === "basic")
      return this.credentials === undefined ? undefined : basicAuthorization(this.credentials);
    if (challenge?.scheme !== "bearer") return undefined;
    const realm = challenge.params["realm"];
    if (realm === undefined) return undefined;
    const tokenUrl = new URL(realm);
    // Test traffic stays on loopback, whatever a challenge says.
    if (tokenUrl.hostname !== "127.0.0.1")
      throw new Error(`refusing to fetch a token from a non-loopback realm: ${realm}`);
    const { service, scope } = challenge.params;
    if (service !== undefined) tokenUrl.searchParams.set("service", service);
    if (scope !== undefined) for (const s of scope.split(" ")) tokenUrl.searchParams.append("scope", s);
    const res = await fetch(tokenUrl, {
      headers: this.credentials === undefined ? {} : { authorization: basicAuthorization(this.credentials) },
      signal: AbortSignal.timeout(10_000),
    });
    if (res.status !== 200) {
      await res.body?.cancel();
      return undefined;
    }
    const body = (await res.json()) as { token?: unknown; access_token?: unknown };
    const token = typeof body.token === "string" ? body.token : body.access_token;
    return typeof token === "string" ? `Bearer ${token}` : undefined;
  }
}

function withAuthorization(init: RequestInit, authorization: string | undefined): RequestInit {
  if (authorization === undefined) return init;
  const headers = new Headers(init.headers);
  headers.set("authorization", authorization);
  return { ...init, headers };
}

/**
 * One request to a registry (its URL plus `path`, e.g. "/v2/x/manifests/v1"), answering a 401 challenge
 * as docker would: with `auth` when given, else anonymously (which a token realm with anonymous pulls
 * allows). A registry that still says 401 comes back as that 401 response.
 */
export async function registryFetch(
  target: Registry | string,
  path: string,
  opts: RequestInit & { auth?: Credentials } = {},
): Promise<Response> {
  const { auth, ...init } = opts;
  const base = (typeof target === "string" ? target : target.url).replace(/\/+$/, "");
  return new RegistryAuthenticator(auth).fetch(`${base}${path}`, init);
}

/** distribution's log message for a request its access controller refused, followed by the reason. */
const AUTH_ERROR_PREFIX = "error authorizing context: ";

/**
 * Parses one log line into a request record, or undefined for anything that is not a finished request.
 * Requests refused by auth count as finished requests with status 401 (see AUTH_ERROR_PREFIX).
 */
export function parseLogLine(line: string): UpstreamRequest | undefined {
  if (!line.startsWith("{")) return undefined;
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const msg = entry["msg"];
  const method = entry["http.request.method"];
  const uri = entry["http.request.uri"];
  const status = entry["http.response.status"];
  if (typeof msg !== "string" || typeof method !== "string" || typeof uri !== "string") return undefined;
  const time = entry["time"];
  if (msg.startsWith(AUTH_ERROR_PREFIX)) {
    // A request refused by auth gets no "response completed" line, only this warning, logged when the
    // request arrived. Its answer is a 401 challenge (distribution answers 400 only for a broken auth
    // backend, which this harness does not configure).
    const at = typeof time === "string" ? parseTime(time) : Number.NaN;
    return {
      method,
      path: uri,
      status: 401,
      written: 0,
      startedAt: Number.isFinite(at) ? at : Date.now(),
      authError: msg.slice(AUTH_ERROR_PREFIX.length),
      ...classify(uri),
    };
  }
  if (!msg.startsWith("response completed") || typeof status !== "number") return undefined;
  const written = entry["http.response.written"];
  const duration = entry["http.response.duration"];
  const finishedAt = typeof time === "string" ? parseTime(time) : Number.NaN;
  const tookMs = typeof duration === "string" ? parseGoDuration(duration) : 0;
  return {
    method,
    path: uri,
    status,
    written: typeof written === "number" ? written : 0,
    startedAt: Number.isFinite(finishedAt) ? finishedAt - tookMs : Date.now(),
    ...classify(uri),
  };
}

/** RFC 3339 with nanoseconds ("2026-11-23T18:43:48.876988511Z") to epoch ms, keeping the fraction. */
function parseTime(time: string): number {
  const m = /^(.*T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.exec(time);
  if (m === null) return Date.parse(time);
  const [, seconds = "", fraction = "", zone = ""] = m;
  return Date.parse(`${seconds}${zone}`) + (fraction === "" ? 0 : Number(fraction) * 1000);
}

/** Go's time.Duration.String() format ("4.956718ms", "1.005795752s", "850µs", "1m2.5s") to milliseconds. */
export function parseGoDuration(text: string): number {
  const unitMs: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, μs: 1e-3, ms: 1, s: 1e3, m: 60e3, h: 3600e3 };
  let total = 0;
  for (const [, value = "0", unit = ""] of text.matchAll(/([\d.]+)(ns|us|µs|μs|ms|s|m|h)/g)) {
    total += Number(value) * (unitMs[unit] ?? 0);
  }
  return total;
}

/** Works out kind and repository from a /v2/ path. */
function classify(uri: string): { kind: RequestKind; repo?: string } {
  const path = uri.split("?", 1)[0] ?? uri;
  if (path === "/v2/" || path === "/v2") return { kind: "base" };
  if (path === "/v2/_catalog") return { kind: "catalog" };
  const m = /^\/v2\/(.+?)\/(manifests|blobs|tags)\/(.*)$/.exec(path);
  if (m === null) return { kind: "other" };
  const [, repo = "", section = "", rest = ""] = m;
  if (section === "blobs" && rest.startsWith("uploads")) return { kind: "uploads", repo };
  return { kind: section as "manifests" | "blobs" | "tags", repo };
}

function matches(r: UpstreamRequest, f: RequestFilter): boolean {
  return (
    (f.method === undefined || r.method === f.method.toUpperCase()) &&
    (f.kind === undefined || r.kind === f.kind) &&
    (f.pathIncludes === undefined || r.path.includes(f.pathIncludes)) &&
    (f.status === undefined || r.status === f.status) &&
    (f.repo === undefined || r.repo === f.repo)
  );
}
