/**
 * Watching files the mirror re-reads while it runs (the TLS certificate and key, token files). Polled, once a
 * second: Kubernetes updates a mounted Secret by swapping a symlink, which fs.watch misses, while a poll sees the
 * new file behind the path. A file that does not exist yet is watched too: its appearance is a change.
 */
import { unwatchFile, watchFile } from "node:fs";

export const FILE_POLL_INTERVAL_MS = 1000;

/** Calls `onChange` whenever one of `paths` changes (content, metadata, or which file the path names); returns the function that stops watching. */
export function watchFiles(paths: readonly string[], onChange: () => void): () => void {
  // One listener of our own, so stopping removes exactly ours, whoever else watches the same files.
  const listener = () => onChange();
  for (const path of paths) watchFile(path, { interval: FILE_POLL_INTERVAL_MS }, listener);
  return () => {
    for (const path of paths) unwatchFile(path, listener);
  };
}
