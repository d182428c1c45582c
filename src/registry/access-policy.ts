/**
 * What may be pulled, by whom (config `access` and `upstreams.<name>.repositories`), decided after the upstream
 * is resolved and before anything is fetched: a refused request causes no upstream traffic.
 *  - The upstream's repository allow/deny patterns apply to everyone: DENIED.
 *  - Then the ordered access rules, first match deciding; without a match, logged-in users are allowed and
 *    anonymous clients iff `access.anonymous`. An anonymous client that is refused gets 401 with a challenge
 *    (so it can log in); a logged-in one gets 403 DENIED.
 */
import type { Config } from "../config/schema.ts";
import { RegistryError } from "../oci/errors.ts";
import { compilePatterns, type RepositoryMatcher } from "../oci/repository-pattern.ts";

/** Who is asking, as the HTTP layer established it. */
export type Identity = { kind: "anonymous" } | { kind: "user"; name: string };
export const ANONYMOUS: Identity = { kind: "anonymous" };
/** The challenge sent to clients that must log in. */
export const CHALLENGE = 'Basic realm="registry-mirror"';

interface CompiledRule {
  subjects: ReadonlySet<string>;
  upstreams: ReadonlySet<string> | undefined;
  repositories: RepositoryMatcher | undefined;
  allow: boolean;
}

export class AccessPolicy {
  private readonly anonymous: boolean;
  private readonly rules: readonly CompiledRule[];
  private readonly upstreamAllow = new Map<string, RepositoryMatcher | undefined>();
  private readonly upstreamDeny = new Map<string, RepositoryMatcher>();

  constructor(config: Config) {
    this.anonymous = config.access?.anonymous ?? true;
    this.rules = (config.access?.rules ?? []).map((r) => ({
      subjects: new Set(r.subjects),
      upstreams: r.upstreams ? new Set(r.upstreams) : undefined,
      repositories: r.repositories ? compilePatterns(r.repositories) : undefined,
      allow: r.action === "allow",
    }));
    for (const [name, u] of Object.entries(config.upstreams)) {
      this.upstreamAllow.set(name, u.repositories.allow ? compilePatterns(u.repositories.allow) : undefined);
      this.upstreamDeny.set(name, compilePatterns(u.repositories.deny));
    }
  }

  /** Whether anonymous clients may pull anything at all (for the `/v2/` ping). */
  get anonymousAllowedAnywhere(): boolean {
    return this.anonymous || this.rules.some((r) => r.allow && (r.subjects.has("anonymous") || r.subjects.has("*")));
  }

  /** Whether the upstream's own `repositories` allow/deny patterns let `repo` be pulled through it (anyone's request). */
  upstreamPermits(upstream: string, repo: string): boolean {
    const allow = this.upstreamAllow.get(upstream);
    return !((allow && !allow(repo)) || this.upstreamDeny.get(upstream)?.(repo));
  }

  /** Throws UNAUTHORIZED (anonymous) or DENIED when `who` may not pull `repo` through `upstream`. */
  check(who: Identity, upstream: string, repo: string): void {
    if (!this.upstreamPermits(upstream, repo)) {
      throw new RegistryError(
        "DENIED",
        `repository ${repo} may not be pulled through upstream ${upstream} on this mirror`,
      );
    }
    const subject = who.kind === "anonymous" ? "anonymous" : who.name;
    const rule = this.rules.find(
      (r) =>
        (r.subjects.has(subject) || r.subjects.has("*")) &&
        (!r.upstreams || r.upstreams.has(upstream)) &&
        (!r.repositories || r.repositories(repo)),
    );
    const allowed = rule ? rule.allow : who.kind === "user" || this.anonymous;
    if (allowed) return;
    if (who.kind === "anonymous")
      throw new RegistryError("UNAUTHORIZED", "authentication required", {
        headers: { "WWW-Authenticate": CHALLENGE },
      });
    throw new RegistryError("DENIED", `user ${who.name} may not pull ${repo} from ${upstream}`);
  }
}
