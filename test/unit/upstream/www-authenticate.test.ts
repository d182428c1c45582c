import { describe, expect, it } from "vitest";
import { parseWwwAuthenticate } from "../../../src/upstream/www-authenticate.ts";

describe("parseWwwAuthenticate", () => {
  it("parses Docker Hub's bearer challenge", () => {
    expect(
      parseWwwAuthenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"',
      ),
    ).toEqual({
      scheme: "bearer",
      params: {
        realm: "https://auth.docker.io/token",
        service: "registry.docker.io",
        scope: "repository:library/alpine:pull",
      },
    });
  });
  it("parses Basic, case-insensitive schemes and parameter names, and token (unquoted) values", () => {
    expect(parseWwwAuthenticate('basic Realm="Registry Realm"')).toEqual({
      scheme: "basic",
      params: { realm: "Registry Realm" },
    });
    expect(parseWwwAuthenticate("BEARER realm=https://a/token, service=s")).toEqual({
      scheme: "bearer",
      params: { realm: "https://a/token", service: "s" },
    });
  });
  it("skips unsupported schemes to the first supported one, across several headers", () => {
    expect(parseWwwAuthenticate(["Negotiate abc==", 'Bearer realm="r"'])?.params.realm).toBe("r");
    expect(parseWwwAuthenticate('Negotiate, Basic realm="x"')?.scheme).toBe("basic");
  });
  it("unescapes quoted-pairs and keeps commas inside quotes", () => {
    expect(parseWwwAuthenticate('Bearer realm="a\\"b,c", scope="x,y"')?.params).toEqual({
      realm: 'a"b,c',
      scope: "x,y",
    });
  });
  it("never throws on garbage, and gives undefined when nothing usable is there", () => {
    for (const junk of [
      "",
      ",,,",
      '="',
      "Negotiate",
      "\u0000\u0001",
      "=".repeat(10_000),
      'Bearer realm="unterminated',
    ]) {
      expect(() => parseWwwAuthenticate(junk)).not.toThrow();
    }
    expect(parseWwwAuthenticate(undefined)).toBeUndefined();
    expect(parseWwwAuthenticate("Negotiate abc")).toBeUndefined();
    expect(parseWwwAuthenticate('Bearer realm="unterminated')?.params.realm).toBe("unterminated");
  });
});
