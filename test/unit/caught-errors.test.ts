/** src/caught-errors.ts: what a catch clause holds, turned into an Error or a message the same way everywhere. */
import { runInNewContext } from "node:vm";
import { describe, expect, it } from "vitest";
import { errorMessage, toError } from "../../src/caught-errors.ts";

describe("toError", () => {
  it("gives back an Error itself, not a copy", () => {
    const err = new RangeError("out of range");
    expect(toError(err)).toBe(err);
  });

  it("wraps anything else in an Error whose message is the value as text", () => {
    for (const [value, message] of [
      ["a string", "a string"],
      [42, "42"],
      [undefined, "undefined"],
      [null, "null"],
    ] as const) {
      const err = toError(value);
      expect(err).toBeInstanceOf(Error);
      expect(err.message).toBe(message);
    }
  });

  it("keeps the message of an error made in another realm (not an instance of this realm's Error)", () => {
    const foreign: unknown = runInNewContext('new Error("from another realm")');
    expect(foreign instanceof Error).toBe(false);
    const err = toError(foreign);
    expect(err).toBeInstanceOf(Error);
    expect(err.message).toBe("from another realm");
  });
});

describe("errorMessage", () => {
  it("is an Error's message", () => {
    expect(errorMessage(new Error("disk full"))).toBe("disk full");
  });

  it("is the string message of any object that has one, and the text of anything else", () => {
    expect(errorMessage({ message: "plain object" })).toBe("plain object");
    expect(errorMessage({ message: 7 })).toBe("[object Object]");
    expect(errorMessage("thrown text")).toBe("thrown text");
    expect(errorMessage(undefined)).toBe("undefined");
    expect(errorMessage(null)).toBe("null");
  });
});
