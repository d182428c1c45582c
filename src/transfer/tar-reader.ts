/**
 * Reads a tar stream entry by entry from any async source of chunks (a file, stdin, an HTTP request body),
 * passing each entry's content through as it arrives: nothing larger than a header is buffered, and the
 * source is pulled only as fast as the consumer takes content (backpressure).
 *
 * Formats: POSIX ustar (with the name prefix field), pax extended headers (`path`, `size`; global headers are
 * skipped), GNU long names (`L`) and GNU base-256 numbers, i.e. what GNU tar, Go's archive/tar (skopeo,
 * containers/image) and this project's writer produce. Spec:
 * https://pubs.opengroup.org/onlinepubs/9699919799/utilities/pax.html#tag_20_92_13
 *
 * Every header's checksum is verified. A stream that ends inside an entry, or without the end-of-archive
 * marker, is an error (TarError): a bundle cut off exactly between two entries would otherwise look complete.
 */

const BLOCK = 512;
/** Cap on pax and GNU long-name records, which are held in memory: real ones are a few hundred bytes. */
const MAX_META_BYTES = 1024 * 1024;

export class TarError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TarError";
  }
}

export interface TarEntry {
  name: string;
  type: "file" | "directory" | "other";
  size: number;
  /**
   * The content, `size` bytes in chunks. Read it (or part of it) before asking for the next entry; whatever is
   * left unread is skipped. Throws TarError if the stream ends first.
   */
  body(): AsyncGenerator<Buffer>;
}

export class TarReader {
  private readonly source: AsyncIterator<Buffer | Uint8Array | string>;
  private pending: Buffer = Buffer.alloc(0);
  private ended = false;
  /** Bytes of the stream consumed so far (for progress). */
  position = 0;

  constructor(source: AsyncIterable<Buffer | Uint8Array | string>) {
    this.source = source[Symbol.asyncIterator]();
  }

  async *entries(): AsyncGenerator<TarEntry> {
    let longName: string | undefined;
    let pax: Map<string, string> | undefined;
    for (;;) {
      const headerAt = this.position;
      const block = await this.readBlock();
      if (block === undefined)
        throw new TarError(`the bundle ends at byte ${headerAt} without the end-of-archive marker: it is truncated`);
      if (block.every((b) => b === 0)) return; // end of archive (the second zero block and any padding need no reading)
      const h = parseHeader(block, headerAt);
      let size = h.size;
      let name = h.name;
      if (pax?.has("size")) size = Number(pax.get("size"));
      if (pax?.has("path")) name = pax.get("path")!;
      if (longName !== undefined) name = longName;
      if (h.typeflag === "x" || h.typeflag === "g" || h.typeflag === "L" || h.typeflag === "K") {
        if (h.size > MAX_META_BYTES)
          throw new TarError(`tar metadata record of ${h.size} bytes at byte ${headerAt}: too large`);
        const data = await this.readPadded(h.size, `metadata record at byte ${headerAt}`);
        if (h.typeflag === "x") pax = parsePax(data, headerAt);
        else if (h.typeflag === "L") longName = data.toString("utf8").replace(/\0+$/, "");
        continue;
      }
      longName = undefined;
      pax = undefined;
      if (!Number.isSafeInteger(size) || size < 0) throw new TarError(`invalid size of ${name} at byte ${headerAt}`);
      const type =
        h.typeflag === "0" || h.typeflag === "\0" || h.typeflag === "7"
          ? "file"
          : h.typeflag === "5"
            ? "directory"
            : "other";
      // Links and devices carry no content even when a size is recorded (hard links in some writers).
      const contentSize = type === "other" && (h.typeflag === "1" || h.typeflag === "2") ? 0 : size;
      const content = { name, size: contentSize, left: contentSize, started: false };
      yield { name, type, size: contentSize, body: () => this.content(content) };
      // Whatever the consumer left unread, then the padding to the next block.
      content.started = true;
      for await (const _ of this.content(content, true)) {
        // skipped
      }
      await this.skipPadding(contentSize, name);
    }
  }

  /** An entry's remaining content; `rest` reads on after a consumer that stopped early. */
  private async *content(
    c: { name: string; size: number; left: number; started: boolean },
    rest = false,
  ): AsyncGenerator<Buffer> {
    if (!rest) {
      if (c.started) throw new Error(`the content of ${c.name} was already read`);
      c.started = true;
    }
    while (c.left > 0) {
      const chunk = await this.take(c.left);
      if (chunk === undefined)
        throw new TarError(`the bundle ends inside ${c.name}: ${c.size - c.left} of ${c.size} bytes`);
      c.left -= chunk.length;
      yield chunk;
    }
  }

  /** Up to `max` bytes (never zero), or undefined at the end of the stream. */
  private async take(max: number): Promise<Buffer | undefined> {
    if (this.pending.length === 0 && !(await this.fill())) return undefined;
    const n = Math.min(max, this.pending.length);
    const out = this.pending.subarray(0, n);
    this.pending = this.pending.subarray(n);
    this.position += n;
    return out;
  }

  /** A whole block; undefined if the stream ended cleanly before it; TarError if it ended inside it. */
  private async readBlock(): Promise<Buffer | undefined> {
    const first = await this.take(BLOCK);
    if (first === undefined) return undefined;
    if (first.length === BLOCK) return first;
    const parts = [first];
    let have = first.length;
    while (have < BLOCK) {
      const more = await this.take(BLOCK - have);
      if (more === undefined) throw new TarError(`the bundle ends inside a tar header at byte ${this.position - have}`);
      parts.push(more);
      have += more.length;
    }
    return Buffer.concat(parts);
  }

  private async readPadded(size: number, what: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    let left = size;
    while (left > 0) {
      const chunk = await this.take(left);
      if (chunk === undefined) throw new TarError(`the bundle ends inside ${what}`);
      parts.push(chunk);
      left -= chunk.length;
    }
    await this.skipPadding(size, what);
    return Buffer.concat(parts);
  }

  private async skipPadding(size: number, what: string): Promise<void> {
    let left = (BLOCK - (size % BLOCK)) % BLOCK;
    while (left > 0) {
      const chunk = await this.take(left);
      if (chunk === undefined) throw new TarError(`the bundle ends in the padding after ${what}`);
      left -= chunk.length;
    }
  }

  private async fill(): Promise<boolean> {
    while (!this.ended) {
      const next = await this.source.next();
      if (next.done) {
        this.ended = true;
        return false;
      }
      const chunk =
        typeof next.value === "string"
          ? Buffer.from(next.value)
          : Buffer.isBuffer(next.value)
            ? next.value
            : Buffer.from(next.value);
      if (chunk.length > 0) {
        this.pending = chunk;
        return true;
      }
    }
    return false;
  }
}

interface Header {
  name: string;
  typeflag: string;
  size: number;
}

function parseHeader(h: Buffer, at: number): Header {
  const stored = parseNumber(h, 148, 8, at);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : h[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  // Some old writers summed signed bytes; both are accepted, as GNU tar does.
  if (stored !== unsigned && stored !== signed) {
    throw new TarError(
      `corrupt tar header at byte ${at} (checksum ${stored}, computed ${unsigned}): not a tar stream, or damaged`,
    );
  }
  let name = cString(h, 0, 100);
  // The prefix field exists in POSIX ustar only; GNU's "ustar  " headers use those bytes for other things.
  if (h.toString("latin1", 257, 263) === "ustar\u0000") {
    const prefix = cString(h, 345, 155);
    if (prefix !== "") name = `${prefix}/${name}`;
  }
  return { name, typeflag: String.fromCharCode(h[156]!), size: parseNumber(h, 124, 12, at) };
}

function cString(h: Buffer, offset: number, length: number): string {
  const field = h.subarray(offset, offset + length);
  const end = field.indexOf(0);
  return field.subarray(0, end === -1 ? length : end).toString("utf8");
}

/** Octal digits (NUL or space terminated), or GNU base-256 when the high bit of the first byte is set. */
function parseNumber(h: Buffer, offset: number, length: number, at: number): number {
  const first = h[offset]!;
  if (first & 0x80) {
    if (first === 0xff) throw new TarError(`negative number in tar header at byte ${at}`);
    let v = BigInt(first & 0x7f);
    for (let i = offset + 1; i < offset + length; i++) v = (v << 8n) | BigInt(h[i]!);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new TarError(`number too large in tar header at byte ${at}`);
    return Number(v);
  }
  const text = h
    .toString("latin1", offset, offset + length)
    .replace(/[\0 ]+$/, "")
    .trim();
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text))
    throw new TarError(`corrupt tar header at byte ${at}: ${JSON.stringify(text)} is not an octal number`);
  return Number.parseInt(text, 8);
}

/** pax records: "<length> <key>=<value>\n", the length counting the whole record. */
function parsePax(data: Buffer, at: number): Map<string, string> {
  const out = new Map<string, string>();
  let pos = 0;
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos);
    const length = space === -1 ? Number.NaN : Number(data.toString("latin1", pos, space));
    if (!Number.isSafeInteger(length) || length <= 0 || pos + length > data.length) {
      if (data.subarray(pos).every((b) => b === 0)) break;
      throw new TarError(`corrupt pax header at byte ${at}`);
    }
    const record = data.toString("utf8", space + 1, pos + length - 1);
    const eq = record.indexOf("=");
    if (eq > 0) out.set(record.slice(0, eq), record.slice(eq + 1));
    pos += length;
  }
  return out;
}
