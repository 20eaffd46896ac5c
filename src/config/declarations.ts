import { homedir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { noPythonsNamed, parsePythonInterpreters } from "./python-installs.ts";
import {
  anyText,
  boolean,
  commaList,
  decimal,
  integer,
  matching,
  oneOf,
  type SettingDeclaration,
} from "./setting-parsers.ts";

type OutboundMode = "public" | "none";
const defaultOutbound: OutboundMode = "public";

/** The embedded defaults: the other choices exist for Berth's own tests (see src/main/parts.ts). */
const defaultParts: {
  metadataStore: "sqlite" | "memory";
  sandboxDriver: "bubblewrap" | "process";
  sessionStorage: "local" | "directory";
} = { metadataStore: "sqlite", sandboxDriver: "bubblewrap", sessionStorage: "local" };

/** An http:// or https:// URL that parses (its host well-formed). */
const httpUrl =
  (hint: string) =>
  (text: string): string | { problem: string } =>
    URL.canParse(text) && /^https?:\/\/[^\s/]/.test(text)
      ? text
      : { problem: `must be ${hint} (got "${text}")` };

/** Every setting Berth reads, in one place. docs/configuration.md is generated from this. */
export const settingDeclarations = {
  metadataStore: {
    part: "parts",
    doc: "Where runtimes, versions, endpoints and session storage records are kept: sqlite (<data-dir>/berth.db); databaseUrl puts them in PostgreSQL instead. memory keeps nothing across a restart and exists for Berth's own tests: berth serve refuses it.",
    default: defaultParts.metadataStore,
    parse: oneOf(["sqlite", "memory"] as const),
  },
  sandboxDriver: {
    part: "parts",
    doc: "What isolates each session: bubblewrap (namespaces, cgroups, seccomp and a uid of its own; needs root). process runs agents as plain processes of Berth's own user, with no isolation at all, and exists for Berth's own tests: berth serve refuses it.",
    default: defaultParts.sandboxDriver,
    parse: oneOf(["bubblewrap", "process"] as const),
  },
  sessionStorage: {
    part: "parts",
    doc: "Where session storage volumes live: local (an ext4 image per volume on the data directory's disk, its blocks reserved, loop-mounted while its session runs; needs root). directory (a plain folder per volume: no size limit, so one session could fill the disk) exists for Berth's own tests: berth serve refuses it.",
    default: defaultParts.sessionStorage,
    parse: oneOf(["local", "directory"] as const),
  },
  host: {
    part: "server",
    doc: "Address the HTTP server listens on.",
    default: "127.0.0.1",
    parse: anyText,
  },
  port: {
    part: "server",
    doc: "Port the HTTP server listens on (0 picks a free one).",
    default: 8787,
    parse: integer(0, 65_535),
  },
  metricsPort: {
    part: "server",
    doc: "Port of the Prometheus metrics listener (GET /metrics, docs/observability.md; 0 picks a free one). It answers without authentication, so it has a port of its own, never the API's: expose it to your Prometheus only. Unset: no metrics are served (nor kept).",
    default: undefined as number | undefined,
    defaultShown: "(none: metrics are off)",
    parse: integer(0, 65_535),
  },
  metricsHost: {
    part: "server",
    doc: "Address the metrics listener listens on (with metricsPort).",
    default: "127.0.0.1",
    parse: anyText,
  },
  dataDir: {
    part: "server",
    doc: "Directory for the metadata database, credentials, artifacts and session folders. Made mode 0711: sandbox users may pass through it to their own folders but not list it; the database and credentials inside are 0600.",
    default: process.getuid?.() === 0 ? "/var/lib/berth" : join(homedir(), ".berth"),
    defaultShown: "/var/lib/berth (root), ~/.berth (others)",
    parse: (text: string) => resolve(text),
  },
  region: {
    part: "server",
    doc: "AWS region Berth answers as: used in ARNs and in SigV4 credential scopes.",
    default: "us-east-1",
    parse: matching(/^[a-z]{2}(-[a-z]+)+-\d+$/, "a region name like us-east-1"),
  },
  accountId: {
    part: "server",
    doc: "12-digit account id used in ARNs.",
    default: "123456789012",
    parse: matching(/^\d{12}$/, "12 digits"),
  },
  accessKeyId: {
    part: "server",
    doc: "SigV4 access key id clients sign with. With secretAccessKey; when both are unset, a key pair is generated on first start and kept in <data-dir>/credentials.json.",
    default: "",
    parse: matching(/^[A-Z0-9]{16,128}$/, "16 to 128 uppercase letters and digits"),
  },
  secretAccessKey: {
    part: "server",
    doc: "SigV4 secret access key (environment or config file only).",
    default: "",
    parse: matching(/^.{16,128}$/, "16 to 128 characters"),
    secret: true,
  },
  insecureNoAuth: {
    part: "server",
    doc: "Accept unsigned requests. Anyone who can reach the port can then run code: only for throwaway local experiments.",
    default: false,
    parse: boolean,
  },
  clockSkewSeconds: {
    part: "server",
    doc: "How far a request's x-amz-date may be from the server's clock.",
    default: 300,
    parse: integer(1, 3600),
  },
  sessionStorageBytes: {
    part: "sessionStorage",
    doc: "Size of each session storage volume (a filesystem of its own: writing past it gives ENOSPC).",
    default: 1_073_741_824,
    parse: integer(16_777_216, 1_099_511_627_776),
  },
  sessionStorageRetentionSeconds: {
    part: "sessionStorage",
    doc: "Session storage unused for this long is deleted (AgentCore: 14 days).",
    default: 1_209_600,
    parse: integer(1, 315_360_000),
  },
  sessionStorageSweepIntervalMs: {
    part: "sessionStorage",
    doc: "How often storage past its retention is looked for.",
    default: 60_000,
    parse: integer(50, 86_400_000),
  },
  sessionStorageCheckpointSeconds: {
    part: "sessionStorage",
    doc: "With an object store: how often a running session's storage is checkpointed there (only the blocks that changed are uploaded). The most an unclean loss of the machine can cost a running session.",
    default: 30,
    parse: integer(1, 86_400),
  },
  sessionStorageDurableWaitSeconds: {
    part: "sessionStorage",
    doc: "With an object store: how long a stop waits for the session storage's last checkpoint to be durable there. Past it, the stop reports the storage as not yet durable, keeps the local copy and goes on uploading it in the background.",
    default: 30,
    parse: integer(1, 3_600),
  },
  objectStoreUrl: {
    part: "objectStore",
    doc: "s3://BUCKET/PREFIX: keep session storage, uploaded code and the metadata database there too, so a new machine pointed at it comes back with everything. Unset: everything stays on this machine's disk only.",
    default: "",
    parse: matching(
      /^s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](\/[^\s]*)?$/,
      "s3://BUCKET or s3://BUCKET/PREFIX with an S3 bucket name",
    ),
  },
  objectStoreEndpoint: {
    part: "objectStore",
    doc: "The object store's address for S3-compatible stores (Ceph RGW, MinIO, R2...), e.g. http://127.0.0.1:7480. Unset: AWS S3 itself.",
    default: "",
    parse: matching(
      /^https?:\/\/[^\s/]+\/?$/,
      "an http:// or https:// address such as http://127.0.0.1:7480",
    ),
  },
  objectStoreRegion: {
    part: "objectStore",
    doc: "The object store's region. Unset: the AWS SDK's (AWS_REGION), else us-east-1.",
    default: "",
    parse: matching(/^[a-z0-9-]{2,40}$/, "a region name like us-east-1"),
  },
  objectStoreForcePathStyle: {
    part: "objectStore",
    doc: "Address buckets as http://endpoint/BUCKET instead of http://BUCKET.endpoint (most S3-compatible stores on one host need this).",
    default: false,
    parse: boolean,
  },
  objectStoreAccessKeyId: {
    part: "objectStore",
    doc: "Access key id for the object store (environment BERTH_OBJECT_STORE_ACCESS_KEY_ID or config file only). With objectStoreSecretAccessKey; both unset: the AWS SDK's default credential chain.",
    default: "",
    parse: matching(/^\S{3,128}$/, "3 to 128 characters without spaces"),
    secret: true,
  },
  objectStoreSecretAccessKey: {
    part: "objectStore",
    doc: "Secret access key for the object store (environment BERTH_OBJECT_STORE_SECRET_ACCESS_KEY or config file only).",
    default: "",
    parse: matching(/^\S{3,256}$/, "3 to 256 characters without spaces"),
    secret: true,
  },
  databaseUrl: {
    part: "cluster",
    doc: "postgres://USER:PASSWORD@HOST:PORT/DATABASE: keep metadata in PostgreSQL instead of SQLite, and take part in a cluster with every Berth node sharing that database (docs/cluster.md). Needs objectStoreUrl and clusterSecret. Unset: SQLite, one node.",
    default: "",
    defaultShown: "(none: SQLite in the data directory)",
    parse: matching(
      /^postgres(ql)?:\/\/\S+$/,
      "a PostgreSQL URL such as postgres://berth:PASSWORD@db.example.com:5432/berth",
    ),
    confidential: true,
  },
  nodeUrl: {
    part: "cluster",
    doc: "How the other nodes of the cluster reach this one, e.g. http://10.0.0.5:8787 (plain HTTP: nodes talk on a private network). Unset: the address Berth listens on (--host and --port; the host name when listening on every address).",
    default: "",
    defaultShown: "(derived from host and port)",
    // Plain HTTP between nodes (docs/cluster.md, Security: keep them on a private network).
    parse: matching(/^http:\/\/[^\s/]+\/?$/, "an http:// address such as http://10.0.0.5:8787"),
  },
  nodeName: {
    part: "cluster",
    doc: "This node's name in the cluster (berth nodes list, berth nodes drain NAME): unique among the nodes.",
    default: "",
    defaultShown: "(the host name)",
    parse: matching(
      /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/,
      "1 to 63 letters, digits, dots, dashes or underscores, starting with a letter or digit",
    ),
  },
  clusterSecret: {
    part: "cluster",
    doc: "The secret every node of a cluster shares (environment BERTH_CLUSTER_SECRET or config file only): requests forwarded between nodes are authenticated with it. At least 32 characters; the same on every node.",
    default: "",
    parse: matching(
      /^\S{32,1024}$/,
      "32 to 1024 characters without spaces (e.g. openssl rand -hex 32)",
    ),
    secret: true,
  },
  nodeLeaseSeconds: {
    part: "cluster",
    doc: "How long a node that stopped renewing its heartbeat (every quarter of this) keeps its sessions. Past it, their next request starts them on another node from their last checkpoint; the silent node, by its own clock, stops them a heartbeat earlier.",
    default: 15,
    parse: integer(2, 600),
  },
  maxArtifactBytes: {
    part: "codeArtifacts",
    doc: "Largest code upload (PUT /berth/v1/artifacts/..., what `berth runtimes create --code` sends), and, with an object store, largest code object a version's codeConfiguration.code.s3 names.",
    default: 1_073_741_824,
    parse: integer(1024, 1_099_511_627_776),
  },
  maxArtifactUnpackedBytes: {
    part: "codeArtifacts",
    doc: "Largest code artifact once decompressed (an upload's .tar.gz, or a .zip in the artifact store): unpacking stops and is undone past it, so a small archive cannot fill the disk. AgentCore's quota: 750 MB uncompressed.",
    default: 786_432_000,
    parse: integer(1024, 1_099_511_627_776),
  },
  maxArtifactEntries: {
    part: "codeArtifacts",
    doc: "Most files, folders and links a code artifact may unpack to (an upload's .tar.gz, or a .zip in the artifact store).",
    default: 200_000,
    parse: integer(1, 100_000_000),
  },
  registryCredentialsFile: {
    part: "containerImages",
    doc: 'A JSON file of credentials for container registries, in Docker\'s config.json form: {"auths": {"registry.example.com:5000": {"username": "...", "password": "..."}}} (or "auth": base64 of user:password). Read at every pull, so changes need no restart. Keep it mode 0600.',
    default: "",
    defaultShown: "(none: registries are used anonymously)",
    parse: anyText,
  },
  registryInsecureHosts: {
    part: "containerImages",
    doc: "Comma-separated registries (host or host:port) that may be reached over plain HTTP instead of HTTPS. Loopback addresses are always allowed to be (reaching them at all takes registryPrivateHosts).",
    default: [] as string[],
    defaultShown: "(none besides loopback)",
    parse: commaList,
  },
  registryPrivateHosts: {
    part: "containerImages",
    doc: "Comma-separated registries (host or host:port) that may be reached although they resolve to a loopback, private, link-local or other non-public address, or to one of this machine's own. Others are refused, and so are redirects and token realms that lead to such an address: an image reference must not make Berth, which runs as root outside the sandboxes' firewall, query the services of this machine or its network.",
    default: [] as string[],
    defaultShown: "(none: only public addresses)",
    parse: commaList,
  },
  maxImageBytes: {
    part: "containerImages",
    doc: "Largest container image accepted, unpacked (file contents and the layers' tar metadata); a bigger one fails its version with CREATE_FAILED/UPDATE_FAILED.",
    default: 17_179_869_184,
    parse: integer(1_048_576, 1_099_511_627_776),
  },
  maxImageMetadataBytes: {
    part: "containerImages",
    doc: "Largest piece of image metadata Berth holds in memory while pulling: a manifest, an image config, a token answer, or one PAX or GNU long-name header of a layer. A bigger one fails its version.",
    default: 4_194_304,
    parse: integer(65_536, 268_435_456),
  },
  imageRetentionSeconds: {
    part: "containerImages",
    doc: "Container images no version uses and no one loaded by name are removed from the cache after this long unused.",
    default: 86_400,
    parse: integer(0, 315_360_000),
  },
  imageGcIntervalMs: {
    part: "containerImages",
    doc: "How often the image cache is swept for images past their retention.",
    default: 3_600_000,
    parse: integer(50, 86_400_000),
  },
  commandKillGraceMs: {
    part: "sessions",
    doc: "After a command's timeout, and when an interactive shell is ended (hung up, or not reattached in time), how long its processes get between SIGTERM and SIGKILL.",
    default: 2000,
    parse: integer(0, 60_000),
  },
  maxShellsPerRuntime: {
    part: "sessions",
    doc: "Most interactive shells (InvokeAgentRuntimeCommandShell) running at once per runtime on this server, across its sessions; one whose client went away counts until its reconnect window passes. More answer ServiceQuotaExceededException (AgentCore: 10).",
    default: 10,
    parse: integer(1, 10_000),
  },
  shellReplayBytes: {
    part: "sessions",
    doc: "How much of an interactive shell's latest output is kept and replayed to a client that reconnects with its shellId (AgentCore: 256 KB). 0 replays nothing.",
    default: 262_144,
    parse: integer(0, 16_777_216),
  },
  shellReconnectSeconds: {
    part: "sessions",
    doc: "How long an interactive shell whose connection dropped (without a close frame) keeps running for a client to reconnect with its shellId; then it is ended. A shell that exits meanwhile keeps its exit status as long (AgentCore: about 15 minutes).",
    default: 900,
    parse: integer(0, 86_400),
  },
  shutdownGraceSeconds: {
    part: "server",
    doc: "On SIGTERM or SIGINT, Berth stops taking requests (new connections are refused) and gives those in flight this long to finish. Then what still runs is ended, each with a clear last word: a command's stream an internalServerException event, an event-stream (SSE) answer a last `event: error`. A second signal ends the wait at once.",
    default: 30,
    parse: integer(0, 3600),
  },
  maxRequestBodyBytes: {
    part: "server",
    doc: "Largest control-plane request body accepted.",
    default: 1_048_576,
    parse: integer(1024, 104_857_600),
  },
  maxConnections: {
    part: "server",
    doc: "Most HTTP connections open at once; past it, new connections are closed as soon as they are accepted.",
    default: 1024,
    parse: integer(1, 1_000_000),
  },
  requestHeadersTimeoutSeconds: {
    part: "server",
    doc: "How long a client has to send a request's headers; a slower one gets 408 and its connection closed.",
    default: 60,
    parse: integer(1, 3600),
  },
  requestTimeoutSeconds: {
    part: "server",
    doc: "How long a client has to send a whole request, headers and body (uploads included); a slower one gets 408 and its connection closed. Answers may stream for longer.",
    default: 300,
    parse: integer(1, 86_400),
  },
  maxUnauthenticatedBufferBytes: {
    part: "server",
    doc: "Most bytes, in memory and on disk, that request bodies may hold together before their signature is checked (SigV4 signs the body's SHA-256, so a body is held until it is known; an access key id is no secret). Past it, requests get ThrottlingException. Bodies signed as UNSIGNED-PAYLOAD (invocations and uploads) stream and need none.",
    default: 268_435_456,
    parse: integer(65_536, 1_099_511_627_776),
  },
  maxInMemoryBodyBytes: {
    part: "server",
    doc: "A request body held until its signature is checked stays in memory up to this size; a bigger one is written to an already-unlinked file in <data-dir>/request-bodies (root only, mode 0600), gone when the request ends.",
    default: 65_536,
    parse: integer(0, 104_857_600),
  },
  idempotencyWindowSeconds: {
    part: "server",
    doc: "How long a clientToken's first answer is kept for retries.",
    default: 28_800,
    parse: integer(60, 604_800),
  },
  maxPayloadBytes: {
    part: "sessions",
    doc: "Largest InvokeAgentRuntime payload accepted (AgentCore: 100 MB).",
    default: 104_857_600,
    parse: integer(1, 1_073_741_824),
  },
  maxWebSocketMessageBytes: {
    part: "sessions",
    doc: "Largest message either side of a WebSocket to an agent's /ws may send (GET /runtimes/{arn}/ws); a larger one closes the socket with 1009. Berth holds at most one such message per direction per connection, plus 1 MiB it lets a slow side fall behind (AgentCore's stream chunk: 10 MB).",
    default: 16_777_216,
    parse: integer(1024, 1_073_741_824),
  },
  maxSessions: {
    part: "sessions",
    doc: "Most sessions (sandboxes) running at once; more answer ServiceQuotaExceededException.",
    default: 64,
    parse: integer(1, 65_536),
  },
  sessionMemoryBytes: {
    part: "sandboxes",
    doc: "Memory limit of one session's sandbox (cgroup); the kernel OOM-kills past it.",
    default: 2_147_483_648,
    parse: integer(16_777_216, 1_099_511_627_776),
  },
  sessionPids: {
    part: "sandboxes",
    doc: "Most processes and threads in one session's sandbox (cgroup); fork fails past it.",
    default: 1024,
    parse: integer(16, 1_048_576),
  },
  sessionCpus: {
    part: "sandboxes",
    doc: "CPU time one session may use, in CPUs (cgroup quota); sessions also get equal CPU shares.",
    default: 2,
    parse: decimal(0.05, 1024),
  },
  sandboxesMemoryBytes: {
    part: "sandboxes",
    doc: "Memory all sessions together may use (the parent cgroup's limit), whatever maxSessions × sessionMemoryBytes adds up to: the host and Berth itself keep the rest.",
    default: Math.floor((totalmem() * 3) / 4),
    defaultShown: "3/4 of the host's memory",
    parse: integer(16_777_216, 1_099_511_627_776 * 64),
  },
  sandboxesPids: {
    part: "sandboxes",
    doc: "Most processes and threads all sessions together may have (the parent cgroup's limit).",
    default: 32_768,
    parse: integer(16, 4_194_304),
  },
  agentStartupTimeoutSeconds: {
    part: "sessions",
    doc: "How long a new session's agent has to answer GET /ping (MCP and A2A servers: answer HTTP at all, docs/protocols.md) before the invocation fails with RuntimeClientError.",
    default: 30,
    parse: integer(1, 600),
  },
  agentPingTimeoutMs: {
    part: "sessions",
    doc: "How long an agent's GET /ping may take, answer and body together; a slower answer counts as unhealthy (a session past its idle timeout then ends).",
    default: 1000,
    parse: integer(50, 60_000),
  },
  agentPingMaxBytes: {
    part: "sessions",
    doc: "Most bytes of an agent's GET /ping answer body read; a longer answer counts as unhealthy.",
    default: 4096,
    parse: integer(256, 1_048_576),
  },
  minLifecycleSeconds: {
    part: "sessions",
    doc: "Smallest idleRuntimeSessionTimeout and maxLifetime a runtime may ask for (AgentCore: 60). Lower it for tests and demos.",
    default: 60,
    parse: integer(1, 60),
  },
  sessionSweepIntervalMs: {
    part: "sessions",
    doc: "How often idle and max-lifetime deadlines are checked.",
    default: 1000,
    parse: integer(10, 60_000),
  },
  maxAgentOutputLineBytes: {
    part: "sessions",
    doc: "Longest line of an agent's stdout or stderr Berth keeps: a longer one is logged cut there (and marked as cut), the rest of it read and dropped up to its newline.",
    default: 16_384,
    parse: integer(256, 1_048_576),
  },
  agentLogBytesPerSecond: {
    part: "sessions",
    doc: "Bytes one session's agent output may add to the session's log per second, on average (a token bucket, with agentLogBurstBytes). Lines past it are dropped; once a second a note in the session's log and an 'agent output dropped' record in Berth's say how many. The agent is never slowed: its output is still read as fast as it writes.",
    default: 262_144,
    parse: integer(1024, 1_073_741_824),
  },
  agentLogBurstBytes: {
    part: "sessions",
    doc: "Bytes one session's agent output may add to its log at once after a quiet spell (see agentLogBytesPerSecond). A line whose record is bigger than this is always dropped.",
    default: 1_048_576,
    parse: integer(65_536, 1_073_741_824),
  },
  agentLogBytes: {
    part: "sessions",
    doc: "Most bytes one session's log (its agent's stdout and stderr, kept apart from Berth's own log in <data-dir>/agent-logs, readable with berth logs) takes on disk. Past it the older half goes: the latest half at least is always kept.",
    default: 8_388_608,
    parse: integer(65_536, 1_073_741_824),
  },
  agentLogTotalBytes: {
    part: "sessions",
    doc: "Most bytes all sessions' logs on this node take together. Past it, each sweep deletes the logs of the sessions that wrote last longest ago.",
    default: 1_073_741_824,
    parse: integer(1_048_576, 1_099_511_627_776),
  },
  agentLogRetentionSeconds: {
    part: "sessions",
    doc: "How long a session's log lines are kept and shown, running or ended (a sweep deletes older ones).",
    default: 604_800,
    parse: integer(1, 315_360_000),
  },
  agentLogSweepIntervalMs: {
    part: "sessions",
    doc: "How often sessions' logs past agentLogRetentionSeconds or agentLogTotalBytes are deleted.",
    default: 60_000,
    parse: integer(50, 86_400_000),
  },
  agentLogFollowMaxSeconds: {
    part: "sessions",
    doc: "Longest one request following a log (berth logs --follow) lasts; berth logs then follows again from where it was.",
    default: 3600,
    parse: integer(1, 86_400),
  },
  bubblewrapUidBase: {
    part: "bubblewrap",
    formerly: "sandboxUidBase",
    doc: "First host uid given to sandboxes; each running session, and each sandbox prepared ahead, gets its own uid from [base, base + maxSessions + 16). Must not overlap real users.",
    default: 2_000_000,
    parse: integer(10_000, 4_000_000_000),
  },
  bubblewrapCgroupParent: {
    part: "bubblewrap",
    formerly: "cgroupParent",
    doc: "Name of the cgroup under which each session gets its own (in every v1 controller, or the v2 tree). Leftovers in it are killed at start.",
    default: "berth",
    parse: matching(/^[a-zA-Z0-9_.-]{1,64}$/, "letters, digits, '.', '_' or '-'"),
  },
  sandboxOutbound: {
    part: "sandboxes",
    doc: "Network for sandboxes of PUBLIC runtimes: public (outbound through a user-mode network stack; the host itself, loopback, link-local and private ranges are blocked) or none (loopback only).",
    default: defaultOutbound,
    parse: (text: string): OutboundMode | { problem: string } =>
      text === "public" || text === "none"
        ? text
        : { problem: `must be public or none (got "${text}")` },
  },
  sandboxAllowedNetworks: {
    part: "sandboxes",
    doc: "Comma-separated IPv4 CIDRs sandboxes may reach even though they are private, e.g. an internal model gateway.",
    default: [] as string[],
    defaultShown: "(none)",
    parse: (text: string): string[] | { problem: string } => {
      const networks = commaList(text);
      const bad = networks.filter((network) => !/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/.test(network));
      return bad.length === 0
        ? networks
        : { problem: `must be IPv4 CIDRs like 10.1.0.0/16 (bad: ${bad.join(", ")})` };
    },
  },
  bubblewrapSeccomp: {
    part: "bubblewrap",
    formerly: "sandboxSeccomp",
    doc: "Run every process of a session under Berth's seccomp filter, which refuses system calls agents do not need that expose the kernel: new namespaces, mounts, keyrings, eBPF, io_uring, raw and packet sockets and more (docs/security.md lists them). Written for x86_64: elsewhere, set false.",
    default: true,
    parse: boolean,
  },
  bubblewrapPrestart: {
    part: "bubblewrap",
    formerly: "sandboxPrestart",
    doc: "Sandboxes prepared ahead (namespaces, cgroup, uid; no agent process yet) per recently used runtime version, so a new session only waits for its agent to start. One taken is replaced a second later, after its agent's start. 0 turns this off.",
    default: 2,
    parse: integer(0, 8),
  },
  nodeBinary: {
    part: "codeArtifacts",
    doc: "Interpreter for runtime NODE_22 (any Node.js >= 22 runs NODE_22 agents; the default is the Node 24 Berth runs on).",
    default: process.execPath,
    defaultShown: "the Node.js running Berth",
    parse: (text: string) => resolve(text),
  },
  pythonInterpreters: {
    part: "codeArtifacts",
    doc: "The Python each Python runtime runs on, as comma-separated RUNTIME=PATH entries, e.g. PYTHON_3_12=/opt/python3.12/bin/python3.12. A runtime not named uses the first python3.X found on Berth's PATH, in /usr/local/bin, /usr/bin, /opt/*/bin or pyenv's versions ($PYENV_ROOT, /root/.pyenv); one with none fails its versions (CREATE_FAILED) instead of running another version.",
    default: noPythonsNamed,
    defaultShown: "(found as described)",
    parse: parsePythonInterpreters,
  },
  otlpTracesEndpoint: {
    part: "traces",
    doc: "Where spans are sent, over OTLP/HTTP with JSON bodies: an OpenTelemetry collector, Jaeger or Tempo, e.g. http://127.0.0.1:4318/v1/traces (a URL with no path gets /v1/traces). Unset: no spans are made. Export happens in the background: a slow or absent collector never holds up a request (spans past a queue of 2048 are dropped; failed exports are logged, once a minute at most). The OTEL_EXPORTER_OTLP_TRACES_HEADERS (or OTEL_EXPORTER_OTLP_HEADERS) environment variable adds headers, such as a collector's API key.",
    default: "",
    defaultShown: "(none: traces are off)",
    parse: httpUrl("an http:// or https:// URL such as http://127.0.0.1:4318/v1/traces"),
    confidential: true,
  },
  traceSampleRatio: {
    part: "traces",
    doc: "The share of traces Berth starts (requests that carry no trace context) that are recorded and exported, from 0 to 1. A request continuing a caller's trace follows the caller's decision (the sampled flag of traceparent, Sampled= of X-Amzn-Trace-Id).",
    default: 1,
    parse: decimal(0, 1),
  },
  otlpTracesExportDelayMs: {
    part: "traces",
    doc: "How long ended spans wait to be sent together: a trace shows up in the viewer this much after its request ends, at most (sooner when 512 are waiting).",
    default: 5000,
    parse: integer(10, 600_000),
  },
} satisfies Record<string, SettingDeclaration<unknown>>;
