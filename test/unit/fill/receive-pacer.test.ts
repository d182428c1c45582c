import { constants, PerformanceObserver, type PerformanceEntry } from "node:perf_hooks";
import { describe, expect, it } from "vitest";
import { ReceivePacer } from "../../../src/fill/receive-pacer.ts";

describe("ReceivePacer", () => {
  it("asks for one minor collection per interval of received bytes, carrying nothing over", () => {
    const calls: unknown[] = [];
    const pacer = new ReceivePacer({ everyBytes: 100, gc: (opts) => calls.push(opts) });
    pacer.received(60);
    expect(calls).toEqual([]);
    pacer.received(60); // 120 ≥ 100
    expect(calls).toEqual([{ type: "minor" }]);
    pacer.received(99);
    expect(calls).toHaveLength(1);
    pacer.received(1);
    expect(calls).toHaveLength(2);
    expect(pacer.collections).toBe(2);
  });

  it("does nothing without a gc function", () => {
    const pacer = new ReceivePacer({ everyBytes: 1, gc: null });
    expect(pacer.active).toBe(false);
    pacer.received(1_000);
    expect(pacer.collections).toBe(0);
  });

  it("gets V8's gc at run time and really runs young-generation collections with it", async () => {
    const pacer = new ReceivePacer({ everyBytes: 1024 * 1024 });
    expect(pacer.active).toBe(true);
    const minors: PerformanceEntry[] = [];
    const observer = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        const detail = (e as PerformanceEntry & { detail?: { kind?: number } }).detail;
        if (detail?.kind === constants.NODE_PERFORMANCE_GC_MINOR) minors.push(e);
      }
    });
    observer.observe({ entryTypes: ["gc"] });
    try {
      // Garbage as a download makes it: buffers received and dropped, far too little heap to trigger a scavenge.
      for (let i = 0; i < 8; i++) pacer.received(Buffer.allocUnsafeSlow(1024 * 1024).length);
      await new Promise((resolve) => setTimeout(resolve, 50)); // gc entries are delivered asynchronously
    } finally {
      observer.disconnect();
    }
    expect(pacer.collections).toBe(8);
    expect(minors.length).toBeGreaterThanOrEqual(8);
    expect(typeof (globalThis as { gc?: unknown }).gc).toBe("undefined"); // nothing leaked into the global scope
  });
});
