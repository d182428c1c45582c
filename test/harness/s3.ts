// A real S3-compatible server for tests: Ceph's RADOS Gateway on a one-node cluster (one mon, one OSD on
// `memstore`, cephx on, no mgr), from Debian's ceph-mon, ceph-osd and radosgw packages; what on-premises
// Kubernetes clusters run behind Rook. Everything listens on 127.0.0.1 on free ports, lives in its own temp dir and
// runs in the foreground (`-f`) as a child of the test, stopped by PID.
//
// Why the odd settings: RGW creates about eight pools and nothing shrinks their placement-group counts without a
// mgr (`mon max pg per osd`); memstore reports 1 GiB unless told otherwise, and RGW then answers 507 when full; with
// `auth … = none` radosgw never authenticates to the mon, so cephx stays on. The OSD takes a few seconds to exit
// after SIGTERM: stop() waits for every PID before the directory goes.
import { randomUUID } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, runCommand, startProcess, waitFor, type ManagedProcess } from "./processes.ts";

export interface S3Server {
  /** http://127.0.0.1:PORT, the RADOS Gateway's S3 endpoint (path-style addressing). */
  readonly endpoint: string;
  readonly region: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  /** A further S3 user with its own keys (owning nothing: what it may do is up to the buckets' policies). */
  createUser(uid: string): Promise<{ accessKeyId: string; secretAccessKey: string }>;
  /**
   * Stops the RADOS Gateway alone, by PID (the mon and the OSD keep running, the data stays): the S3 endpoint
   * refuses connections until startGateway().
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

export async function startS3(): Promise<S3Server> {
  const dir = await mkdtemp(join(tmpdir(), "harness-s3-"));
  for (const sub of ["mon", "osd", "log", "run", "rgw"]) await mkdir(join(dir, sub));
  const [monV2, monV1, rgwPort] = [await freePort(), await freePort(), await freePort()];
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
      `memstore device bytes = ${MEMSTORE_BYTES}`,
      "[client.rgw.r]",
      `rgw data = ${dir}/rgw`,
      `rgw frontends = beast endpoint=127.0.0.1:${rgwPort}`,
      "",
    ].join("\n"),
  );
  const env = { ...process.env, CEPH_CONF: conf } as Record<string, string>;
  const daemons: ManagedProcess[] = [];
  const output = () => daemons.map((d) => `${d.name}:\n${d.output()}`).join("\n");
  const run = async (cmd: string, args: string[]): Promise<string> => {
    const res = await runCommand(cmd, args, { env, timeoutMs: COMMAND_TIMEOUT_MS });
    if (res.code !== 0)
      throw new Error(`${cmd} ${args.join(" ")} exited ${res.code}\n${res.stdout}\n${res.stderr}\n${output()}`);
    return res.stdout;
  };
  const daemon = (cmd: string, args: string[], name: string): ManagedProcess => {
    const started = startProcess(cmd, args, { name, env, stopTimeoutMs: 20_000 });
    daemons.push(started);
    return started;
  };
  const dispose = async (): Promise<void> => {
    // The gateway first, the mon last: each stops while what it talks to is still there.
    for (const d of [...daemons].reverse()) await d.stop();
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
    daemon("ceph-mon", ["-f", "--id", "a"], "ceph-mon");
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
    daemon("ceph-osd", ["-f", "--id", osd], "ceph-osd");
    const startGateway = () => daemon("radosgw", ["-f", "-n", "client.rgw.r", "-k", keyring], "radosgw");
    let gateway = startGateway();
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
      gateway = startGateway();
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
