/**
 * The blocks of a tar stream (POSIX ustar, https://pubs.opengroup.org/onlinepubs/9699919799/utilities/pax.html#tag_20_92_13_06):
 * headers, padding and the end marker. The exporter yields them between an entry's content chunks from an
 * async generator piped to the output with backpressure, so content passes through and is never collected.
 *
 * Only what a bundle needs: regular files and directories with names that fit the 100-byte name field
 * (`blobs/sha256/<64 hex>` is 77). Sizes of 8 GiB and more, which do not fit the 11 octal digits of the size
 * field, use the base-256 encoding GNU tar introduced and every current reader (GNU tar, Go's archive/tar,
 * libarchive) accepts.
 */

const BLOCK = 512;
const MAX_OCTAL_SIZE = 0o77777777777;

export interface TarFileHeader {
  name: string;
  size: number;
  /** Seconds since the epoch. */
  mtime: number;
  mode?: number;
}

/** The header block of a regular file. */
export function fileHeader(h: TarFileHeader): Buffer {
  return header(h.name, "0", h.size, h.mode ?? 0o644, h.mtime);
}

/** The header block of a directory (the name gets its trailing slash). */
export function directoryHeader(name: string, mtime: number): Buffer {
  return header(name.endsWith("/") ? name : `${name}/`, "5", 0, 0o755, mtime);
}

/** Zero bytes that bring an entry of `size` bytes to a block boundary. */
export function padding(size: number): Buffer {
  return Buffer.alloc((BLOCK - (size % BLOCK)) % BLOCK);
}

/** The end-of-archive marker: two zero blocks. */
export function endOfArchive(): Buffer {
  return Buffer.alloc(2 * BLOCK);
}

function header(name: string, typeflag: string, size: number, mode: number, mtime: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  const nameBytes = Buffer.from(name, "utf8");
  if (nameBytes.length > 100) throw new Error(`tar entry name longer than 100 bytes: ${name}`);
  nameBytes.copy(h, 0);
  octal(h, 100, 8, mode);
  octal(h, 108, 8, 0); // uid
  octal(h, 116, 8, 0); // gid
  if (size <= MAX_OCTAL_SIZE) octal(h, 124, 12, size);
  else base256(h, 124, 12, size);
  octal(h, 136, 12, Math.max(0, Math.floor(mtime)));
  h.write(typeflag, 156, "latin1");
  h.write("ustar\u000000", 257, "latin1"); // magic "ustar\0", version "00"
  // The checksum is computed with its own field as eight spaces, then written as six octal digits, NUL, space.
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of h) sum += byte;
  h.write(`${sum.toString(8).padStart(6, "0")}\u0000 `, 148, "latin1");
  return h;
}

function octal(h: Buffer, offset: number, length: number, value: number): void {
  h.write(`${value.toString(8).padStart(length - 1, "0")}\u0000`, offset, "latin1");
}

/** GNU base-256: the high bit of the first byte set, the value big-endian in the rest of the field. */
function base256(h: Buffer, offset: number, length: number, value: number): void {
  let v = BigInt(value);
  for (let i = offset + length - 1; i > offset; i--) {
    h[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  h[offset] = 0x80;
}
