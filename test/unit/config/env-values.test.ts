/**
 * `MIRROR_*` values for keys that take more than strings: parseEnvValue reads the plain ones itself (so that a
 * mirror configured by its environment alone does not load the YAML parser) and must read every value exactly as
 * the YAML parser does.
 */
import fc from "fast-check";
import { parse } from "yaml";
import { describe, expect, it } from "vitest";
import { parseEnvValue } from "../../../src/config/load.ts";

/** What the YAML parser makes of a value (null or an error: the value as written). */
function asYaml(value: string): unknown {
  try {
    return parse(value) ?? value;
  } catch {
    return value;
  }
}

describe("parseEnvValue", () => {
  it("reads each value as the YAML parser does, special scalars and look-alikes included", () => {
    const values = [
      ...["true", "false", "True", "FALSE", "yes", "no", "on", "off", "y", "n", "null", "Null", "NULL", "~"],
      ...[".inf", "-.inf", "+.INF", ".nan", ".NaN", "Infinity", "NaN", "inf", "nan"],
      ...["0", "7", "007", "-1", "+1", "1e3", "1.5", "0x1F", "0o17", "1_000", "123456789012345"],
      ...["1234567890123456", "12345678901234567890", "info", "warn", "docker.io", "a/b-c_d.e", "a:b", "a b", "#x"],
      ...["[a, b]", "{a: 1}", "'quoted'", "-", "", " ", "a#b", "e", "E", "x-1", "http://h:1"],
    ];
    for (const value of values) expect(parseEnvValue(value), JSON.stringify(value)).toEqual(asYaml(value));
  });

  it("agrees with the YAML parser on generated values", () => {
    const char = fc.constantFrom(..."aeinfltruAEINFLTRUxyz0123456789_./-+~:# ".split(""));
    fc.assert(
      fc.property(fc.string({ unit: char, maxLength: 20 }), (value) => {
        expect(parseEnvValue(value)).toEqual(asYaml(value));
      }),
      { numRuns: 5_000 },
    );
  });
});
