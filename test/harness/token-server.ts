// A Docker-Hub-style token server on loopback (the "Docker token flow"): a registry started with
// `auth: { token }` answers 401 with `WWW-Authenticate: Bearer realm=...,service=...,scope=...`, the client
// GETs `<realm>?service=...&scope=...` here (anonymously or with Basic credentials), and presents the JWT it
// gets back as `Authorization: Bearer <token>`.
//
// Tokens are real: RS256 JWTs signed with a fresh key whose self-signed certificate is the registry's
// rootcertbundle, so distribution 2.8 verifies them exactly as it verifies tokens from auth.docker.io.
// What distribution 2.8.2 checks (found by running it; see the self-test):
//   - header `alg` RS256 and a signing key it trusts: `x5c` (base64 DER chain that verifies against the
//     bundle) or `kid` = the libtrust key ID of a key in the bundle;
//   - `iss` equal to the configured issuer, `aud` equal to the service (a JSON string: 2.8 cannot read an
//     array there and rejects such a token);
//   - `exp` and `nbf` with 60 s of leeway each way: a token is accepted until exp + 60 s, and from nbf - 60 s;
//   - `access` granting the scope the route needs (pull for GET/HEAD, pull+push for uploads and manifest PUT).
// `sub`, `iat` and `jti` are carried but not checked.
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  randomUUID,
  sign,
  X509Certificate,
  type KeyObject,
} from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runCommand } from "./processes.ts";

/** One grant in a token's `access` claim, as distribution reads it. */
export interface TokenAccess {
  type: string;
  name: string;
  actions: string[];
}

/** How the client identified itself to the token endpoint. */
export type TokenAuthorization = "none" | "basic-ok" | "basic-bad" | "other";

/** One request to the token endpoint, as answered. */
export interface TokenRequest {
  authorization: TokenAuthorization;
  /** The Basic user name, when one was sent (right password or not). */
  user?: string;
  /** The requested scope(s); several `scope` parameters are joined with a space, as in OAuth2. */
  scope?: string;
  service?: string;
  status: number;
  /** What the issued token grants (only for status 200). */
  granted?: TokenAccess[];
}

export type TokenRequestFilter = Partial<Pick<TokenRequest, "authorization" | "user" | "scope" | "service" | "status">>;

/**
 * A fault for the token answers issued from now on (refusals are not affected): the token is granted and
 * recorded as usual, but its body
 *   - stallBody: stops after `afterBytes` bytes, the connection left open;
 *   - resetBody: stops after `afterBytes` bytes, and the connection is reset;
 *   - trickle: is never sent; a space (JSON whitespace) goes out every `intervalMs` instead, forever.
 */
export type TokenFault =
  | { kind: "stallBody"; afterBytes: number }
  | { kind: "resetBody"; afterBytes: number }
  | { kind: "trickle"; intervalMs: number };

/** How a token names its signing key in the JWT header. */
export type KeyReference = "x5c" | "kid";

export interface TokenServerOptions {
  /** username → password, accepted via Basic auth. Default: nobody. */
  users?: Record<string, string>;
  /** Users (named in `users`) who get push (and delete) besides pull, and `registry:catalog:*`. */
  admins?: string[];
  /** Lifetime of issued tokens; default 300 s. */
  expiresInSeconds?: number;
  /** Issue pull tokens to clients that send no credentials (as Docker Hub does for public images); default true. */
  anonymous?: boolean;
  /** The `service` the registry names in its challenge and the tokens' audience; default "harness-registry". */
  service?: string;
  /** The tokens' `iss`; default "harness-token-issuer". */
  issuer?: string;
  /** How tokens name their key; default "x5c" (what auth.docker.io does). Both work with distribution 2.8. */
  keyReference?: KeyReference;
}

/** Claims for mintToken(); anything not given gets the same default an HTTP-issued token would. */
export interface MintOptions {
  subject?: string;
  access?: TokenAccess[];
  /** exp = now + this; may be negative for an already expired token. Default: the server's current expiry. */
  expiresInSeconds?: number;
  /** nbf = now + this; default 0. */
  notBeforeInSeconds?: number;
  /** Default: the service. An array is legal JWT but distribution 2.8 rejects it. */
  audience?: string | string[];
  issuer?: string;
  keyReference?: KeyReference;
}

export interface TokenServer {
  readonly name: string;
  /** http://127.0.0.1:PORT */
  readonly url: string;
  /** url + "/token": the registry's `realm`. */
  readonly realm: string;
  readonly service: string;
  readonly issuer: string;
  /** PEM certificate of the signing key: the registry's `rootcertbundle`. */
  readonly rootCertBundlePath: string;
  /** Every token request so far (since clearRequests), oldest first. */
  requests(): TokenRequest[];
  clearRequests(): void;
  /** How many requests match every field given (all requests without a filter). */
  count(filter?: TokenRequestFilter): number;
  /**
   * Lifetime of tokens issued from now on. Negative values issue tokens that are already expired; remember
   * that distribution accepts a token until 60 s after its exp, so only -61 or less is rejected at once.
   */
  setExpiresIn(seconds: number): void;
  /** Sets the fault for token answers from now on; null answers normally. */
  setFault(fault: TokenFault | null): void;
  /**
   * Signs a token directly, without an HTTP request and without recording one: for the harness's own
   * requests (readiness, sync) and for tests that need odd claims (expired, wrong audience, future nbf).
   */
  mintToken(opts?: MintOptions): string;
  stop(): Promise<void>;
  /** stop() and delete the key and certificate. */
  dispose(): Promise<void>;
}

const DEFAULT_SERVICE = "harness-registry";
const DEFAULT_ISSUER = "harness-token-issuer";
const DEFAULT_EXPIRES_IN_SECONDS = 300;
/** Realm of the token endpoint's own Basic challenge (when anonymous tokens are off or credentials are wrong). */
const BASIC_REALM = "harness-token-server";

export async function startTokenServer(opts: TokenServerOptions = {}): Promise<TokenServer> {
  const users = { ...(opts.users ?? {}) };
  const admins = new Set(opts.admins ?? []);
  for (const admin of admins) {
    if (!(admin in users)) throw new Error(`token server: admin "${admin}" is not among the users`);
  }
  const anonymous = opts.anonymous ?? true;
  const service = opts.service ?? DEFAULT_SERVICE;
  const issuer = opts.issuer ?? DEFAULT_ISSUER;
  const defaultKeyReference = opts.keyReference ?? "x5c";
  let expiresIn = opts.expiresInSeconds ?? DEFAULT_EXPIRES_IN_SECONDS;
  let fault: TokenFault | null = null;

  const dir = await mkdtemp(join(tmpdir(), "harness-token-"));
  let keys: SigningKey;
  try {
    keys = await createSigningKey(dir);
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }

  const log: TokenRequest[] = [];

  const mintToken = (mint: MintOptions = {}): string => {
    const now = Math.floor(Date.now() / 1000);
    const keyReference = mint.keyReference ?? defaultKeyReference;
    const header =
      keyReference === "x5c"
        ? { typ: "JWT", alg: "RS256", x5c: [keys.certDerBase64] }
        : { typ: "JWT", alg: "RS256", kid: keys.keyId };
    const claims = {
      iss: mint.issuer ?? issuer,
      sub: mint.subject ?? "",
      aud: mint.audience ?? service,
      exp: now + (mint.expiresInSeconds ?? expiresIn),
      nbf: now + (mint.notBeforeInSeconds ?? 0),
      iat: now,
      jti: randomUUID(),
      access: mint.access ?? [],
    };
    const signingInput = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
    const signature = sign("sha256", Buffer.from(signingInput), keys.privateKey);
    return `${signingInput}.${base64url(signature)}`;
  };

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    // Nothing here reads a request body; drain it so keep-alive connections stay usable.
    req.resume();
    const url = new URL(req.url ?? "/", "http://token-server");
    if (url.pathname !== "/token") {
      sendJson(res, 404, { errors: [{ code: "NOT_FOUND", message: `no such endpoint: ${url.pathname}` }] });
      return;
    }
    if (req.method !== "GET") {
      // The OAuth2 POST form is optional in the token spec; containerd falls back to GET on 405.
      sendJson(res, 405, { errors: [{ code: "UNSUPPORTED", message: "only GET is supported" }] }, { allow: "GET" });
      return;
    }
    const scopes = url.searchParams.getAll("scope");
    const record: TokenRequest = { authorization: "none", status: 0 };
    const scope = scopes.join(" ");
    if (scope !== "") record.scope = scope;
    const requestedService = url.searchParams.get("service");
    if (requestedService !== null) record.service = requestedService;
    log.push(record);

    const who = identify(req.headers.authorization, users);
    record.authorization = who.authorization;
    if (who.user !== undefined) record.user = who.user;
    if (
      who.authorization === "basic-bad" ||
      who.authorization === "other" ||
      (who.authorization === "none" && !anonymous)
    ) {
      record.status = 401;
      const message = who.authorization === "none" ? "authentication required" : "incorrect username or password";
      sendJson(
        res,
        401,
        { errors: [{ code: "UNAUTHORIZED", message }] },
        { "www-authenticate": `Basic realm="${BASIC_REALM}"` },
      );
      return;
    }
    if (requestedService !== null && requestedService !== service) {
      record.status = 400;
      sendJson(res, 400, {
        errors: [
          { code: "DENIED", message: `unknown service ${requestedService}; this server issues tokens for ${service}` },
        ],
      });
      return;
    }

    const granted = grant(scopes, who.user !== undefined && admins.has(who.user));
    const issuedAt = new Date();
    const token = mintToken({ subject: who.user ?? "", access: granted });
    record.status = 200;
    record.granted = granted;
    // Both names: Docker's clients read `token`, OAuth2 clients `access_token`.
    const answer = { token, access_token: token, expires_in: expiresIn, issued_at: issuedAt.toISOString() };
    if (fault === null) sendJson(res, 200, answer);
    else sendFaulty(req, res, answer, fault);
  };

  const server = createServer(handle);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: "127.0.0.1", port: 0 }, () => resolve());
  }).catch(async (err: unknown) => {
    await rm(dir, { recursive: true, force: true });
    throw err;
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
    return stopping;
  };

  return {
    name: `token server ${url}`,
    url,
    realm: `${url}/token`,
    service,
    issuer,
    rootCertBundlePath: keys.certPath,
    requests: () => log.map((r) => ({ ...r })),
    clearRequests: () => {
      log.length = 0;
    },
    count: (filter = {}) =>
      log.filter((r) =>
        Object.entries(filter).every(([k, v]) => v === undefined || r[k as keyof TokenRequestFilter] === v),
      ).length,
    setExpiresIn: (seconds) => {
      expiresIn = seconds;
    },
    setFault: (f) => {
      fault = f;
    },
    mintToken,
    stop,
    async dispose() {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

interface SigningKey {
  privateKey: KeyObject;
  certPath: string;
  /** The certificate as one x5c entry: standard base64 (not base64url) of its DER bytes. */
  certDerBase64: string;
  /** libtrust key ID of the public key: what distribution looks a JWT `kid` up by. */
  keyId: string;
}

/**
 * A 2048-bit RSA key and a self-signed certificate for it, made with the openssl CLI. The certificate is
 * both the leaf in each token's x5c and the registry's only trusted root; Go's verifier accepts a leaf that
 * is itself in the root pool. Valid from now, so backdated clocks would need a backdated certificate.
 */
async function createSigningKey(dir: string): Promise<SigningKey> {
  const keyPath = join(dir, "signing-key.pem");
  const certPath = join(dir, "root-cert-bundle.pem");
  const result = await runCommand(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-sha256",
      "-days",
      "7",
      "-subj",
      "/CN=harness token issuer",
      "-keyout",
      keyPath,
      "-out",
      certPath,
    ],
    { timeoutMs: 30_000 },
  );
  if (result.code !== 0) throw new Error(`openssl req failed (${result.code}): ${result.stderr}`);
  const privateKey = createPrivateKey(await readFile(keyPath));
  const cert = new X509Certificate(await readFile(certPath));
  return {
    privateKey,
    certPath,
    certDerBase64: cert.raw.toString("base64"),
    keyId: libtrustKeyId(createPublicKey(privateKey)),
  };
}

/**
 * docker/libtrust's key ID: SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits, base32 without
 * padding, in 12 colon-separated groups of 4 ("ABCD:EFGH:..."). distribution 2.8 indexes the keys of its
 * rootcertbundle by this ID to resolve a token's `kid`.
 */
export function libtrustKeyId(publicKey: KeyObject): string {
  const der = publicKey.export({ type: "spki", format: "der" });
  const digest = createHash("sha256").update(der).digest().subarray(0, 30);
  return (base32(digest).match(/.{1,4}/g) ?? []).join(":");
}

/** RFC 4648 base32, no padding. */
function base32(bytes: Buffer): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0;
  let value = 0;
  let out = "";
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  if (bits > 0) out += alphabet[(value << (5 - bits)) & 31];
  return out;
}

function base64url(data: string | Buffer): string {
  return Buffer.from(data).toString("base64url");
}

/** Who sent the request: nobody, a user with the right password, or wrong/malformed credentials. */
function identify(
  header: string | undefined,
  users: Record<string, string>,
): { authorization: TokenAuthorization; user?: string } {
  if (header === undefined || header.trim() === "") return { authorization: "none" };
  const m = /^basic\s+(\S+)\s*$/i.exec(header);
  if (m === null) return { authorization: "other" };
  const decoded = Buffer.from(m[1] ?? "", "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon === -1) return { authorization: "basic-bad" };
  const user = decoded.slice(0, colon);
  const password = decoded.slice(colon + 1);
  const ok = Object.hasOwn(users, user) && users[user] === password;
  return { authorization: ok ? "basic-ok" : "basic-bad", user };
}

/**
 * What to grant for the requested scopes ("repository:library/x:pull,push", "registry:catalog:*"): pull on
 * any repository for everyone; push, delete and "*" and the catalog only for admins. Requested actions
 * that are not allowed are left out, and a scope with nothing left is not listed, as Docker Hub does.
 */
function grant(scopes: string[], admin: boolean): TokenAccess[] {
  const out: TokenAccess[] = [];
  for (const scope of scopes.flatMap((s) => s.split(" ")).filter((s) => s !== "")) {
    // The name may itself contain colons (a registry host with a port), so split at the first and last.
    const first = scope.indexOf(":");
    const last = scope.lastIndexOf(":");
    if (first === -1 || last === first) continue;
    const type = scope.slice(0, first).replace(/\(.*\)$/, ""); // "repository(plugin)" → "repository"
    const name = scope.slice(first + 1, last);
    const requested = scope
      .slice(last + 1)
      .split(",")
      .filter((a) => a !== "");
    const allowed =
      type === "repository"
        ? admin
          ? ["pull", "push", "delete", "*"]
          : ["pull"]
        : type === "registry" && admin
          ? ["*"]
          : [];
    const actions = requested.filter((a) => allowed.includes(a));
    if (actions.length > 0) out.push({ type, name, actions });
  }
  return out;
}

/** A 200 token answer broken as `fault` says (the headers promise the whole body, as a real answer would). */
function sendFaulty(req: IncomingMessage, res: ServerResponse, body: unknown, fault: TokenFault): void {
  const bytes = Buffer.from(JSON.stringify(body));
  if (fault.kind === "trickle") {
    res.writeHead(200, { "content-type": "application/json" });
    const timer = setInterval(() => res.write(" "), fault.intervalMs);
    res.once("close", () => clearInterval(timer));
    return;
  }
  res.writeHead(200, { "content-type": "application/json", "content-length": String(bytes.length) });
  res.write(bytes.subarray(0, Math.min(fault.afterBytes, bytes.length - 1)));
  // Reset once the bytes are out, so the client sees them before the connection breaks.
  if (fault.kind === "resetBody") setTimeout(() => req.socket.resetAndDestroy(), 50);
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const bytes = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { "content-type": "application/json", "content-length": String(bytes.length), ...headers });
  res.end(bytes);
}
