// A real S3-compatible server for tests: Ceph's RADOS Gateway on a one-node cluster (one mon, one OSD on
// `memstore`, cephx on, no mgr), from Debian's ceph-mon, ceph-osd and radosgw packages; what on-premises
// Kubernetes clusters run behind Rook. Everything listens on 127.0.0.1 on free ports, lives in its own temp dir and
// runs in the foreground (`-f`) as a child of the test, stopped by PID (or as containers: see below).
//
// Why the odd settings: RGW creates about eight pools and nothing shrinks their placement-group counts without a
// mgr (`mon max pg per osd`); memstore reports 1 GiB unless told otherwise, and RGW then answers 507 when full; with
// `auth … = none` radosgw never authenticates to the mon, so cephx stays on. The OSD takes a few seconds to exit
// after SIGTERM: stop() waits for every PID before the directory goes.
//
// With TEST_SERVICES=containers (services.ts) the same daemons and tools run from the ceph image of
// service-images.ts: one container per daemon (mon, OSD, gateway), each on the host's network and with the
// cluster's directory (config, keyrings, the mon's store, logs, admin sockets) mounted at the same path, and the
// admin tools (ceph-authtool, monmaptool, ceph, radosgw-admin) `docker exec`ed in one idle container beside
// them. A container per daemon rather than all three in one: stopGateway() is then `docker stop` of the
// gateway's container while the mon's and OSD's keep running with the data, startGateway() a new container on
// the same port, and each daemon's exit is seen as its container's, exactly as the host mode sees its PIDs.
import { randomUUID } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePortBelowEphemeral, waitFor } from "./processes.ts";
import { startService, startServiceTools, type ServiceProcess, type ServiceTools } from "./services.ts";

export interface S3Server {
  /** http://127.0.0.1:PORT, the RADOS Gateway's S3 endpoint (path-style addressing). */
  readonly endpoint: string;
  readonly region: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  /** A further S3 user with its own keys (owning nothing: what it may do is up to the buckets' policies). */
  createUser(uid: string): Promise<{ accessKeyId: string; secretAccessKey: string }>;
  /**
   * Stops the RADOS Gateway alone, by PID or by stopping its container (the mon and the OSD keep running, the
   * data stays): the S3 endpoint refuses connections until startGateway().
   */
  stopGateway(): Promise<void>;
  /** Starts the gateway again on the same port; resolves once it answers. */
  startGateway(): Promise<void>;
  /** Stops the gateway, the OSD and the mon (by PID, waiting for each) and deletes the cluster's directory. */
  dispose(): Promise<void>;
  /** Recent output of the daemons, for error messages. */
  output(): string;
}

const COMMAND_TIMEOUT_MS = 60_000;
const READY_TIMEOUT_MS = 90_000;
/** RGW answers 507 once memstore's device is full: room for the tests' blobs, in memory, only as used. */
const MEMSTORE_BYTES = 4 * 2 ** 30;
/** How much of each daemon's log file output() shows. */
const LOG_TAIL_CHARS = 4_000;

/** The end of each daemon's log file (where `-f` daemons write): what says why one did not come up. */
function logTails(logDir: string): string {
  try {
    return readdirSync(logDir)
      .filter((f) => f.endsWith(".log"))
      .map((f) => `${f} (end):\n${readFileSync(join(logDir, f), "utf8").slice(-LOG_TAIL_CHARS)}`)
      .join("\n");
  } catch {
    return "";
  }
}

/**
 * `memstoreBytes`: the OSD's in-memory device (default 4 GiB). Ceph stops accepting writes near full: RGW requests
 * then wait instead of failing, so a caller that stores more (the bench's FLEET: 1 GiB, plus distribution's copies
 * of every blob, whose deleted objects stay until RGW's garbage collection) asks for more. Memory is only used as
 * objects are written.
 */
export async function startS3(opts: { memstoreBytes?: number } = {}): Promise<S3Server> {
  const dir = await mkdtemp(join(tmpdir(), "harness-s3-"));
  for (const sub of ["mon", "osd", "log", "run", "rgw"]) await mkdir(join(dir, sub));
  // The monitor binds its ports seconds after this, the gateway ~10 s after: ports no connection can take meanwhile.
  const ports: number[] = [];
  while (ports.length < 3) {
    const port = await freePortBelowEphemeral();
    if (!ports.includes(port)) ports.push(port);
  }
  const [monV2, monV1, rgwPort] = ports as [number, number, number];
  const conf = join(dir, "ceph.conf");
  const keyring = join(dir, "keyring");
  const fsid = randomUUID();
  await writeFile(
    conf,
    [
      "[global]",
      `fsid = ${fsid}`,
      `mon host = v2:127.0.0.1:${monV2},v1:127.0.0.1:${monV1}`,
      `keyring = ${keyring}`,
      // Every daemon binds loopback only.
      "public addr = 127.0.0.1",
      "cluster addr = 127.0.0.1",
      "osd pool default size = 1",
      "osd pool default min size = 1",
      "mon allow pool size one = true",
      "osd crush chooseleaf type = 0",
      "mon max pg per osd = 1000",
      "mon data avail crit = 0",
      "mon warn on pool no redundancy = false",
      `run dir = ${dir}/run`,
      `log file = ${dir}/log/$name.log`,
      `pid file = ${dir}/run/$name.pid`,
      `admin socket = ${dir}/run/$name.asok`,
      "[mon.a]",
      `mon data = ${dir}/mon`,
      "[osd.0]",
      `osd data = ${dir}/osd`,
      `keyring = ${dir}/osd/keyring`,
      "osd objectstore = memstore",
      `memstore device bytes = ${opts.memstoreBytes ?? MEMSTORE_BYTES}`,
      "[client.rgw.r]",
      `rgw data = ${dir}/rgw`,
      `rgw frontends = beast endpoint=127.0.0.1:${rgwPort}`,
      "",
    ].join("\n"),
  );
  const env = { ...process.env, CEPH_CONF: conf } as Record<string, string>;
  const daemons: ServiceProcess[] = [];
  const output = () => [...daemons.map((d) => `${d.name}:\n${d.output()}`), logTails(join(dir, "log"))].join("\n");
  let tools: ServiceTools | undefined;
  const run = async (cmd: string, args: string[]): Promise<string> => {
    tools ??= await startServiceTools({ image: "ceph", name: "ceph tools", env, paths: [dir] });
    const res = await tools.run(cmd, args, COMMAND_TIMEOUT_MS);
    if (res.code !== 0)
      throw new Error(`${cmd} ${args.join(" ")} exited ${res.code}\n${res.stdout}\n${res.stderr}\n${output()}`);
    return res.stdout;
  };
  const daemon = async (cmd: string, args: string[], name: string): Promise<ServiceProcess> => {
    const started = await startService({
      image: "ceph",
      cmd,
      args,
      name,
      env,
      stopTimeoutMs: 20_000,
      paths: [dir],
      // The daemons handle SIGTERM themselves, but none is ever sent SIGSTOP: an init costs nothing here.
      init: true,
    });
    daemons.push(started);
    return started;
  };
  const dispose = async (): Promise<void> => {
    // The gateway first, the mon last: each stops while what it talks to is still there.
    for (const d of [...daemons].reverse()) await d.stop();
    await tools?.stop();
    await rm(dir, { recursive: true, force: true });
  };

  try {
    await run("ceph-authtool", ["--create-keyring", keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"]);
    await run("ceph-authtool", [
      keyring,
      "--gen-key",
      "-n",
      "client.admin",
      "--cap",
      "mon",
      "allow *",
      "--cap",
      "osd",
      "allow *",
      "--cap",
      "mgr",
      "allow *",
    ]);
    await run("ceph-authtool", [
      keyring,
      "--gen-key",
      "-n",
      "client.rgw.r",
      "--cap",
      "mon",
      "allow rw",
      "--cap",
      "osd",
      "allow rwx",
    ]);
    const monmap = join(dir, "monmap");
    await run("monmaptool", [
      "--create",
      "--addv",
      "a",
      `[v2:127.0.0.1:${monV2},v1:127.0.0.1:${monV1}]`,
      "--fsid",
      fsid,
      monmap,
    ]);
    await run("ceph-mon", ["--id", "a", "--mkfs", "--keyring", keyring, "--monmap", monmap]);
    await daemon("ceph-mon", ["-f", "--id", "a"], "ceph-mon");
    const osd = (await run("ceph", ["osd", "create"])).trim();
    if (osd !== "0") throw new Error(`expected the first OSD to be osd.0, got ${JSON.stringify(osd)}`);
    await run("ceph-osd", ["--id", osd, "--mkfs", "--mkkey", "--no-mon-config"]);
    await run("ceph", [
      "auth",
      "add",
      `osd.${osd}`,
      "osd",
      "allow *",
      "mon",
      "allow profile osd",
      "-i",
      `${dir}/osd/keyring`,
    ]);
    await run("ceph", ["osd", "crush", "add", `osd.${osd}`, "1", "root=default"]);
    await daemon("ceph-osd", ["-f", "--id", osd], "ceph-osd");
    const startGateway = () => daemon("radosgw", ["-f", "-n", "client.rgw.r", "-k", keyring], "radosgw");
    let gateway = await startGateway();
    const endpoint = `http://127.0.0.1:${rgwPort}`;
    const gatewayAnswers = () =>
      waitFor(
        async () => {
          for (const d of daemons) if (!d.running()) throw new Error(`${d.name} exited\n${output()}`);
          return fetch(`${endpoint}/`, { signal: AbortSignal.timeout(2_000) }).then(
            () => true,
            () => false,
          );
        },
        { timeoutMs: READY_TIMEOUT_MS, intervalMs: 250, what: `radosgw on ${endpoint}` },
      );
    await gatewayAnswers();
    const createUser = async (uid: string) => {
      const accessKeyId = `K${randomUUID().replaceAll("-", "").slice(0, 19).toUpperCase()}`;
      const secretAccessKey = randomUUID().replaceAll("-", "") + randomUUID().replaceAll("-", "").slice(0, 8);
      await run("radosgw-admin", [
        "user",
        "create",
        `--uid=${uid}`,
        `--display-name=${uid}`,
        `--access-key=${accessKeyId}`,
        `--secret-key=${secretAccessKey}`,
      ]);
      return { accessKeyId, secretAccessKey };
    };
    const { accessKeyId, secretAccessKey } = await createUser("test");
    const stopGateway = async (): Promise<void> => {
      await gateway.stop();
      daemons.splice(daemons.indexOf(gateway), 1);
    };
    const restartGateway = async (): Promise<void> => {
      if (gateway.running()) throw new Error("radosgw is running already");
      gateway = await startGateway();
      await gatewayAnswers();
    };
    return {
      endpoint,
      region: "us-east-1",
      accessKeyId,
      secretAccessKey,
      createUser,
      stopGateway,
      startGateway: restartGateway,
      dispose,
      output,
    };
  } catch (err) {
    await dispose();
    throw err;
  }
}
