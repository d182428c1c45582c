// vitest's global setup: with TEST_SERVICES=containers, the Docker engine and the service images for
// the whole run (test/harness/services.ts). Host mode (the default) needs nothing here.
//
// The engine is the one DOCKER_HOST names; without one, a private dockerd of the harness (dockerd.ts: no bridge,
// no iptables, loopback-only name resolution), started here and stopped after the run. Testcontainers is told to
// use 127.0.0.1 as the containers' host (there is no bridge network to find a gateway on) and to run without
// its reaper (Ryuk's image cannot be pulled here): the harness stops every container it starts.
import type { Dockerd } from "./harness/dockerd.ts";
import { runCommand } from "./harness/processes.ts";
import { ensureServiceImages } from "./harness/service-images.ts";
import { serviceMode, startServicesDockerd, useDockerd } from "./harness/services.ts";

let dockerd: Dockerd | undefined;

export async function setup(): Promise<void> {
  if (serviceMode() !== "containers") return;
  const started = Date.now();
  if (process.env.DOCKER_HOST === undefined) {
    dockerd = await startServicesDockerd();
    useDockerd(dockerd);
  }
  process.env.TESTCONTAINERS_HOST_OVERRIDE ??= "127.0.0.1";
  process.env.TESTCONTAINERS_RYUK_DISABLED ??= "true";
  const docker = (args: string[], timeoutMs: number) =>
    runCommand("docker", args, { timeoutMs, env: { ...(process.env as Record<string, string>) } });
  const result = await ensureServiceImages(docker, (line) => process.stderr.write(`[service-images] ${line}\n`));
  const steps = result.steps.map((s) => `${s.step} ${(s.ms / 1000).toFixed(1)} s`).join(", ");
  process.stderr.write(
    `[services] containers on ${process.env.DOCKER_HOST}${dockerd ? " (a private dockerd)" : ""}: ` +
      `${Object.values(result.images).join(", ")} (${steps}; ready after ${((Date.now() - started) / 1000).toFixed(1)} s)\n`,
  );
}

export async function teardown(): Promise<void> {
  await dockerd?.stop();
}
