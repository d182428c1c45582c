// End-to-end: every real client pulls through the mirror, in the same scenarios (scenarios.ts), from two
// token-authenticated upstream registries standing in for docker.io and ghcr.io (world.ts), with images the
// harness builds (images.ts). One client at a time, each with its own upstreams, mirror and cache.
//
// Clients: dockerd (registry-mirrors), containerd (`ctr image pull --hosts-dir`, routed by ?ns=), podman
// (registries.conf mirrors: plain location for docker.io, path prefix for ghcr.io), skopeo with the same
// registries.conf, and skopeo addressing the mirror directly (docker://127.0.0.1:PORT/...).
//
// Keeping traffic on loopback: every client process (dockerd, containerd and each ctr, podman and skopeo
// call) runs in a private mount namespace (`unshare --mount --propagation private`, harness/
// loopback-namespace.ts) whose /etc/resolv.conf names only 127.0.0.1 and whose /etc/hosts maps the registry
// hosts (registry-1.docker.io, ghcr.io, ...) to 127.0.0.1. A client falling back to the real registry when
// the mirror fails can only reach loopback, where nothing answers: the fallback fails, and so does the test.
// Upstreams, token servers, relays and the mirror all listen on 127.0.0.1.
//
// `E2E_CLIENTS=podman,skopeo` runs a subset. A table of client × scenario results closes the output.
import { afterAll, describe } from "vitest";
import type { ClientFactory } from "./client.ts";
import { containerdClient } from "./clients/containerd.ts";
import { dockerdClient } from "./clients/dockerd.ts";
import { podmanClient } from "./clients/podman.ts";
import { skopeoDirectClient, skopeoRegistriesConfClient } from "./clients/skopeo.ts";
import { buildCatalogue } from "./images.ts";
import { defineClientScenarios } from "./scenarios.ts";
import { ScenarioTable } from "./summary.ts";

const ALL_CLIENTS: ClientFactory[] = [
  dockerdClient,
  containerdClient,
  podmanClient,
  skopeoRegistriesConfClient,
  skopeoDirectClient,
];

const wanted = process.env["E2E_CLIENTS"]
  ?.split(",")
  .map((s) => s.trim())
  .filter((s) => s !== "");
const clients = wanted === undefined ? ALL_CLIENTS : ALL_CLIENTS.filter((c) => wanted.includes(c.name));
if (clients.length === 0)
  throw new Error(
    `E2E_CLIENTS=${process.env["E2E_CLIENTS"]} names none of ${ALL_CLIENTS.map((c) => c.name).join(", ")}`,
  );

const catalogue = buildCatalogue();
const table = new ScenarioTable();
afterAll(() => {
  console.log(table.render());
});

describe.each(clients)("$name", (factory) => {
  defineClientScenarios(factory, catalogue, table);
});
