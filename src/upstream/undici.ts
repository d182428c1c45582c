/**
 * The parts of undici the mirror's upstream clients use (Agent, its request API, buildConnector), each required
 * from its own file. The package's index loads all of undici besides (fetch, WebSocket, EventSource, the cache
 * stores and interceptors, the mock agents: 109 modules): ~60 ms of CPU and ~13 MiB resident at every start for
 * code the mirror never runs (test/integration/lazy-loading.test.ts). Same package, same classes; the one thing
 * the index does besides exporting is to put the request API (request, stream, pipeline, connect, upgrade) on
 * every dispatcher, which is done here the same way. The CLI commands import the index (they use `request`).
 */
import { createRequire } from "node:module";
import type * as Undici from "undici";

const require = createRequire(import.meta.url);

const Dispatcher = require("undici/lib/dispatcher/dispatcher.js") as { prototype: object };
Object.assign(Dispatcher.prototype, require("undici/lib/api/index.js") as object);

export const Agent = require("undici/lib/dispatcher/agent.js") as typeof Undici.Agent;
export type Agent = Undici.Agent;
export const buildConnector = require("undici/lib/core/connect.js") as typeof Undici.buildConnector;
export type { Dispatcher } from "undici";
