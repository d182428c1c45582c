// Teardown: one per test file. Everything a test starts is registered here as soon as it exists, and
// afterAll runs it all, in reverse order, even when a test (or another cleanup step) failed.
//
//   const teardown = new Teardown();
//   afterAll(() => teardown.run());
//   const registry = teardown.track(await startRegistry());

/** Anything with an async stop; `dispose` (stop and also delete temp files) is preferred when present. */
export interface Stoppable {
  stop(): Promise<void>;
  dispose?: () => Promise<void>;
}

interface Step {
  label: string;
  run: () => Promise<void> | void;
}

/** How long one cleanup step may take before it is reported as hung and the rest go on. */
const STEP_TIMEOUT_MS = 60_000;

export class Teardown {
  private steps: Step[] = [];

  /** Registers a cleanup function. */
  add(label: string, run: () => Promise<void> | void): void {
    this.steps.push({ label, run });
  }

  /** Registers `thing` for stopping (or disposing) and hands it back, so start and track read as one line. */
  track<T extends Stoppable>(thing: T, label?: string): T {
    const name = (thing as { name?: unknown }).name;
    const stepLabel = label ?? (typeof name === "string" ? name : `resource #${this.steps.length + 1}`);
    this.add(stepLabel, () => (thing.dispose ? thing.dispose() : thing.stop()));
    return thing;
  }

  /**
   * Runs every registered step, last registered first (a mirror stops before the registry it reads from).
   * Each step is bounded in time and a failing step does not prevent the others; all failures are
   * reported together afterwards. Safe to call more than once: steps run once.
   */
  async run(): Promise<void> {
    const steps = this.steps.reverse();
    this.steps = [];
    const failures: Error[] = [];
    for (const step of steps) {
      try {
        await withTimeout(Promise.resolve().then(step.run), STEP_TIMEOUT_MS, step.label);
      } catch (err) {
        failures.push(
          new Error(`teardown step "${step.label}" failed: ${err instanceof Error ? err.message : String(err)}`, {
            cause: err,
          }),
        );
      }
    }
    const [only] = failures;
    if (failures.length === 1 && only !== undefined) throw only;
    if (failures.length > 1) throw new AggregateError(failures, failures.map((f) => f.message).join("; "));
  }
}

async function withTimeout(work: Promise<void>, ms: number, label: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`"${label}" did not finish within ${ms} ms`)), ms);
  });
  try {
    await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
