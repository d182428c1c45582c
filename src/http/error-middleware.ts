/**
 * The outermost middleware: every thrown error becomes the OCI error envelope with its status and headers
 * (Koa's own default would answer text/plain). 5xx are logged as errors, 4xx as info. Errors in a streamed body
 * after the headers went out cannot be rendered: those only reach `app.on("error")`, which logs them and makes
 * sure the socket is destroyed so the client sees a broken transfer instead of a hang.
 */
import type Koa from "koa";
import { RegistryError, renderErrors } from "../oci/errors.ts";
import type { RequestState } from "./request-context.ts";

export function errorMiddleware(): Koa.Middleware<RequestState> {
  return async (ctx, next) => {
    try {
      await next();
    } catch (thrown) {
      const err =
        thrown instanceof RegistryError ? thrown : new RegistryError("UNKNOWN", "internal error", { cause: thrown });
      const log = ctx.state.log;
      // Our own errors are expected outcomes (an upstream down, a bad name): no stack. Anything else is a bug.
      if (!(thrown instanceof RegistryError)) log?.error({ err: thrown }, "unhandled error");
      else if (err.status >= 500)
        log?.warn(
          { code: err.code, detail: err.detail, cause: (err.cause as Error | undefined)?.message },
          err.message,
        );
      else log?.info({ code: err.code }, err.message);
      if (ctx.headerSent) {
        ctx.res.destroy();
        return;
      }
      // Headers a handler set before failing belong to the answer that was not sent.
      for (const name of Object.keys(ctx.response.headers)) {
        if (name.toLowerCase() !== "x-request-id" && name.toLowerCase() !== "docker-distribution-api-version")
          ctx.remove(name);
      }
      ctx.status = err.status;
      ctx.set(err.headers);
      ctx.type = "application/json";
      const body = JSON.stringify(renderErrors([err]));
      if (ctx.method === "HEAD") ctx.length = Buffer.byteLength(body);
      else ctx.body = body;
    }
  };
}

/** `app.on("error")`: errors Koa could not render (a body stream failing mid-transfer, socket errors). */
export function onAppError(app: Koa): void {
  app.on("error", (err: Error, ctx?: Koa.ParameterizedContext<RequestState>) => {
    ctx?.res.destroy();
    const code = (err as NodeJS.ErrnoException).code;
    // A client that hangs up mid-transfer is normal traffic, not an error of ours.
    if (code === "ECONNRESET" || code === "EPIPE" || code === "ERR_STREAM_PREMATURE_CLOSE") return;
    (ctx?.state.log ?? console).warn({ err }, "response failed after headers were sent");
  });
}
