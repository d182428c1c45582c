// A minimal synchronous ustar writer for building image layers in memory.
// tar-stream only offers a streaming (asynchronous) packer; layers here are small and built synchronously,
// and a fixed header layout makes the output byte-for-byte reproducible. tar-stream is used in the
// self-tests as an independent reader to check what this writes.

export type TarEntry =
  | { type: "file"; name: string; content: Buffer; mode?: number }
  | { type: "directory"; name: string; mode?: number }
  | { type: "symlink"; name: string; target: string };

const BLOCK = 512;
/** Fixed timestamp so the same entries always give the same bytes (and so the same digests). */
const MTIME = Math.floor(Date.UTC(2024, 0, 1) / 1000);

export function buildTar(entries: TarEntry[]): Buffer {
  const parts: Buffer[] = [];
  for (const entry of entries) {
    const content = entry.type === "file" ? entry.content : Buffer.alloc(0);
    parts.push(header(entry, content.length));
    if (content.length > 0) {
      parts.push(content);
      const padding = (BLOCK - (content.length % BLOCK)) % BLOCK;
      if (padding > 0) parts.push(Buffer.alloc(padding));
    }
  }
  // The end of an archive is two zero blocks.
  parts.push(Buffer.alloc(2 * BLOCK));
  return Buffer.concat(parts);
}

function header(entry: TarEntry, size: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  const name = entry.type === "directory" && !entry.name.endsWith("/") ? `${entry.name}/` : entry.name;
  const mode = entry.type === "symlink" ? 0o777 : (entry.mode ?? (entry.type === "directory" ? 0o755 : 0o644));
  writeString(h, 0, 100, name, "name");
  writeOctal(h, 100, 8, mode);
  writeOctal(h, 108, 8, 0); // uid
  writeOctal(h, 116, 8, 0); // gid
  writeOctal(h, 124, 12, size);
  writeOctal(h, 136, 12, MTIME);
  h.fill(0x20, 148, 156); // checksum field counts as spaces while the checksum is computed
  h.write(entry.type === "file" ? "0" : entry.type === "symlink" ? "2" : "5", 156, "latin1");
  if (entry.type === "symlink") writeString(h, 157, 100, entry.target, "symlink target");
  h.write("ustar\u000000", 257, "latin1"); // magic "ustar\0" and version "00"
  writeString(h, 265, 32, "root", "uname");
  writeString(h, 297, 32, "root", "gname");
  let sum = 0;
  for (const byte of h) sum += byte;
  // Six octal digits, NUL, space: the traditional layout every reader accepts.
  h.write(`${sum.toString(8).padStart(6, "0")}\u0000 `, 148, "latin1");
  return h;
}

function writeString(h: Buffer, offset: number, length: number, value: string, what: string): void {
  const bytes = Buffer.from(value, "utf8");
  // Longer names would need a PAX header or the prefix field; the harness never needs them.
  if (bytes.length > length) throw new Error(`tar ${what} too long (${bytes.length} > ${length} bytes): ${value}`);
  bytes.copy(h, offset);
}

function writeOctal(h: Buffer, offset: number, length: number, value: number): void {
  const digits = value.toString(8).padStart(length - 1, "0");
  if (digits.length > length - 1) throw new Error(`tar header value ${value} does not fit in ${length} bytes`);
  h.write(`${digits}\u0000`, offset, "latin1");
}
