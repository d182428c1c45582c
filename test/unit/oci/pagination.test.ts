import { describe, expect, it } from "vitest";
import { RegistryError } from "../../../src/oci/errors.ts";
import { MAX_PAGE_SIZE, nextPageLink, paginate, parsePageRequest } from "../../../src/oci/pagination.ts";
import { isValidTag } from "../../../src/oci/reference.ts";

const tagInvalid = () => new RegistryError("TAG_INVALID");
const parse = (n?: string, last?: string) => parsePageRequest({ n, last }, isValidTag, tagInvalid);
const failure = (fn: () => unknown) => {
  try {
    fn();
  } catch (err) {
    return { code: (err as RegistryError).code, status: (err as RegistryError).status };
  }
  return undefined;
};

describe("parsePageRequest", () => {
  it("reads n as a non-negative integer and clamps it to the largest page", () => {
    expect(parse()).toEqual({ n: undefined, last: undefined });
    expect(parse("0")).toEqual({ n: 0, last: undefined });
    expect(parse("007", "v1")).toEqual({ n: 7, last: "v1" });
    expect(parse(String(MAX_PAGE_SIZE)).n).toBe(MAX_PAGE_SIZE);
    expect(parse(String(MAX_PAGE_SIZE + 1)).n).toBe(MAX_PAGE_SIZE);
    expect(parse("9".repeat(400)).n).toBe(MAX_PAGE_SIZE);
    expect(parse("0".repeat(400) + "3").n).toBe(3);
  });

  it.each(["", "-1", "1.5", "+3", "1e3", " 2", "0x10", "two", "Infinity"])("refuses n=%j with 400 UNSUPPORTED", (n) => {
    expect(failure(() => parse(n))).toEqual({ code: "UNSUPPORTED", status: 400 });
  });

  it("refuses a last that is no entry with the caller's error", () => {
    expect(failure(() => parse(undefined, "../x"))).toEqual({ code: "TAG_INVALID", status: 400 });
    expect(failure(() => parse("2", "a".repeat(129)))).toEqual({ code: "TAG_INVALID", status: 400 });
    expect(failure(() => parse("2", ""))).toEqual({ code: "TAG_INVALID", status: 400 });
    expect(parse("2", "a".repeat(128)).last).toBe("a".repeat(128));
  });
});

describe("paginate", () => {
  const tags = ["v2", "latest", "V1", "1.0", "v10", "_x", "v2", "a-b", "a.b", "a_b"];
  const sorted = ["1.0", "V1", "_x", "a-b", "a.b", "a_b", "latest", "v10", "v2"];

  it("sorts in code-unit order and drops duplicates; without n the page is everything", () => {
    expect(paginate(tags, { n: undefined, last: undefined })).toEqual({ entries: sorted, next: undefined });
  });

  it("answers n=0 with an empty page and no next", () => {
    expect(paginate(tags, { n: 0, last: undefined })).toEqual({ entries: [], next: undefined });
    expect(paginate(tags, { n: 0, last: "a.b" })).toEqual({ entries: [], next: undefined });
  });

  it("starts strictly after last, whether or not last is in the list", () => {
    expect(paginate(tags, { n: undefined, last: "latest" }).entries).toEqual(["v10", "v2"]);
    expect(paginate(tags, { n: undefined, last: "b" }).entries).toEqual(["latest", "v10", "v2"]);
    expect(paginate(tags, { n: 2, last: "0" })).toEqual({ entries: ["1.0", "V1"], next: { n: 2, last: "V1" } });
    expect(paginate(tags, { n: 5, last: "v2" })).toEqual({ entries: [], next: undefined });
    expect(paginate(tags, { n: 5, last: "zzz" })).toEqual({ entries: [], next: undefined });
  });

  it("links to the next page only while entries follow, and the walk yields every entry once", () => {
    for (let n = 1; n <= sorted.length + 1; n++) {
      const walked: string[] = [];
      let last: string | undefined;
      for (let pages = 0; pages <= sorted.length; pages++) {
        const page = paginate(tags, { n, last });
        expect(page.entries.length).toBeLessThanOrEqual(n);
        walked.push(...page.entries);
        if (page.next === undefined) break;
        expect(page.entries.length).toBe(n);
        expect(page.next).toEqual({ n, last: page.entries[n - 1] });
        last = page.next.last;
      }
      expect(walked, `n=${n}`).toEqual(sorted);
    }
    // A page that ends exactly at the end of the list has no next page.
    expect(paginate(tags, { n: sorted.length, last: undefined }).next).toBeUndefined();
  });
});

describe("nextPageLink", () => {
  it("is an RFC 5988 next link on the mirror's own path, with extra parameters kept and encoded", () => {
    expect(nextPageLink("/v2/team/app/tags/list", { n: 2, last: "v1" })).toBe(
      '</v2/team/app/tags/list?n=2&last=v1>; rel="next"',
    );
    expect(nextPageLink("/v2/_catalog", { n: 1, last: "ghcr.io/a" }, { ns: "my host&x" })).toBe(
      '</v2/_catalog?n=1&last=ghcr.io%2Fa&ns=my+host%26x>; rel="next"',
    );
  });
});
