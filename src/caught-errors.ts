/**
 * What a `catch` clause or a rejection holds is `unknown`: anything can be thrown, not only an `Error` (a string,
 * `undefined`, an error object from another realm). These turn it into what a log line, a problem report or a
 * rejection needs, the same way everywhere.
 */

/** The value itself when it is an `Error`, otherwise an `Error` whose message is the value as text. */
export function toError(value: unknown): Error {
  return value instanceof Error ? value : new Error(errorMessage(value));
}

/** The message of an error (or of any object with a string `message`), otherwise the value as text. */
export function errorMessage(value: unknown): string {
  if (value instanceof Error) return value.message;
  if (typeof value === "object" && value !== null && "message" in value && typeof value.message === "string")
    return value.message;
  return String(value);
}
