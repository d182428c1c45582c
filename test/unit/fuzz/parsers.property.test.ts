/**
 * Property-based tests (fast-check, fixed seed, bounded runs) for every parser that sees client or upstream
 * input: they never throw anything but their own errors, never accept what the grammar forbids, and never
 * produce a file name outside the store or a host outside the config.
 */
import { resolve } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import { confirmedDigests, reachableDigests } from "../../../src/oci/manifest.ts";
import { ConfigError, parseConfig } from "../../../src/config/load.ts";
import { parseDistributionRequest } from "../../../src/http/distribution-request.ts";
import { RegistryError } from "../../../src/oci/errors.ts";
import { AcceptSet } from "../../../src/oci/media-types.ts";
import { MAX_PAGE_SIZE, paginate, parsePageRequest } from "../../../src/oci/pagination.ts";
import { parseRange, resolveRange } from "../../../src/oci/range.ts";
import { isValidName, isValidTag, parseManifestReference } from "../../../src/oci/reference.ts";
import { assertDigest, isSha256Digest } from "../../../src/oci/digest.ts";
import { compilePattern } from "../../../src/oci/repository-pattern.ts";
import { UpstreamResolver } from "../../../src/config/upstream-resolver.ts";
import { UpstreamClient } from "../../../src/upstream/upstream-client.ts";
import { parseWwwAuthenticate } from "../../../src/upstream/www-authenticate.ts";
import { isMediaType, parseReferrersIndex, renderReferrersIndex } from "../../../src/oci/referrers.ts";

fc.configureGlobal({ seed: 20261123, numRuns: 400 });

const component = fc.stringMatching(/^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/, { maxLength: 20 });
const validName = fc
  .array(component, { minLength: 1, maxLength: 4 })
  .map((parts) => parts.join("/"))
  .filter((n) => n.length <= 255);
const hex64 = fc.stringMatching(/^[a-f0-9]{64}$/);
const nasty = fc.oneof(
  fc.string({ maxLength: 300 }),
  fc.string({ unit: "binary", maxLength: 100 }),
  fc.constantFrom("..", "../", "%2e%2e", "%2F", "/", "//", "\u0000", "sha256:", "*", "?", "#", " ", "\\"),
);
const mixed = fc
  .array(fc.oneof(nasty, component, fc.constantFrom("manifests", "blobs", "tags", "list", "uploads")), { maxLength: 8 })
  .map((p) => p.join("/"));

function ownErrorOnly(run: () => unknown): void {
  try {
    run();
  } catch (err) {
    if (!(err instanceof RegistryError)) throw err;
  }
}

describe("names, tags and digests", () => {
  it("accepts every name the grammar generates, and names it accepts never contain traversal or encodings", () => {
    fc.assert(fc.property(validName, (n) => isValidName(n)));
    fc.assert(
      fc.property(fc.oneof(nasty, mixed), (n) => {
        if (!isValidName(n)) return true;
        return !/(^|\/)\.\.?(\/|$)|%|\\|\/\/|^\/|\/$|[A-Z\s]/.test(n) && !n.includes(String.fromCharCode(0));
      }),
    );
  });

  it("turns only sha256 digests into file names, always inside the store", () => {
    const store = new BlobStore("/cache");
    fc.assert(
      fc.property(
        fc.oneof(
          nasty,
          hex64.map((h) => `sha256:${h}`),
        ),
        (d) => {
          let accepted = true;
          try {
            assertDigest(d);
          } catch (err) {
            if (!(err instanceof RegistryError) || err.code !== "DIGEST_INVALID") throw err;
            accepted = false;
          }
          if (!accepted) return !isSha256Digest(d);
          return resolve(store.pathOf(d)).startsWith("/cache/blobs/sha256/");
        },
      ),
    );
  });

  it("parses references into a tag or a digest, or refuses them with an OCI error", () => {
    fc.assert(
      fc.property(fc.oneof(nasty, fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/)), (r) => {
        try {
          const ref = parseManifestReference(r);
          return ref.kind === "tag" ? isValidTag(ref.tag) : isSha256Digest(ref.digest);
        } catch (err) {
          return err instanceof RegistryError;
        }
      }),
    );
  });
});

describe("request paths and upstream routing", () => {
  const config = parseConfig({
    upstreams: {
      "docker.io": { url: "https://registry-1.docker.io", default: true, aliases: ["index.docker.io"] },
      "ghcr.io": { url: "https://ghcr.io" },
    },
  });
  const upstreams = Object.values(config.upstreams).map((u) => new UpstreamClient(u));
  const resolver = new UpstreamResolver(upstreams);
  const origins = new Set(upstreams.map((u) => new URL(u.config.url).origin));

  it("either rejects a path with an OCI error or yields a valid name routed to a configured upstream", () => {
    fc.assert(
      fc.property(
        mixed,
        fc.constantFrom("GET", "HEAD", "PUT", "DELETE", "POST"),
        fc.option(nasty, { nil: undefined }),
        (path, method, ns) => {
          ownErrorOnly(() => {
            const req = parseDistributionRequest({
              method,
              path: `/v2/${path}`,
              query: new URLSearchParams(ns === undefined ? "" : { ns }),
              headers: {},
            });
            if (!req) return;
            expect(isValidName(req.name)).toBe(true);
            const target = resolver.resolve(req.name, req.ns);
            expect(origins.has(new URL(target.upstream.config.url).origin)).toBe(true);
            expect(isValidName(target.repo)).toBe(true);
          });
        },
      ),
    );
  });
});

describe("list paging (tags/list, _catalog)", () => {
  const query = fc.oneof(nasty, fc.stringMatching(/^\d{1,30}$/), fc.integer({ min: -5, max: 20_000 }).map(String));

  it("reads n as an integer within 0..MAX_PAGE_SIZE or refuses it with 400, and last only when it is a tag", () => {
    fc.assert(
      fc.property(fc.option(query, { nil: undefined }), fc.option(nasty, { nil: undefined }), (n, last) => {
        try {
          const page = parsePageRequest({ n, last }, isValidTag, () => new RegistryError("TAG_INVALID"));
          if (page.n !== undefined)
            expect(Number.isInteger(page.n) && page.n >= 0 && page.n <= MAX_PAGE_SIZE).toBe(true);
          if (page.last !== undefined) expect(isValidTag(page.last)).toBe(true);
        } catch (err) {
          expect(err).toBeInstanceOf(RegistryError);
          expect((err as RegistryError).status).toBe(400);
        }
      }),
    );
  });

  it("cuts sorted, distinct pages strictly after last, at most n long, linked only while entries follow", () => {
    fc.assert(
      fc.property(
        fc.array(fc.string({ maxLength: 6 }), { maxLength: 30 }),
        fc.option(fc.nat(35), { nil: undefined }),
        fc.option(fc.string({ maxLength: 6 }), { nil: undefined }),
        (entries, n, last) => {
          const page = paginate(entries, { n, last });
          const rest = [...new Set(entries)].sort().filter((e) => last === undefined || e > last);
          expect(page.entries).toEqual(n === undefined ? rest : rest.slice(0, n));
          expect(page.next !== undefined).toBe(n !== undefined && n > 0 && rest.length > n);
          if (page.next) expect(page.next).toEqual({ n, last: page.entries.at(-1) });
        },
      ),
    );
  });
});

describe("image references and pins", () => {
  const config = parseConfig({
    upstreams: {
      "docker.io": { url: "https://registry-1.docker.io", default: true, aliases: ["index.docker.io"] },
      "ghcr.io": { url: "https://ghcr.io" },
    },
  });
  const upstreams = Object.values(config.upstreams).map((u) => new UpstreamClient(u));
  const resolver = new UpstreamResolver(upstreams);
  const text = fc.oneof(
    nasty,
    mixed,
    fc
      .tuple(
        fc.constantFrom("", "docker.io/", "Index.Docker.IO/", "ghcr.io/", "evil.example/"),
        mixed,
        fc.constantFrom("", ":v1", ":", "@sha256:", `@sha256:${"a".repeat(64)}`),
      )
      .map((p) => p.join("")),
  );

  it("a reference is refused with an OCI error or names a configured upstream, a valid repository and a valid tag or digest", () => {
    fc.assert(
      fc.property(text, fc.boolean(), (t, requireUpstream) => {
        ownErrorOnly(() => {
          const ref = resolver.reference(t, { requireUpstream });
          expect(upstreams).toContain(ref.upstream);
          expect(isValidName(ref.repository)).toBe(true);
          expect(
            ref.reference.kind === "tag" ? isValidTag(ref.reference.tag) : isSha256Digest(ref.reference.digest),
          ).toBe(true);
        });
      }),
    );
  });

  it("a pin is refused with a message or names a configured upstream, a valid repository and a valid tag or every tag", () => {
    fc.assert(
      fc.property(text, (t) => {
        let pin;
        try {
          pin = resolver.pin(t);
        } catch (err) {
          return err instanceof Error && err.message.startsWith(`pin ${JSON.stringify(t)}`);
        }
        return (
          upstreams.some((u) => u.name === pin.upstream) &&
          isValidName(pin.repository) &&
          (pin.tag === undefined || isValidTag(pin.tag))
        );
      }),
    );
  });
});

describe("Range", () => {
  it("yields nothing or a single range that resolves inside the blob", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          nasty,
          fc.tuple(fc.nat(), fc.option(fc.nat())).map(([a, b]) => `bytes=${a}-${b ?? ""}`),
          fc.nat().map((n) => `bytes=-${n}`),
        ),
        fc.nat({ max: 2 ** 40 }),
        (header, size) => {
          const spec = parseRange(header);
          if (spec === undefined) return true;
          const r = resolveRange(spec, size);
          return r === "unsatisfiable" || (r.start >= 0 && r.start <= r.end && r.end < size);
        },
      ),
    );
  });
});

describe("headers from clients and upstreams", () => {
  it("WWW-Authenticate: never throws, and round-trips challenges it is given", () => {
    fc.assert(
      fc.property(fc.oneof(nasty, fc.array(nasty, { maxLength: 3 })), (h) => {
        parseWwwAuthenticate(h);
        return true;
      }),
    );
    const value = fc.string({ maxLength: 40 }).filter((v) => !v.includes("\\"));
    fc.assert(
      fc.property(fc.constantFrom("Bearer", "bearer", "Basic"), value, value, (scheme, realm, service) => {
        const parsed = parseWwwAuthenticate(
          `${scheme} realm="${realm.replace(/"/g, '\\"')}",service="${service.replace(/"/g, '\\"')}"`,
        );
        return parsed?.params.realm === realm && parsed.params.service === service;
      }),
    );
  });

  it("Accept: never throws, and an Accept naming a type accepts it", () => {
    fc.assert(
      fc.property(
        fc.oneof(nasty, fc.array(nasty, { maxLength: 4 })),
        fc.stringMatching(/^[a-z]+\/[a-z.+-]+$/),
        (h, type) => {
          AcceptSet.parse(h).accepts(type);
          const combined = Array.isArray(h) ? [...h, type] : [h, type];
          return AcceptSet.parse(combined).accepts(type);
        },
      ),
    );
  });
});

describe("manifest JSON from upstreams", () => {
  const descriptor = fc.record({
    digest: fc.oneof(
      nasty,
      hex64.map((h) => `sha256:${h}`),
    ),
  });
  const manifest = fc.oneof(
    fc.json(),
    fc.string({ maxLength: 200 }),
    fc.record({
      config: fc.anything(),
      layers: fc.anything(),
      manifests: fc.array(descriptor),
      subject: fc.oneof(descriptor, fc.anything()),
      blobs: fc.array(descriptor),
    }),
  );

  it("never throws, only ever yields valid sha256 digests, and confirms nothing it does not reach", () => {
    fc.assert(
      fc.property(manifest, (doc) => {
        const bytes = Buffer.from(typeof doc === "string" ? doc : (JSON.stringify(doc) ?? ""));
        const reachable = reachableDigests(bytes);
        const confirmed = confirmedDigests(bytes);
        return reachable.every(isSha256Digest) && confirmed.every((d) => reachable.includes(d));
      }),
    );
  });
});

describe("referrers indexes from upstreams", () => {
  const descriptor = fc.record(
    {
      mediaType: fc.oneof(nasty, fc.constant("application/vnd.oci.image.manifest.v1+json")),
      digest: fc.oneof(
        nasty,
        hex64.map((h) => `sha256:${h}`),
      ),
      size: fc.oneof(fc.integer({ min: -5, max: 1 << 20 }), fc.double(), fc.anything()),
      artifactType: fc.oneof(nasty, fc.anything()),
      annotations: fc.oneof(fc.dictionary(fc.string({ maxLength: 10 }), fc.string({ maxLength: 10 })), fc.anything()),
    },
    { requiredKeys: [] },
  );
  const index = fc.oneof(
    fc.json(),
    fc.string({ maxLength: 200 }),
    fc.record(
      {
        schemaVersion: fc.oneof(fc.constant(2), fc.anything()),
        mediaType: fc.oneof(fc.constant("application/vnd.oci.image.index.v1+json"), nasty),
        manifests: fc.oneof(fc.array(descriptor, { maxLength: 5 }), fc.anything()),
      },
      { requiredKeys: [] },
    ),
  );

  it("never throws; what it accepts has only sha256 digests, media types and sizes, and renders back to itself", () => {
    fc.assert(
      fc.property(index, (doc) => {
        const bytes = Buffer.from(typeof doc === "string" ? doc : (JSON.stringify(doc) ?? ""));
        const list = parseReferrersIndex(bytes);
        if (list === undefined) return true;
        expect(list.every((d) => isSha256Digest(d.digest) && isMediaType(d.mediaType))).toBe(true);
        expect(list.every((d) => Number.isSafeInteger(d.size) && d.size >= 0)).toBe(true);
        expect(parseReferrersIndex(renderReferrersIndex(list))).toEqual(list);
        return true;
      }),
    );
  });
});

describe("config", () => {
  it("either loads or reports ConfigError, for any input", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.anything(),
          fc.record({
            listen: fc.anything(),
            storage: fc.anything(),
            upstreams: fc.dictionary(fc.string({ maxLength: 15 }), fc.anything()),
          }),
        ),
        (input) => {
          try {
            parseConfig(input);
          } catch (err) {
            if (!(err instanceof ConfigError)) throw err;
          }
          return true;
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe("repository patterns", () => {
  it("never throw, and a literal pattern matches exactly itself", () => {
    fc.assert(
      fc.property(nasty, (p) => {
        compilePattern(p)(p.replace(/\*/g, ""));
        return true;
      }),
    );
    fc.assert(fc.property(validName, validName, (a, b) => compilePattern(a)(b) === (a === b)));
    fc.assert(
      fc.property(
        component,
        component,
        (org, repo) => compilePattern(`${org}/*`)(`${org}/${repo}`) && !compilePattern(`${org}/*`)(`${org}/${repo}/x`),
      ),
    );
  });
});
