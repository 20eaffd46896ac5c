import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { promisify } from "node:util";
import {
  CreateBucketCommand,
  PutBucketVersioningCommand,
  PutObjectCommand,
} from "@aws-sdk/client-s3";
import { s3Client, type ObjectStoreConnection } from "../../src/adapters/s3/client.ts";
import { agentSources } from "./agents.ts";
import { zipOf } from "./hostile-archives.ts";
import { freePort } from "./ports.ts";

const run = promisify(execFile);

/** A real S3 server for one test file: Ceph's RADOS Gateway on loopback, ~1.5 s to start. */
export interface CephS3 {
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** Makes a bucket (versioned: `versioned`), returns its name. */
  bucket(name: string, options?: { versioned?: boolean }): Promise<string>;
  /** A connection to s3://bucket/prefix on this server. */
  connection(url: string): ObjectStoreConnection;
  /**
   * `berth serve` arguments keeping everything at `url` on this server: its keys in a config
   * file (secrets are not flags), its endpoint, path-style addressing.
   */
  berthArgs(url: string): string[];
  /** Stops only the gateway (data kept: the monitor and OSD keep running); startGateway again. */
  stopGateway(): Promise<void>;
  startGateway(): Promise<void>;
  stop(): Promise<void>;
}

/** Why Ceph cannot run here, if it cannot: the Debian packages scripts/setup.sh installs. */
export function cephMissing(): string | undefined {
  if (process.getuid?.() !== 0) return "Ceph's test cluster is started as root";
  try {
    readFileSync("/usr/bin/radosgw");
    return undefined;
  } catch {
    return "radosgw is not installed (scripts/setup.sh installs radosgw ceph-mon ceph-osd)";
  }
}

/**
 * Starts a single-node Ceph (one monitor, one in-memory OSD) and a gateway, all state in a
 * temporary folder, on free loopback ports, with one S3 user. Memstore keeps data only while
 * the OSD runs: stopping the gateway alone keeps it. `host`: the address the gateway listens
 * on instead of loopback (a test network's host address, for nodes in network namespaces).
 */
export async function startCephS3(options: { host?: string } = {}): Promise<CephS3> {
  const host = options.host ?? "127.0.0.1";
  const dir = mkdtempSync(join(tmpdir(), "berth-test-ceph-"));
  const [rgwPort, monPort] = [await freePort(), await freePort()];
  const conf = join(dir, "ceph.conf");
  for (const sub of ["mon/a", "osd/0", "run", "log", "rgw"])
    mkdirSync(join(dir, sub), { recursive: true });
  const env = { ...process.env, CEPH_CONF: conf };
  const ceph = (program: string, args: string[]) => run(program, args, { env });
  // The monitor's admin commands answer EPERM for a moment after it starts, while it settles
  // its maps (seen: "problem getting command descriptions"): retried, they succeed.
  const admin = async (args: string[]) => {
    let result: Awaited<ReturnType<typeof ceph>> | undefined;
    await until(
      async () => {
        result = await ceph("ceph", args);
      },
      `ceph ${args.join(" ")}`,
    );
    return result ?? { stdout: "", stderr: "" };
  };
  const accessKeyId = "berthtestkey";
  const secretAccessKey = "berthtestsecret";
  const endpoint = `http://${host}:${rgwPort}`;
  const stopAll = async (): Promise<void> => {
    for (const name of ["client.rgw.a", "osd.0", "mon.a"]) await stopDaemon(dir, name);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const fsid = randomUUID();
    writeFileSync(conf, cephConf(dir, { host, port: rgwPort }, monPort, fsid));
    const keyring = join(dir, "keyring");
    await ceph("ceph-authtool", [
      "--create-keyring",
      keyring,
      "--gen-key",
      "-n",
      "mon.",
      "--cap",
      "mon",
      "allow *",
    ]);
    await ceph("monmaptool", [
      "--create",
      "--fsid",
      fsid,
      "--addv",
      "a",
      `[v1:127.0.0.1:${monPort}]`,
      join(dir, "monmap"),
    ]);
    await ceph("ceph-mon", [
      "--mkfs",
      "-i",
      "a",
      "--monmap",
      join(dir, "monmap"),
      "--keyring",
      keyring,
    ]);
    await ceph("ceph-mon", ["-i", "a"]);
    await until(() => ceph("ceph", ["-s", "--connect-timeout", "2"]), "the monitor");
    const osdUuid = randomUUID();
    const osdId = (await admin(["osd", "new", osdUuid])).stdout.trim();
    await ceph("ceph-osd", ["-i", osdId, "--mkfs", "--osd-uuid", osdUuid]);
    await admin(["osd", "crush", "add", `osd.${osdId}`, "1.0", "root=default", "host=localhost"]);
    await ceph("ceph-osd", ["-i", osdId]);
    await until(async () => {
      if (!(await ceph("ceph", ["osd", "stat"])).stdout.includes("1 up")) throw new Error("down");
    }, "the OSD");
    const startGateway = async (): Promise<void> => {
      await ceph("radosgw", ["-n", "client.rgw.a"]);
      await until(() => fetch(endpoint), "the gateway");
    };
    await startGateway();
    await ceph("radosgw-admin", [
      "user",
      "create",
      "--uid=test",
      "--display-name=test",
      `--access-key=${accessKeyId}`,
      `--secret=${secretAccessKey}`,
    ]);
    const connection = (url: string): ObjectStoreConnection => ({
      url,
      endpoint,
      region: "us-east-1",
      forcePathStyle: true,
      credentials: { accessKeyId, secretAccessKey },
    });
    const config = join(dir, "berth.json");
    writeFileSync(
      config,
      JSON.stringify({
        objectStoreAccessKeyId: accessKeyId,
        objectStoreSecretAccessKey: secretAccessKey,
      }),
    );
    return {
      endpoint,
      accessKeyId,
      secretAccessKey,
      connection,
      berthArgs: (url) => [
        "--config",
        config,
        "--object-store-url",
        url,
        "--object-store-endpoint",
        endpoint,
        "--object-store-force-path-style",
        "true",
      ],
      bucket: async (name, options = {}) => {
        const client = s3Client(connection(`s3://${name}`));
        await client.send(new CreateBucketCommand({ Bucket: name }));
        if (options.versioned === true) {
          await client.send(
            new PutBucketVersioningCommand({
              Bucket: name,
              VersioningConfiguration: { Status: "Enabled" },
            }),
          );
        }
        return name;
      },
      stopGateway: () => stopDaemon(dir, "client.rgw.a"),
      startGateway,
      stop: stopAll,
    };
  } catch (error) {
    await stopAll();
    throw error;
  }
}

/** Puts the probe agent, zipped, at s3://`bucket`/`key` on `server`: code a runtime can name. */
export async function putProbeZip(server: CephS3, bucket: string, key: string): Promise<void> {
  const s3 = s3Client(server.connection(`s3://${bucket}`));
  try {
    const probe = readFileSync(join(agentSources.probe, "main.js"), "utf8");
    await s3.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: key,
        Body: zipOf([{ path: "main.js", content: probe }]),
      }),
    );
  } finally {
    s3.destroy();
  }
}

function cephConf(
  dir: string,
  gateway: { host: string; port: number },
  monPort: number,
  fsid: string,
): string {
  return `[global]
fsid = ${fsid}
mon_host = v1:127.0.0.1:${monPort}
mon_initial_members = a
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr2 = false
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
auth_allow_insecure_global_id_reclaim = true
mon_warn_on_insecure_global_id_reclaim_allowed = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
run_dir = ${dir}/run
admin_socket = ${dir}/run/$name.asok
log_file = ${dir}/log/$name.log
pid_file = ${dir}/run/$name.pid
keyring = ${dir}/keyring
[mon]
mon_data = ${dir}/mon/$id
mon_data_avail_warn = 1
mon_data_avail_crit = 1
paxos_propose_interval = 0.05
[osd]
osd_data = ${dir}/osd/$id
osd_objectstore = memstore
memstore_device_bytes = 2147483648
osd_max_object_size = 134217728
osd_class_dir = /usr/lib/x86_64-linux-gnu/rados-classes
osd_crush_update_on_start = false
osd_class_update_on_start = false
[client.rgw.a]
rgw_frontends = beast endpoint=${gateway.host}:${gateway.port} tcp_nodelay=1
rgw_data = ${dir}/rgw
rgw_dns_name = localhost
rgw_thread_pool_size = 64
`;
}

/** Stops a daemon by its pid file: SIGTERM, then SIGKILL if it has not gone within 1 s. */
async function stopDaemon(dir: string, name: string): Promise<void> {
  const pidFile = join(dir, "run", `${name}.pid`);
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile, "utf8").trim());
  } catch {
    return;
  }
  const alive = (): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (alive()) process.kill(pid, "SIGTERM");
  for (let waited = 0; alive() && waited < 1000; waited += 20) await delay(20);
  if (alive()) process.kill(pid, "SIGKILL");
  for (let waited = 0; alive() && waited < 5000; waited += 20) await delay(20);
  rmSync(pidFile, { force: true });
}

/** Retries `attempt` every 100 ms until it succeeds, for at most 60 s. */
async function until(attempt: () => Promise<unknown>, what: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      await attempt();
      return;
    } catch (error) {
      if (Date.now() > deadline)
        throw new Error(`${what} did not come up in 60 s`, { cause: error });
      await delay(100);
    }
  }
}
