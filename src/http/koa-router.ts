/**
 * @koa/router, loaded through its CommonJS build. Its ES module build imports node:http as an ES module: Node
 * builds that view of a built-in by reading every export, and node:http's lazy WebSocket, CloseEvent and
 * MessageEvent exports then load Node's bundled undici, ~55 ms of CPU and ~10 MiB resident at every start for
 * classes the mirror never uses (test/integration/lazy-loading.test.ts). The CommonJS build `require`s
 * node:http, which reads no export. Same package, same version, same API.
 */
import { createRequire } from "node:module";
import type KoaRouter from "@koa/router";

export type { RouterContext } from "@koa/router";

const Router = createRequire(import.meta.url)("@koa/router") as typeof KoaRouter;
export default Router;
