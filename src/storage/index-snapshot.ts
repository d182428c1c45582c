/**
 * The index snapshot: what the filesystem store's start-up scan would find, saved at a clean shutdown, so that the
 * next start reads one file instead of a `stat` per committed file (100,000 blobs: ~0.6–1.1 s of scan here).
 *
 * It is a cache of the scan, never a second record of the content: the next start trusts a shard directory
 * (`blobs/sha256/<hh>`) from it only when
 * - the directory's modification time is the one the snapshot recorded (every file created, renamed into it or
 *   removed from it changes that time), and
 * - that time was at least QUIET_MS before the snapshot was written, so a change within the filesystem's timestamp
 *   granularity, or one whose index update had not run yet when the directories were read, is not missed.
 * Every other shard is scanned as before. What the snapshot gives for a trusted shard is exactly what the scan
 * would read: each file's size (committed content never changes) and its recorded access (the file's mtime, which
 * the index sets, cache-index.ts).
 *
 * It is read once and removed before the store serves anything: accesses recorded later live only in the files'
 * times, so after a crash the next start scans everything, as it did before snapshots existed. A snapshot that
 * cannot be removed is not used; a damaged one (its checksum) is ignored.
 *
 * Layout (little-endian): MAGIC (16 bytes) | writtenAt f64 (ms) | count u32 | 0 u32 | 256 × i64 shard mtime (ns,
 * -1: no such directory) | count × (32-byte digest, size f64, lastAccess f64) | sha256 of everything before.
 */
import { createHash } from "node:crypto";
import { statSync } from "node:fs";
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { errorMessage } from "../caught-errors.ts";

export const SNAPSHOT_FILE = "index-snapshot";
const MAGIC = Buffer.from("mirror-index-v1\n", "latin1");
/** A shard changed this recently before the snapshot was written is scanned at the next start. */
export const QUIET_MS = 2_000;
const SHARDS = 256;
const HEADER = MAGIC.length + 8 + 8 + SHARDS * 8;
/** One object: its digest's 32 bytes, size f64, lastAccess f64 (also the scan worker's records: store-scan.ts). */
export const RECORD = 32 + 8 + 8;
const CHECKSUM = 32;

export interface SnapshotEntry {
  digest: string;
  size: number;
  lastAccess: number;
}

const shardName = (i: number) => i.toString(16).padStart(2, "0");

/** Each shard directory's modification time in ns, -1n where there is none. */
export function shardTimes(blobsDir: string): BigInt64Array {
  const times = new BigInt64Array(SHARDS);
  for (let i = 0; i < SHARDS; i++) {
    // Synchronous: read in the same turn as the index is serialized, so no update of the index slips between.
    const s = statSync(join(blobsDir, shardName(i)), { bigint: true, throwIfNoEntry: false });
    times[i] = s?.isDirectory() ? s.mtimeNs : -1n;
  }
  return times;
}

/**
 * Writes the snapshot of `entries` (every committed object, as the index holds it) for the store whose content is
 * in `blobsDir`: through `tempDir` (on the same filesystem; the store empties it at start-up) and a rename, so a
 * crash leaves the previous state (no snapshot) or the whole new one.
 */
export async function writeIndexSnapshot(opts: {
  root: string;
  blobsDir: string;
  tempDir: string;
  entries: Iterable<SnapshotEntry>;
  now?: () => number;
}): Promise<{ objects: number }> {
  const list = [...opts.entries];
  const buf = Buffer.alloc(HEADER + list.length * RECORD + CHECKSUM);
  const times = shardTimes(opts.blobsDir);
  MAGIC.copy(buf, 0);
  let at = MAGIC.length;
  buf.writeDoubleLE((opts.now ?? Date.now)(), at);
  buf.writeUInt32LE(list.length, at + 8);
  at += 16;
  for (let i = 0; i < SHARDS; i++, at += 8) buf.writeBigInt64LE(times[i]!, at);
  for (const e of list) {
    writeRecord(buf, at, e.digest.slice("sha256:".length), e.size, e.lastAccess);
    at += RECORD;
  }
  createHash("sha256").update(buf.subarray(0, at)).digest().copy(buf, at);
  const temp = join(opts.tempDir, `${SNAPSHOT_FILE}.${process.pid}`);
  await writeFile(temp, buf);
  await rename(temp, join(opts.root, SNAPSHOT_FILE));
  return { objects: list.length };
}

/**
 * Reads and removes the snapshot: the entries of the shards it may be trusted for (`trusted`: by shard directory
 * name), or undefined when there is none (why it is not used when there is one: `ignored`).
 */
export async function takeIndexSnapshot(opts: {
  root: string;
  blobsDir: string;
}): Promise<{ entries: SnapshotEntry[]; trusted: (shard: string) => boolean } | { ignored: string } | undefined> {
  const path = join(opts.root, SNAPSHOT_FILE);
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    return { ignored: `unreadable: ${errorMessage(err)}` };
  }
  try {
    await rm(path);
  } catch (err) {
    return { ignored: `could not be removed, so it could outlive later accesses: ${errorMessage(err)}` };
  }
  const body = buf.length >= HEADER + CHECKSUM ? buf.subarray(0, buf.length - CHECKSUM) : undefined;
  if (
    body === undefined ||
    !buf.subarray(0, MAGIC.length).equals(MAGIC) ||
    !createHash("sha256").update(body).digest().equals(buf.subarray(body.length))
  )
    return { ignored: "damaged (checksum)" };
  let at = MAGIC.length;
  const writtenAt = buf.readDoubleLE(at);
  const count = buf.readUInt32LE(at + 8);
  at += 16;
  if (body.length !== HEADER + count * RECORD) return { ignored: "damaged (length)" };
  const recorded = new BigInt64Array(SHARDS);
  for (let i = 0; i < SHARDS; i++, at += 8) recorded[i] = buf.readBigInt64LE(at);
  const trusted = trustedShards(opts.blobsDir, recorded, writtenAt);
  return { entries: readRecords(buf, at, count, trusted), trusted: byShardName(trusted) };
}

/** Writes one object's record at `at`: `hex` is its digest's 64 hex characters. */
export function writeRecord(buf: Buffer, at: number, hex: string, size: number, lastAccess: number): void {
  if (buf.write(hex, at, 32, "hex") !== 32) throw new Error(`index record: ${hex} is not a sha256 digest`);
  buf.writeDoubleLE(size, at + 32);
  buf.writeDoubleLE(lastAccess, at + 40);
}

/**
 * Which shard directories what was read of them at `readAt` (ms) may be trusted for: those whose modification
 * time is still `recorded[i]` (ns) now, and was at least QUIET_MS older than `readAt` (see the top of this file).
 */
export function trustedShards(blobsDir: string, recorded: BigInt64Array, readAt: number): Uint8Array {
  const now = shardTimes(blobsDir);
  const trusted = new Uint8Array(SHARDS);
  const quietBefore = BigInt(Math.floor(readAt - QUIET_MS)) * 1_000_000n;
  for (let i = 0; i < SHARDS; i++) {
    if (recorded[i]! >= 0n && recorded[i] === now[i] && recorded[i]! <= quietBefore) trusted[i] = 1;
  }
  return trusted;
}

/** `trusted` (one byte per shard, as `trustedShards` gives it) as a test of a shard directory's name. */
export function byShardName(trusted: Uint8Array): (shard: string) => boolean {
  return (shard) => trusted[Number.parseInt(shard, 16)] === 1;
}

/** The `count` records from `at` whose shard (the digest's first byte) `trusted` marks. */
export function readRecords(buf: Buffer, at: number, count: number, trusted: Uint8Array): SnapshotEntry[] {
  const entries: SnapshotEntry[] = [];
  for (let n = 0; n < count; n++, at += RECORD) {
    if (trusted[buf[at]!] !== 1) continue;
    entries.push({
      digest: `sha256:${buf.toString("hex", at, at + 32)}`,
      size: buf.readDoubleLE(at + 32),
      lastAccess: buf.readDoubleLE(at + 40),
    });
  }
  return entries;
}
