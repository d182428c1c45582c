// The closing table of the client suite: one line per client × scenario, pass or fail and how long it took,
// printed after vitest's own results, with notes (measurements) and the first line of each failure. A
// scenario that never got to run (its client failed to start) reads "not run", so a row can never silently
// go missing; vitest fails the file in that case.

type Outcome = "pass" | "fail" | "not run";

interface Row {
  client: string;
  scenario: string;
  outcome: Outcome;
  seconds: number | undefined;
  note: string | undefined;
  failure: string | undefined;
}

export class ScenarioTable {
  private readonly rows: Row[] = [];
  private readonly startedAt = Date.now();

  /** Declares a row when the test is defined: it reads "not run" until time() fills it in. */
  expect(client: string, scenario: string): void {
    this.rows.push({ client, scenario, outcome: "not run", seconds: undefined, note: undefined, failure: undefined });
  }

  /** Adds a remark to a row (a measurement worth seeing next to pass/fail). */
  note(client: string, scenario: string, text: string): void {
    const row = this.find(client, scenario);
    row.note = row.note === undefined ? text : `${row.note}; ${text}`;
  }

  /** Runs `work` for a declared row, recording pass or fail and its duration; rethrows failures. */
  async time(client: string, scenario: string, work: () => Promise<void>): Promise<void> {
    const row = this.find(client, scenario);
    const started = performance.now();
    try {
      await work();
      row.outcome = "pass";
    } catch (err) {
      row.outcome = "fail";
      row.failure = (err instanceof Error ? err.message : String(err)).split("\n", 1)[0]?.slice(0, 160);
      throw err;
    } finally {
      row.seconds = (performance.now() - started) / 1000;
    }
  }

  private find(client: string, scenario: string): Row {
    const row = this.rows.find((r) => r.client === client && r.scenario === scenario);
    if (row === undefined) throw new Error(`no row declared for ${client} × ${scenario}`);
    return row;
  }

  render(): string {
    const header = ["client", "scenario", "result", "seconds", "notes"];
    const body = this.rows.map((r) => [
      r.client,
      r.scenario,
      r.outcome,
      r.seconds === undefined ? "-" : r.seconds.toFixed(1),
      r.note ?? "",
    ]);
    const widths = header.map((h, i) => Math.max(h.length, ...body.map((cells) => (cells[i] ?? "").length)));
    const line = (cells: string[]) =>
      cells
        .map((c, i) => c.padEnd(widths[i] ?? 0))
        .join(" | ")
        .trimEnd();
    const passed = this.rows.filter((r) => r.outcome === "pass").length;
    const failures = this.rows
      .filter((r) => r.failure !== undefined)
      .map((r) => `  ${r.client} × ${r.scenario}: ${r.failure}`);
    return [
      "",
      "end-to-end clients × scenarios",
      line(header),
      widths.map((w) => "-".repeat(w)).join("-|-"),
      ...body.map(line),
      `${passed} of ${this.rows.length} passed in ${((Date.now() - this.startedAt) / 1000).toFixed(0)} s`,
      ...(failures.length > 0 ? ["failures:", ...failures] : []),
      "",
    ].join("\n");
  }
}
