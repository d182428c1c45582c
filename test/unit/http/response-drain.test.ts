/**
 * The response drain on a real Koa app behind the outermost error middleware, over loopback HTTP: responses are
 * counted until they close (sent or cut), `settled` waits for them (bounded), and answers given once the
 * shutdown has begun carry `Connection: close`, error answers too.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { PassThrough } from "node:stream";
import Koa from "koa";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { errorMiddleware } from "../../../src/http/error-middleware.ts";
import { ResponseDrain } from "../../../src/http/response-drain.ts";
import { RegistryError } from "../../../src/oci/errors.ts";
import { waitFor } from "../../harness/processes.ts";

let drain: ResponseDrain;
let server: Server;
let base: string;
/** The body of the streamed answer: the test writes to it and ends it. */
let stream: PassThrough | undefined;

beforeAll(async () => {
  drain = new ResponseDrain();
  const app = new Koa();
  app.silent = true; // the client that goes away below breaks its body's pipe: expected, not worth a stack
  app.use(drain.middleware());
  app.use(errorMiddleware());
  app.use((ctx) => {
    if (ctx.path === "/stream") {
      stream = new PassThrough();
      stream.write("first;"); // the headers leave with the first body bytes
      ctx.body = stream;
    } else if (ctx.path === "/error") {
      throw new RegistryError("BLOB_UNKNOWN", "no such blob");
    } else {
      ctx.body = { ok: true };
    }
  });
  server = createServer(app.callback());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

describe("ResponseDrain", () => {
  it("counts a response until it has been sent, and settles when none is left", async () => {
    const res = await request(`${base}/stream`);
    expect(drain.inFlight).toBe(1);
    // A bounded wait with the response still open: it is reported as still in progress.
    expect(await drain.settled(50)).toBe(1);
    const settled = drain.settled(60_000);
    stream!.end("the end");
    expect(await res.body.text()).toBe("first;the end");
    expect(await settled).toBe(0);
    expect(drain.inFlight).toBe(0);
  });

  it("stops counting a response whose client went away", async () => {
    const res = await request(`${base}/stream`);
    expect(drain.inFlight).toBe(1);
    res.body.destroy();
    await waitFor(async () => drain.inFlight === 0, { timeoutMs: 10_000, what: "the cut response to close" });
    stream!.destroy();
  });

  it("keeps connections alive before the shutdown, and closes them after each answer once it has begun", async () => {
    const before = await request(`${base}/ok`);
    await before.body.text();
    expect(before.headers.connection).not.toBe("close");
    expect(drain.shuttingDown).toBe(false);

    drain.begin();
    expect(drain.shuttingDown).toBe(true);
    const ok = await request(`${base}/ok`);
    expect(await ok.body.json()).toEqual({ ok: true });
    expect(ok.headers.connection).toBe("close");
    const failed = await request(`${base}/error`);
    expect(failed.statusCode).toBe(404);
    await failed.body.text();
    expect(failed.headers.connection).toBe("close");
    expect(await drain.settled(60_000)).toBe(0);
  });
});
