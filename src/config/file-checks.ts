/**
 * Checks of the files and directories a configuration or a command line names, made before they are used, so
 * that a wrong path is one line naming the key or flag it came from and the absolute path that was tried
 * (`tls.certFile /etc/mirror/cert.pem: no such file`), never a raw `ENOENT` with a stack trace. Each check
 * returns that line, or undefined when the path is usable; none throws.
 */
import { constants } from "node:fs";
import { access, open, stat } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { errorMessage } from "../caught-errors.ts";

/** What a failed file operation means to the person who wrote the path (by the error's code). */
export function fileErrorText(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | null)?.code;
  switch (code) {
    case "ENOENT":
      return "no such file or directory";
    case "EACCES":
    case "EPERM":
      return "permission denied";
    case "ENOTDIR":
      return "a component of the path is not a directory";
    case "EISDIR":
      return "is a directory, not a file";
    case "EROFS":
      return "read-only file system";
    case "ELOOP":
      return "too many symbolic links";
    case "ENAMETOOLONG":
      return "path too long";
    default:
      return errorMessage(err);
  }
}

/** `label` (a key such as `tls.certFile`, or a flag such as `--token-file`) and the absolute path, for messages. */
function named(label: string, path: string): string {
  return `${label} ${resolve(path)}`;
}

/** A file that must exist and be readable (certificates, secrets, lists given on the command line). */
export async function readableFileProblem(label: string, path: string): Promise<string | undefined> {
  try {
    // Opening it is the only honest test of readability (access() answers for the real, not the effective, user).
    const handle = await open(path, constants.O_RDONLY);
    try {
      if (!(await handle.stat()).isFile()) return `${named(label, path)}: is not a regular file`;
    } finally {
      await handle.close();
    }
    return undefined;
  } catch (err) {
    return `${named(label, path)}: ${fileErrorText(err)}`;
  }
}

/**
 * A directory the process will create files in (`storage.path`, `--data-dir`): it is a writable directory,
 * or it does not exist yet and its nearest existing ancestor is one (it will be created).
 */
export async function writableDirectoryProblem(label: string, path: string): Promise<string | undefined> {
  const target = resolve(path);
  let dir = target;
  for (let i = 0; i < 4096; i++) {
    const info = await stat(dir).catch((err: unknown) => err as NodeJS.ErrnoException);
    if (info instanceof Error) {
      // A missing directory is created, and so are its missing parents: look for the nearest that exists.
      if (info.code !== "ENOENT" && info.code !== "ENOTDIR") return `${named(label, path)}: ${fileErrorText(info)}`;
      const parent = dirname(dir);
      if (parent === dir) return `${named(label, path)}: ${fileErrorText(info)}`;
      dir = parent;
      continue;
    }
    if (!info.isDirectory()) {
      return dir === target
        ? `${named(label, path)}: is not a directory`
        : `${named(label, path)}: ${dir} is not a directory`;
    }
    try {
      await access(dir, constants.W_OK | constants.X_OK);
    } catch (err) {
      const what = dir === target ? "" : ` (it would be created in ${dir})`;
      return `${named(label, path)}: not writable${what}: ${fileErrorText(err)}`;
    }
    return undefined;
  }
  return `${named(label, path)}: too deep`;
}

/** A file the process will write (`--output`): its directory exists and is writable, and it is no directory. */
export async function writableFileProblem(label: string, path: string): Promise<string | undefined> {
  const target = resolve(path);
  const info = await stat(target).catch(() => undefined);
  if (info?.isDirectory()) return `${named(label, path)}: is a directory`;
  const dir = dirname(target);
  const dirInfo = await stat(dir).catch((err: unknown) => err as NodeJS.ErrnoException);
  if (dirInfo instanceof Error) return `${named(label, path)}: cannot write in ${dir}: ${fileErrorText(dirInfo)}`;
  if (!dirInfo.isDirectory()) return `${named(label, path)}: ${dir} is not a directory`;
  try {
    await access(dir, constants.W_OK | constants.X_OK);
  } catch (err) {
    return `${named(label, path)}: cannot write in ${dir}: ${fileErrorText(err)}`;
  }
  return undefined;
}
