import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { chownSync, closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { Client } from "pg";
import { freePort } from "./ports.ts";

/** Debian's `postgresql` package (scripts/setup.sh installs it). */
const binaries = "/usr/lib/postgresql/15/bin";

/** A real PostgreSQL server for one test file: a fresh cluster in a temp dir, trust auth. */
export interface TestPostgres {
  /** The server's `postgres` database, as the superuser `postgres` (no password). */
  url: string;
  /** Creates an empty database with a name of its own; resolves to its URL. */
  freshDatabase(): Promise<string>;
  /** Fast shutdown, then starts again on the same address, port and data. */
  restart(): Promise<void>;
  /** Stops the server and removes its files; calling it again does nothing. */
  stop(): Promise<void>;
}

/** Why a real PostgreSQL cannot run here, if it cannot. */
export function postgresMissing(): string | undefined {
  if (process.getuid?.() !== 0) return "the test PostgreSQL is started as root (as user postgres)";
  try {
    readFileSync(join(binaries, "postgres"));
  } catch {
    return `PostgreSQL 15 is not installed in ${binaries} (scripts/setup.sh installs postgresql)`;
  }
  if (postgresUser() === undefined) return "there is no postgres user (the postgresql package)";
  return undefined;
}

/**
 * Starts PostgreSQL on a free port of `host` (default loopback; a bridge address makes it
 * reachable from network namespaces), with fsync off: test data need not survive a power cut.
 */
export async function startPostgres(options: { host?: string } = {}): Promise<TestPostgres> {
  const user = postgresUser();
  if (user === undefined) throw new Error("there is no postgres user");
  const host = options.host ?? "127.0.0.1";
  const dir = mkdtempSync(join(tmpdir(), "berth-test-pg-"));
  chownSync(dir, user.uid, user.gid);
  const data = join(dir, "data");
  const port = await freePort();
  const url = `postgres://postgres@${host}:${port}/postgres`;
  let server: ChildProcess | undefined;
  let stopped = false;

  const start = async (): Promise<void> => {
    server = startServer(dir, host, port, user);
    await untilAccepting(url, server, join(dir, "server.log"));
  };
  const shutdown = async (): Promise<void> => {
    if (server !== undefined) await stopServer(server);
    server = undefined;
  };
  try {
    await runAs(user, join(binaries, "initdb"), [
      ...["-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "--locale=C.UTF-8"],
      "--encoding=UTF8",
    ]);
    // Any address may connect without a password: the bridge's peers are the test's own nodes.
    await writeFile(
      join(data, "pg_hba.conf"),
      "local all all trust\nhost all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n",
    );
    await start();
  } catch (error) {
    await shutdown();
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }

  let databases = 0;
  return {
    url,
    freshDatabase: async () => {
      const name = `berth_test_${(databases += 1)}_${randomUUID().slice(0, 8)}`;
      await withClient(url, (client) => client.query(`CREATE DATABASE ${name}`));
      return `postgres://postgres@${host}:${port}/${name}`;
    },
    restart: async () => {
      await shutdown();
      await start();
    },
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await shutdown();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

interface SystemUser {
  uid: number;
  gid: number;
}

function postgresUser(): SystemUser | undefined {
  const line = readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .find((entry) => entry.startsWith("postgres:"));
  const [, , uid, gid] = line?.split(":") ?? [];
  return uid === undefined || gid === undefined
    ? undefined
    : { uid: Number(uid), gid: Number(gid) };
}

/** Runs a program as `user` to completion; rejects with its output when it fails. */
function runAs(user: SystemUser, program: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { ...user, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code === 0) resolve();
      else reject(new Error(`${program} exited with ${code}: ${output}`));
    });
  });
}

/** The postmaster itself as our child (spawned as postgres), so we can signal it and await it. */
function startServer(dir: string, host: string, port: number, user: SystemUser): ChildProcess {
  const log = openSync(join(dir, "server.log"), "a");
  chownSync(join(dir, "server.log"), user.uid, user.gid);
  const settings = {
    listen_addresses: host,
    port: String(port),
    unix_socket_directories: dir,
    fsync: "off",
    synchronous_commit: "off",
    full_page_writes: "off",
    // Three nodes' pools and the contract suites' several stores at once.
    max_connections: "300",
  };
  const args = Object.entries(settings).flatMap(([name, value]) => ["-c", `${name}=${value}`]);
  const child = spawn(join(binaries, "postgres"), ["-D", join(dir, "data"), ...args], {
    ...user,
    stdio: ["ignore", log, log],
  });
  closeSync(log);
  return child;
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once("exit", () => {
      resolve();
    });
  });
}

/** Fast shutdown (SIGINT: sessions are ended, the data kept); SIGKILL if it takes over 10 s. */
async function stopServer(child: ChildProcess): Promise<void> {
  const gone = exited(child);
  child.kill("SIGINT");
  const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  await gone;
  clearTimeout(timer);
}

/** Polls until the server answers a query, for at most 30 s; fails at once if it exits. */
async function untilAccepting(url: string, server: ChildProcess, log: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  let lastError: unknown;
  for (;;) {
    if (server.exitCode !== null || server.signalCode !== null) {
      throw new Error(`PostgreSQL exited while starting:\n${readFileSync(log, "utf8")}`);
    }
    try {
      await withClient(url, (client) => client.query("SELECT 1"));
      return;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new Error("PostgreSQL did not accept connections in 30 s", { cause: lastError });
    }
    await delay(50);
  }
}

async function withClient<T>(url: string, work: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  // An error after connecting (the server shutting down) surfaces through the query.
  client.on("error", () => undefined);
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}
