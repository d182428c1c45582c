/**
 * What becomes of a body that is not streamed on: read whole under a byte cap, or released unread. The small
 * bodies the mirror parses (manifests, tag lists, token answers, upstream error bodies, admin JSON requests)
 * are all read by `readCappedBody`, so none of them can make the mirror hold more than its cap.
 */
import type { Readable } from "node:stream";

/**
 * Reads `body` whole, holding at most `maxBytes` of it. A body longer than that is released as soon as it
 * passes the cap, and `tooLarge()` is thrown: the caller words the error. A body that fails while being read is
 * released too and its error rethrown as it came, for the caller to map (upstream-errors.ts). A deadline is
 * the request's own: a body requested with an AbortSignal fails when that signal aborts, and so does this read.
 */
export async function readCappedBody(body: Readable, maxBytes: number, tooLarge: () => Error): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of body) {
      size += (chunk as Buffer).length;
      if (size > maxBytes) throw tooLarge();
      chunks.push(chunk as Buffer);
    }
  } catch (err) {
    discardBody(body);
    throw err;
  }
  return Buffer.concat(chunks, size);
}

/**
 * Releases a body we do not want. Destroying an unfinished undici body emits an AbortError, which would be an
 * uncaught exception without a listener, so one is attached first.
 */
export function discardBody(body: Readable): void {
  body.on("error", () => undefined);
  body.destroy();
}
