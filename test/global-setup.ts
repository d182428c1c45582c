// vitest's global setup: with TEST_SERVICES=containers, the Docker engine and the service images for
// the whole run (test/harness/services.ts). Host mode (the default) needs nothing here.
//
// The engine is the one DOCKER_HOST names; without one, a private dockerd of the harness (dockerd.ts: no bridge,
// no iptables, loopback-only name resolution; with TEST_IMAGES=official it keeps the machine's name resolution,
// to pull), started here and stopped after the run. Testcontainers is told to use 127.0.0.1 as the containers'
// host (there is no bridge network to find a gateway on) and to run without its reaper (Ryuk's image cannot be
// pulled here): the harness stops every container it starts.
//
// An interrupted run must not leave that dockerd (and the containers in it) running: vitest skips the global
// teardown on SIGINT, so a SIGINT or SIGTERM handler here sends dockerd SIGTERM at once (it then stops its
// containers and its containerd by itself) and waits, bounded, for it; a run killed outright is cleaned up by the
// next one (services.ts: reapAbandonedDockerds).
import type { Dockerd } from "./harness/dockerd.ts";
import { runCommand } from "./harness/processes.ts";
import { ensureServiceImages, imageSource } from "./harness/service-images.ts";
import {
  reapAbandonedDockerds,
  recordRunDockerd,
  serviceMode,
  startServicesDockerd,
  useDockerd,
} from "./harness/services.ts";

let dockerd: Dockerd | undefined;
let forget: (() => Promise<void>) | undefined;
const SIGNAL_STOP_MS = 30_000;

const log = (line: string) => process.stderr.write(`[services] ${line}\n`);

function onSignal(signal: NodeJS.Signals): void {
  process.removeListener("SIGINT", onSignal);
  process.removeListener("SIGTERM", onSignal);
  const running = dockerd;
  if (running !== undefined) {
    log(`${signal}: stopping the private dockerd (pid ${running.pid})`);
    // Sent synchronously: if the process ends before the wait below does, dockerd still shuts down.
    try {
      process.kill(running.pid, "SIGTERM");
    } catch {
      // already gone
    }
  }
  const stopped = running === undefined ? Promise.resolve() : running.stop().then(() => forget?.());
  const bound = new Promise((resolve) => setTimeout(resolve, SIGNAL_STOP_MS).unref());
  // Then the signal again, to whatever else listens for it (or the default: the process ends with it).
  void Promise.race([stopped.catch(() => undefined), bound]).then(() => process.kill(process.pid, signal));
}

export async function setup(): Promise<void> {
  if (serviceMode() !== "containers") return;
  const started = Date.now();
  if (process.env.DOCKER_HOST === undefined) {
    await reapAbandonedDockerds(log);
    dockerd = await startServicesDockerd({ hostDns: imageSource() === "official" });
    forget = await recordRunDockerd(dockerd);
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
    useDockerd(dockerd);
  }
  process.env.TESTCONTAINERS_HOST_OVERRIDE ??= "127.0.0.1";
  process.env.TESTCONTAINERS_RYUK_DISABLED ??= "true";
  const docker = (args: string[], timeoutMs: number) =>
    runCommand("docker", args, { timeoutMs, env: { ...(process.env as Record<string, string>) } });
  const result = await ensureServiceImages(docker, (line) => process.stderr.write(`[service-images] ${line}\n`));
  const steps = result.steps.map((s) => `${s.step} ${s.image} ${(s.ms / 1000).toFixed(1)} s`).join(", ");
  log(
    `containers on ${process.env.DOCKER_HOST}${dockerd ? " (a private dockerd)" : ""}: ` +
      `${Object.values(result.images).join(", ")} (${steps}; ready after ${((Date.now() - started) / 1000).toFixed(1)} s)`,
  );
}

export async function teardown(): Promise<void> {
  process.removeListener("SIGINT", onSignal);
  process.removeListener("SIGTERM", onSignal);
  await dockerd?.stop();
  await forget?.();
}
