/**
 * Progress of a long-running command (export, import): items and bytes done, with rates. On a terminal one
 * line rewrites itself (at most every 100 ms); otherwise (a log, CI, a pipe) a plain line is printed every few
 * seconds and at the end, so logs stay readable and still show that work is moving.
 */

export interface ProgressState {
  /** Absent when the items are not known here (an upload whose entries the server counts). */
  items?: { done: number; total?: number | undefined };
  bytes: { done: number; total?: number | undefined };
}

const TTY_INTERVAL_MS = 100;
const LOG_INTERVAL_MS = 5_000;

export class Progress {
  private readonly out: NodeJS.WritableStream & { isTTY?: boolean };
  private readonly label: string;
  private readonly itemName: string;
  private readonly tty: boolean;
  private readonly logIntervalMs: number;
  private readonly started = performance.now();
  private lastDraw = 0;
  private drawn = false;
  private state: ProgressState = { items: { done: 0 }, bytes: { done: 0 } };

  constructor(
    out: NodeJS.WritableStream & { isTTY?: boolean },
    label: string,
    itemName: string,
    opts: { intervalMs?: number } = {},
  ) {
    this.out = out;
    this.label = label;
    this.itemName = itemName;
    this.tty = out.isTTY === true;
    this.logIntervalMs = opts.intervalMs ?? LOG_INTERVAL_MS;
  }

  update(state: ProgressState): void {
    this.state = state;
    const now = performance.now();
    if (now - this.lastDraw < (this.tty ? TTY_INTERVAL_MS : this.logIntervalMs)) return;
    this.lastDraw = now;
    this.draw();
  }

  /** A message that must not be overwritten by the progress line. */
  note(line: string): void {
    if (this.tty && this.drawn) this.out.write("\r\u001b[2K");
    this.out.write(`${line}\n`);
    if (this.tty && this.drawn) this.draw();
  }

  /** The final state, always printed; ends the rewriting line. */
  finish(state?: ProgressState): void {
    if (state) this.state = state;
    this.draw();
    if (this.tty) this.out.write("\n");
  }

  line(): string {
    const seconds = Math.max((performance.now() - this.started) / 1000, 0.001);
    const { items, bytes } = this.state;
    const of = (n: number | undefined, f: (x: number) => string) => (n === undefined ? "" : `/${f(n)}`);
    const itemPart =
      items === undefined
        ? ""
        : `${items.done}${of(items.total, String)} ${this.itemName} (${(items.done / seconds).toFixed(1)}/s), `;
    return `${this.label}: ${itemPart}${mib(bytes.done)}${of(bytes.total, mib)} MiB (${mib(bytes.done / seconds)} MiB/s), ${seconds.toFixed(1)} s`;
  }

  private draw(): void {
    this.out.write(this.tty ? `\r\u001b[2K${this.line()}` : `${this.line()}\n`);
    this.drawn = true;
  }
}

function mib(n: number): string {
  return (n / (1024 * 1024)).toFixed(1);
}
