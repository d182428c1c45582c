/**
 * Parses `WWW-Authenticate` challenges (RFC 9110 §11.6.1) as registries send them:
 *   Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"
 *   Basic realm="Registry Realm"
 * Only the first challenge of a supported scheme is used. Input is upstream-controlled: the parser is linear,
 * bounded, and never throws (malformed input gives `undefined`).
 */

export interface Challenge {
  scheme: "bearer" | "basic";
  params: Readonly<Record<string, string>>;
}

const MAX_HEADER = 8192;
const TOKEN_CHARS = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;

export function parseWwwAuthenticate(header: string | string[] | undefined): Challenge | undefined {
  const values = header === undefined ? [] : Array.isArray(header) ? header : [header];
  for (const value of values) {
    for (const challenge of parseChallenges(value.slice(0, MAX_HEADER))) {
      const scheme = challenge.scheme.toLowerCase();
      if (scheme === "bearer" || scheme === "basic") return { scheme, params: challenge.params };
    }
  }
  return undefined;
}

/**
 * Splits a header value into challenges: `scheme [name=value | name="quoted", ...]`, repeated. Every loop
 * iteration consumes at least one character, so garbage cannot make it spin.
 */
function parseChallenges(input: string): Array<{ scheme: string; params: Record<string, string> }> {
  const out: Array<{ scheme: string; params: Record<string, string> }> = [];
  const n = input.length;
  let i = 0;
  const skip = (chars: string) => {
    while (i < n && chars.includes(input[i]!)) i++;
  };
  const readToken = () => {
    const start = i;
    while (i < n && TOKEN_CHARS.test(input[i]!)) i++;
    return input.slice(start, i);
  };
  while (i < n) {
    skip(" \t,");
    const scheme = readToken();
    if (scheme === "") {
      i++; // not a token character: skip it
      continue;
    }
    const params: Record<string, string> = {};
    out.push({ scheme, params });
    for (;;) {
      skip(" \t,");
      const mark = i;
      const name = readToken();
      skip(" \t");
      if (name === "" || input[i] !== "=") {
        i = mark; // the next scheme (or garbage): leave it to the outer loop
        break;
      }
      i++; // "="
      skip(" \t");
      let value = "";
      if (input[i] === '"') {
        i++;
        while (i < n && input[i] !== '"') {
          if (input[i] === "\\" && i + 1 < n) i++;
          value += input[i];
          i++;
        }
        i++; // the closing quote
      } else {
        // The RFC says token; registries in the wild send unquoted URLs, so read up to the next separator.
        const start = i;
        while (i < n && input[i] !== "," && input[i] !== " " && input[i] !== "\t") i++;
        value = input.slice(start, i);
      }
      params[name.toLowerCase()] = value;
    }
  }
  return out;
}
