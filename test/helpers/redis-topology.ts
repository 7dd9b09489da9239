/**
 * Real Redis topologies for tests: a standalone server, a Redis Cluster, a
 * master + replicas watched by Sentinel. Each runs as redis-server processes
 * on free ports with data under os.tmpdir(), started from a test's beforeAll
 * and stopped (by PID) in its afterAll.
 *
 * Nothing leaks when a test fails or the jest worker dies: every PID is kept
 * in a file that a small watchdog shell reads once this process is gone, and
 * kills what is left (checking /proc that it still is a redis-server). Every
 * wait has a deadline and fails with the tail of the servers' logs.
 * JIT_KEEP_REDIS=1 keeps the data and log directories for a post-mortem.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis, type RedisOptions } from 'ioredis';
import { generateTlsFiles, type TlsFiles } from './tls-certs.ts';

const KEEP = process.env.JIT_KEEP_REDIS === '1';
// Made with the first topology (a test file that starts none leaves nothing behind); the watchdog removes it.
let base: string | undefined;
const pidFile = () => join(baseDir(), 'pids');
const live = new Map<number, ChildProcess>();
let watchdog: ChildProcess | undefined;

function recordPids(): void {
  writeFileSync(pidFile(), [...live.keys()].join('\n'));
}

function baseDir(): string {
  if (!base) {
    base = mkdtempSync(join(tmpdir(), `jit-redis-${process.pid}-`));
    ensureWatchdog(base);
  }
  return base;
}

/** Kills whatever this process started once it is gone, however it died (even SIGKILL), then removes `dir`. */
function ensureWatchdog(dir: string): void {
  if (watchdog) return;
  const script = [
    'while kill -0 "$1" 2>/dev/null; do sleep 1; done',
    'if [ -f "$2" ]; then for p in $(cat "$2"); do',
    '  if grep -q redis-server "/proc/$p/cmdline" 2>/dev/null; then kill -9 "$p" 2>/dev/null; fi',
    'done; fi',
    '[ "$4" = 1 ] || rm -rf "$3"',
  ].join('\n');
  watchdog = spawn('sh', ['-c', script, 'jit-redis-watchdog', String(process.pid), join(dir, 'pids'), dir, KEEP ? '1' : '0'], {
    detached: true,
    stdio: 'ignore',
  });
  watchdog.unref();
}

process.once('exit', () => {
  for (const pid of live.keys()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
  }
});

const handedOut = new Set<number>();

/**
 * A TCP port nobody listens on right now (the kernel picks it), never one this
 * process handed out before: the kernel may offer a just-closed port again.
 * Another process can still take it before redis-server binds it; a first
 * start that fails with "Address already in use" moves to another port.
 */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await kernelPort();
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

async function kernelPort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Thrown inside an {@link until} probe to stop waiting at once (a process died: no point polling on). */
class Fatal extends Error {}

/** Polls `fn` until it returns a truthy value; on timeout throws naming `what`, with `details()` (log tails). */
async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined | false>, details: () => string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr = '';
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      if (err instanceof Fatal) throw new Error(`while waiting for ${what}: ${err.message}\n${details()}`);
      lastErr = (err as Error).message;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? ` (last error: ${lastErr})` : ''}\n${details()}`);
    }
    await sleep(50);
  }
}

/** How a test or the harness authenticates to a server. */
export interface ServerAccess {
  username?: string;
  password?: string;
  tls?: TlsFiles;
}

/** A short-lived admin client for one server (no retries: the harness polls instead). */
export function adminClient(port: number, access: ServerAccess = {}, extra: RedisOptions = {}): Redis {
  const c = new Redis({
    host: '127.0.0.1',
    port,
    ...(access.username ? { username: access.username } : {}),
    ...(access.password ? { password: access.password } : {}),
    ...(access.tls
      ? {
          tls: {
            ca: readFileSync(access.tls.caFile),
            cert: readFileSync(access.tls.clientCertFile),
            key: readFileSync(access.tls.clientKeyFile),
          },
        }
      : {}),
    lazyConnect: true,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: true,
    connectTimeout: 1000,
    commandTimeout: 2000,
    disconnectTimeout: 200,
    ...extra,
  });
  c.on('error', () => {});
  return c;
}

/** Runs one command on a server through a fresh admin connection. */
export async function adminCall(port: number, access: ServerAccess, ...args: (string | number)[]): Promise<unknown> {
  const c = adminClient(port, access);
  try {
    await c.connect();
    return await c.call(String(args[0]), ...args.slice(1).map(String));
  } finally {
    // After a refused connect the client is already 'end'; disconnecting it again would leave a 2 s timer behind.
    if (c.status !== 'end') c.disconnect();
  }
}

/** One redis-server process, restartable on the same port and directory. */
class ServerProcess {
  readonly name: string;
  readonly dir: string;
  readonly logFile: string;
  readonly stdioFile: string;
  port: number;
  private readonly argv: (port: number) => string[];
  private readonly repick?: () => Promise<void>;
  private readonly access: ServerAccess;
  private started = false;
  private child?: ChildProcess;
  private exited?: Promise<void>;
  private resumeTimer?: NodeJS.Timeout;

  /**
   * `argv(port)` is called at every start; `repick` chooses any other port the
   * argv uses (a cluster bus port) again when the first start finds a port taken.
   */
  constructor(opts: {
    name: string;
    dir: string;
    port: number;
    argv: (port: number) => string[];
    access: ServerAccess;
    repick?: () => Promise<void>;
  }) {
    this.name = opts.name;
    this.dir = opts.dir;
    this.port = opts.port;
    this.argv = opts.argv;
    if (opts.repick) this.repick = opts.repick;
    this.access = opts.access;
    this.logFile = join(opts.dir, 'redis.log');
    this.stdioFile = join(opts.dir, 'stdio.log');
    mkdirSync(opts.dir, { recursive: true });
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Spawns the server and waits until it answers PING (not LOADING). */
  async start(timeoutMs = 10_000): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.spawnAndWait(timeoutMs);
        this.started = true;
        return;
      } catch (err) {
        // Only a first start may move: after that, clients and peers know this port.
        if (this.started || attempt >= 5 || !this.logs().includes('Address already in use')) throw err;
        this.port = await freePort();
        await this.repick?.();
        rmSync(this.logFile, { force: true });
      }
    }
  }

  private async spawnAndWait(timeoutMs: number): Promise<void> {
    if (this.running) throw new Error(`${this.name} is already running`);
    const out = openSync(this.stdioFile, 'a');
    const args = [...this.argv(this.port), '--logfile', this.logFile, '--dir', this.dir];
    const child = spawn('redis-server', args, { cwd: this.dir, stdio: ['ignore', out, out] });
    closeSync(out);
    if (child.pid === undefined) throw new Error(`cannot spawn redis-server for ${this.name}`);
    this.child = child;
    live.set(child.pid, child);
    recordPids();
    const pid = child.pid;
    this.exited = new Promise((resolve) => {
      child.once('exit', () => {
        live.delete(pid);
        recordPids();
        resolve();
      });
    });
    await until(
      `${this.name} (port ${this.port}) to answer PING`,
      timeoutMs,
      async () => {
        if (!this.running) throw new Fatal(`${this.name} exited with ${child.exitCode ?? child.signalCode}`);
        return (await adminCall(this.port, this.access, 'PING')) === 'PONG';
      },
      () => this.logs(),
    );
  }

  /** Sends `signal` (SIGKILL by default) and waits for the process to be gone. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    clearTimeout(this.resumeTimer);
    if (!this.child || !this.running) return;
    this.child.kill(signal);
    await this.exited;
  }

  /** SIGSTOP now, SIGCONT after `ms`: the server keeps its sockets but answers nothing, like a stalled host. */
  pause(ms: number): Promise<void> {
    if (!this.child || !this.running) throw new Error(`${this.name} is not running`);
    const child = this.child;
    child.kill('SIGSTOP');
    return new Promise((resolve) => {
      this.resumeTimer = setTimeout(() => {
        if (this.running) child.kill('SIGCONT');
        resolve();
      }, ms);
    });
  }

  logs(lines = 30): string {
    const tail = (f: string) => (existsSync(f) ? readFileSync(f, 'utf8').trimEnd().split('\n').slice(-lines).join('\n') : '(no file)');
    return `--- ${this.name} (port ${this.port}, ${this.logFile}) ---\n${tail(this.logFile)}\n${tail(this.stdioFile)}`;
  }
}

/** Common argv: loopback only, no RDB snapshots, no AOF unless asked. */
function baseArgs(port: number, opts: { appendonly?: 'everysec' | 'always' | 'no' }): string[] {
  const aof =
    opts.appendonly && opts.appendonly !== 'no' ? ['--appendonly', 'yes', '--appendfsync', opts.appendonly] : ['--appendonly', 'no'];
  return ['--port', String(port), '--bind', '127.0.0.1', '--save', '', ...aof, '--protected-mode', 'no'];
}

/** ACL directives: the named user may do everything; `default` keeps `password` or is switched off. */
function authArgs(opts: { password?: string; aclUser?: { name: string; password: string } }): string[] {
  const args: string[] = [];
  if (opts.aclUser) args.push('--user', opts.aclUser.name, 'on', `>${opts.aclUser.password}`, '~*', '&*', '+@all');
  if (opts.password) args.push('--requirepass', opts.password);
  else if (opts.aclUser) args.push('--user', 'default', 'off');
  return args;
}

function accessOf(opts: { password?: string; aclUser?: { name: string; password: string } }, tls?: TlsFiles): ServerAccess {
  if (opts.aclUser) return { username: opts.aclUser.name, password: opts.aclUser.password, ...(tls ? { tls } : {}) };
  return { ...(opts.password ? { password: opts.password } : {}), ...(tls ? { tls } : {}) };
}

function urlOf(scheme: 'redis' | 'rediss', port: number, access: ServerAccess): string {
  const auth = access.password
    ? `${access.username ? encodeURIComponent(access.username) : ''}:${encodeURIComponent(access.password)}@`
    : '';
  return `${scheme}://${auth}127.0.0.1:${port}`;
}

const topologies = new Set<{ stop(): Promise<void> }>();

/** Stops every topology this process started and has not stopped yet (a safety net for afterAll). */
export async function stopAllTopologies(): Promise<void> {
  await Promise.all([...topologies].map((t) => t.stop()));
}

function topologyDir(kind: string): string {
  return mkdtempSync(join(baseDir(), `${kind}-`));
}

function removeDir(dir: string): void {
  if (KEEP) console.log(`JIT_KEEP_REDIS: kept ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------- standalone

export interface StandaloneOptions {
  /** AOF fsync policy; 'no' (default) runs without any persistence, so a restart loses the data. */
  appendonly?: 'everysec' | 'always' | 'no';
  /** `requirepass` (the default user's password). */
  password?: string;
  /** An ACL user allowed everything; the default user is switched off unless `password` is also set. */
  aclUser?: { name: string; password: string };
  /** TLS only (no plain port), certificates from a CA generated now; `authClients` requires a client certificate. */
  tls?: boolean | { authClients?: boolean };
}

export interface RedisStandalone {
  port: number;
  /** `redis://` or `rediss://` URL with the credentials (percent-encoded). */
  url: string;
  access: ServerAccess;
  tls?: TlsFiles;
  pid(): number | undefined;
  /** SIGKILL: no shutdown save, no goodbye to clients. */
  kill(): Promise<void>;
  /** Kills if running and starts again on the same port; `keepData: false` wipes the data directory first. */
  restart(opts?: { keepData?: boolean }): Promise<void>;
  /** Freezes the server (SIGSTOP) for `ms`, then resumes it; the promise settles on resume. */
  pause(ms: number): Promise<void>;
  /** An admin client for assertions (caller disconnects it). */
  client(): Redis;
  logs(): string;
  stop(): Promise<void>;
  /** Milliseconds from spawn to the first PONG. */
  startedInMs: number;
}

/**
 * The TLS directives (name, value) of a server on `port`. `peers`: it also dials other servers
 * (replication, the cluster bus, a sentinel's master, replicas and peers), so it replicates over TLS
 * and shows the client certificate (the server one is for serverAuth only).
 */
function tlsDirectives(port: number, tls: TlsFiles, opt: { authClients?: boolean }, peers: boolean): string[] {
  return [
    '--tls-port',
    String(port),
    '--tls-cert-file',
    tls.certFile,
    '--tls-key-file',
    tls.keyFile,
    '--tls-ca-cert-file',
    tls.caFile,
    '--tls-auth-clients',
    opt.authClients ? 'yes' : 'no',
    ...(peers
      ? ['--tls-client-cert-file', tls.clientCertFile, '--tls-client-key-file', tls.clientKeyFile, '--tls-replication', 'yes']
      : []),
  ];
}

/** `args` for TLS only: the plain port is closed, so nothing can pass a test without TLS. */
function tlsOnly(args: string[], directives: string[]): string[] {
  const out = [...args];
  out[out.indexOf('--port') + 1] = '0';
  return out.concat(directives);
}

/** Starts one redis-server on a free port. */
export async function startStandalone(opts: StandaloneOptions = {}): Promise<RedisStandalone> {
  const t0 = Date.now();
  const dir = topologyDir('standalone');
  const tlsOpt = opts.tls === true ? {} : opts.tls || undefined;
  const tls = tlsOpt ? generateTlsFiles(join(dir, 'tls')) : undefined;
  const access = accessOf(opts, tls);
  const dataDir = join(dir, 'data');
  const server = new ServerProcess({
    name: 'standalone',
    dir: dataDir,
    port: await freePort(),
    access,
    argv: (port) => {
      const args = [...baseArgs(port, opts), ...authArgs(opts)];
      if (!tls || !tlsOpt) return args;
      return tlsOnly(args, tlsDirectives(port, tls, tlsOpt, false));
    },
  });
  await server.start();
  const t: RedisStandalone = {
    port: server.port,
    url: urlOf(tls ? 'rediss' : 'redis', server.port, access),
    access,
    ...(tls ? { tls } : {}),
    pid: () => server.pid,
    kill: () => server.kill(),
    async restart(o = {}) {
      await server.kill();
      if (!o.keepData) {
        for (const f of ['appendonlydir', 'dump.rdb']) rmSync(join(dataDir, f), { recursive: true, force: true });
      }
      await server.start();
    },
    pause: (ms) => server.pause(ms),
    client: () => adminClient(server.port, access),
    logs: () => server.logs(),
    async stop() {
      topologies.delete(t);
      await server.kill();
      removeDir(dir);
    },
    startedInMs: Date.now() - t0,
  };
  topologies.add(t);
  return t;
}

// ---------------------------------------------------------------- cluster

export interface ClusterOptions {
  masters?: number;
  /** Replicas per master (default 0); the first `masters` servers are the masters. */
  replicasPerMaster?: number;
  /** Every node requires this ACL user (the default user is off), so clients must take credentials from the URLs. */
  aclUser?: { name: string; password: string };
  appendonly?: 'everysec' | 'always' | 'no';
  /** How long until a node is considered failing (cluster-node-timeout). */
  nodeTimeoutMs?: number;
  /**
   * TLS only (no plain port), the cluster bus and CLUSTER SLOTS included, certificates from a CA
   * generated now; `authClients` requires a client certificate.
   */
  tls?: boolean | { authClients?: boolean };
}

export interface RedisCluster {
  ports: number[];
  /** One URL per node, masters first (`rediss://` with TLS), with the credentials. */
  urls: string[];
  access: ServerAccess;
  tls?: TlsFiles;
  /** An admin client for node `i` (caller disconnects it). */
  client(i: number): Redis;
  /** Freezes node `i` (SIGSTOP) for `ms`; settles on resume. */
  pause(i: number, ms: number): Promise<void>;
  /** Node `i`'s process id (to freeze it until a test says so: SIGSTOP, then SIGCONT). */
  pid(i: number): number | undefined;
  /** SIGKILLs node `i`. */
  kill(i: number): Promise<void>;
  logs(): string;
  stop(): Promise<void>;
  startedInMs: number;
}

/** Starts `masters` cluster-enabled servers, joins them with `redis-cli --cluster create`, waits for cluster_state:ok everywhere. */
export async function startCluster(opts: ClusterOptions = {}): Promise<RedisCluster> {
  const t0 = Date.now();
  const masters = opts.masters ?? 3;
  if (masters < 3) throw new Error('redis-cli --cluster create needs at least 3 masters');
  const perMaster = opts.replicasPerMaster ?? 0;
  const n = masters * (1 + perMaster);
  const dir = topologyDir('cluster');
  const tlsOpt = opts.tls === true ? {} : opts.tls || undefined;
  const tls = tlsOpt ? generateTlsFiles(join(dir, 'tls')) : undefined;
  const access = accessOf(opts, tls);
  const servers: ServerProcess[] = [];
  for (let i = 0; i < n; i++) {
    let busPort = await freePort();
    servers.push(
      new ServerProcess({
        name: `cluster-node-${i}`,
        dir: join(dir, `node-${i}`),
        port: await freePort(),
        access,
        argv: (port) => {
          const args = [
            ...baseArgs(port, opts),
            ...authArgs(opts),
            '--cluster-enabled',
            'yes',
            '--cluster-config-file',
            'nodes.conf',
            '--cluster-node-timeout',
            String(opts.nodeTimeoutMs ?? 2000),
            '--cluster-port',
            String(busPort),
          ];
          if (!tls || !tlsOpt) return args;
          // The cluster bus runs over TLS too, and with tls-cluster the nodes announce (and CLUSTER SLOTS
          // reports) their TLS ports.
          return tlsOnly(args, [...tlsDirectives(port, tls, tlsOpt, true), '--tls-cluster', 'yes']);
        },
        repick: async () => {
          busPort = await freePort();
        },
      }),
    );
  }
  const logs = () => servers.map((s) => s.logs()).join('\n');
  const stop = async () => {
    topologies.delete(t);
    await Promise.all(servers.map((s) => s.kill()));
    removeDir(dir);
  };
  // Ports are final once every node has started (a taken port moves a node to another).
  const t: RedisCluster = {
    ports: [],
    urls: [],
    access,
    ...(tls ? { tls } : {}),
    client: (i) => adminClient(servers[i]!.port, access),
    pause: (i, ms) => servers[i]!.pause(ms),
    pid: (i) => servers[i]!.pid,
    kill: (i) => servers[i]!.kill(),
    logs,
    stop,
    startedInMs: 0,
  };
  topologies.add(t);
  try {
    await Promise.all(servers.map((s) => s.start()));
    t.ports = servers.map((s) => s.port);
    t.urls = servers.map((s) => urlOf(tls ? 'rediss' : 'redis', s.port, access));
    const cliArgs = [
      '--cluster',
      'create',
      ...servers.map((s) => `127.0.0.1:${s.port}`),
      '--cluster-replicas',
      String(perMaster),
      '--cluster-yes',
    ];
    if (access.username) cliArgs.push('--user', access.username);
    if (tls) cliArgs.push('--tls', '--cacert', tls.caFile, '--cert', tls.clientCertFile, '--key', tls.clientKeyFile);
    await new Promise<void>((resolve, reject) => {
      execFile(
        'redis-cli',
        cliArgs,
        // REDISCLI_AUTH keeps the password off the command line (and out of redis-cli's warning).
        { timeout: 20_000, env: { ...process.env, ...(access.password ? { REDISCLI_AUTH: access.password } : {}) } },
        (err, stdout, stderr) =>
          err ? reject(new Error(`redis-cli --cluster create failed: ${err.message}\n${stdout}\n${stderr}\n${logs()}`)) : resolve(),
      );
    });
    await Promise.all(
      servers.map((s) =>
        until(
          `${s.name} to report cluster_state:ok with ${n} known nodes`,
          15_000,
          async () => {
            const info = String(await adminCall(s.port, access, 'CLUSTER', 'INFO'));
            return (
              /cluster_state:ok/.test(info) && new RegExp(`cluster_known_nodes:${n}\\b`).test(info) && /cluster_slots_ok:16384/.test(info)
            );
          },
          logs,
        ),
      ),
    );
  } catch (err) {
    await stop();
    throw err;
  }
  t.startedInMs = Date.now() - t0;
  return t;
}

// ---------------------------------------------------------------- sentinel

export interface SentinelOptions {
  /** Master group name (default mymaster). */
  name?: string;
  /** sentinel down-after-milliseconds (default 1000). */
  downAfterMs?: number;
  /** How many sentinels (default 1); the quorum is a majority of them. */
  sentinels?: number;
  /** How many replicas (default 1); two let a test fail over twice without waiting for a demoted master to resync. */
  replicas?: number;
  /** requirepass/masterauth of master and replicas. */
  password?: string;
  /** requirepass of the sentinels themselves. */
  sentinelPassword?: string;
  /**
   * TLS only (no plain port) on master, replicas and sentinels, certificates from a CA generated now; replication and
   * the sentinels' links to the data nodes run over TLS too. `authClients` requires a client certificate everywhere.
   */
  tls?: boolean | { authClients?: boolean };
}

export interface RedisSentinel {
  name: string;
  /** `redis://127.0.0.1:<port>` (`rediss://` with TLS) of each sentinel (no credentials: those go in sentinelPassword). */
  sentinelUrls: string[];
  sentinelPorts: number[];
  password?: string;
  sentinelPassword?: string;
  tls?: TlsFiles;
  /** Port of the master as the sentinels currently name it. */
  masterPort(): Promise<number>;
  /** An admin client on the data node listening on `port` (caller disconnects it). */
  client(port: number): Redis;
  /** SIGKILLs the current master; returns its port. */
  killMaster(): Promise<number>;
  /**
   * Asks the sentinels for a manual failover (SENTINEL FAILOVER). The old master
   * keeps running as a master until the sentinel converts it to a replica at
   * its next INFO poll (up to 10 s later): what clients see in between is up to
   * them following +switch-master.
   */
  failover(): Promise<number>;
  /**
   * Waits until the first sentinel sees `count` (default 1) replicas whose link to the master is up and that have
   * acknowledged every write the master had when this was called; returns the first one's port.
   */
  waitForReplica(opts?: { timeoutMs?: number; count?: number }): Promise<number>;
  /** Waits until the sentinels name a master other than `from` (default: the last one killed or failed over) and it answers ROLE master. */
  waitForFailover(opts?: { from?: number; timeoutMs?: number }): Promise<number>;
  logs(): string;
  stop(): Promise<void>;
  startedInMs: number;
}

/** `['--name', 'value', ...]` as config file lines (`name value`). */
function directiveLines(args: string[]): string[] {
  const lines: string[] = [];
  for (let i = 0; i + 1 < args.length; i += 2) lines.push(`${args[i]!.slice(2)} ${args[i + 1]}`);
  return lines;
}

/** Starts a master, `replicas` replicas and `sentinels` sentinels watching them, and waits until the sentinels know the replicas. */
export async function startSentinel(opts: SentinelOptions = {}): Promise<RedisSentinel> {
  const t0 = Date.now();
  const name = opts.name ?? 'mymaster';
  const downAfterMs = opts.downAfterMs ?? 1000;
  const count = opts.sentinels ?? 1;
  const quorum = Math.floor(count / 2) + 1;
  const dir = topologyDir('sentinel');
  const tlsOpt = opts.tls === true ? {} : opts.tls || undefined;
  const tls = tlsOpt ? generateTlsFiles(join(dir, 'tls')) : undefined;
  const dataAccess = accessOf(opts, tls);
  const sentinelAccess = accessOf({ ...(opts.sentinelPassword ? { password: opts.sentinelPassword } : {}) }, tls);
  const auth = opts.password ? ['--requirepass', opts.password, '--masterauth', opts.password] : [];
  const directives = (port: number): string[] => (tls && tlsOpt ? tlsDirectives(port, tls, tlsOpt, true) : []);
  const dataArgs = (port: number, extra: string[]): string[] => {
    const args = [...baseArgs(port, {}), ...auth, '--repl-diskless-sync-delay', '0', ...extra];
    return tls ? tlsOnly(args, directives(port)) : args;
  };
  const master = new ServerProcess({
    name: 'sentinel-master',
    dir: join(dir, 'master'),
    port: await freePort(),
    access: dataAccess,
    // Diskless sync waits 5 s for more replicas by default; they are all there at once.
    argv: (port) => dataArgs(port, []),
  });
  const replicas: ServerProcess[] = [];
  for (let i = 0; i < (opts.replicas ?? 1); i++) {
    replicas.push(
      new ServerProcess({
        name: `sentinel-replica-${i}`,
        dir: join(dir, `replica-${i}`),
        port: await freePort(),
        access: dataAccess,
        argv: (port) => dataArgs(port, ['--replicaof', '127.0.0.1', String(master.port)]),
      }),
    );
  }
  const dataNodes = [master, ...replicas];
  const sentinels: ServerProcess[] = [];
  for (let i = 0; i < count; i++) {
    const sdir = join(dir, `sentinel-${i}`);
    const conf = join(sdir, 'sentinel.conf');
    // Sentinel rewrites its config file as it learns, so each gets its own writable copy, written
    // at start (when the master's port is final); the harness never restarts a sentinel.
    const argv = (port: number) => {
      writeFileSync(
        conf,
        [
          ...(tls ? ['port 0', ...directiveLines(directives(port))] : [`port ${port}`]),
          'bind 127.0.0.1',
          `sentinel monitor ${name} 127.0.0.1 ${master.port} ${quorum}`,
          `sentinel down-after-milliseconds ${name} ${downAfterMs}`,
          `sentinel failover-timeout ${name} 10000`,
          `sentinel parallel-syncs ${name} 1`,
          ...(opts.password ? [`sentinel auth-pass ${name} ${opts.password}`] : []),
          ...(opts.sentinelPassword ? [`requirepass ${opts.sentinelPassword}`, `sentinel sentinel-pass ${opts.sentinelPassword}`] : []),
          '',
        ].join('\n'),
      );
      return [conf, '--sentinel'];
    };
    sentinels.push(new ServerProcess({ name: `sentinel-${i}`, dir: sdir, port: await freePort(), access: sentinelAccess, argv }));
  }
  const all = [...dataNodes, ...sentinels];
  const logs = () => all.map((s) => s.logs()).join('\n');
  const nodeByPort = (port: number) => dataNodes.find((s) => s.port === port);
  const masterAddr = async (sentinel: ServerProcess): Promise<number> => {
    const r = (await adminCall(sentinel.port, sentinelAccess, 'SENTINEL', 'GET-MASTER-ADDR-BY-NAME', name)) as string[] | null;
    if (!r) throw new Error(`sentinel ${sentinel.port} does not know ${name}`);
    return Number(r[1]);
  };
  const masterInfo = async () => String(await adminCall(await masterAddr(sentinels[0]!), dataAccess, 'INFO', 'replication'));
  const writtenSoFar = async () => Number(/master_repl_offset:(\d+)/.exec(await masterInfo())?.[1] ?? 0);
  /**
   * Whether the master streams to the replica on `port` and the replica has acknowledged the offset `written` (what the master
   * had written when waitForReplica was called). Its link is up as soon as the initial copy is loaded, but after a diskless sync the
   * master holds back what was written since until the replica's first REPLCONF ACK (up to a second later): a
   * master killed in between took those writes with it, the task the test had just opened among them.
   */
  const caughtUp = async (port: number, written: number): Promise<boolean> => {
    const line = new RegExp(`slave\\d+:ip=[^,]+,port=${port},state=(\\w+),offset=(\\d+)`).exec(await masterInfo());
    return line?.[1] === 'online' && Number(line[2]) >= written;
  };
  let lastFrom: number | undefined;
  const stop = async () => {
    topologies.delete(t);
    await Promise.all(all.map((s) => s.kill()));
    removeDir(dir);
  };
  const t: RedisSentinel = {
    name,
    // Filled in once started: a taken port moves a server to another.
    sentinelUrls: [],
    sentinelPorts: [],
    ...(opts.password ? { password: opts.password } : {}),
    ...(opts.sentinelPassword ? { sentinelPassword: opts.sentinelPassword } : {}),
    ...(tls ? { tls } : {}),
    masterPort: () => masterAddr(sentinels[0]!),
    client: (port) => adminClient(port, dataAccess),
    async killMaster() {
      const port = await masterAddr(sentinels[0]!);
      const node = nodeByPort(port);
      if (!node) throw new Error(`no process listens on the master port ${port}`);
      lastFrom = port;
      await node.kill('SIGKILL');
      return port;
    },
    async failover() {
      const port = await masterAddr(sentinels[0]!);
      // Refused while a failover is still finishing (INPROG) or no replica is in sync yet (NOGOODSLAVE): ask again.
      await until(
        'the sentinel to accept SENTINEL FAILOVER',
        15_000,
        async () => {
          try {
            return (await adminCall(sentinels[0]!.port, sentinelAccess, 'SENTINEL', 'FAILOVER', name)) === 'OK';
          } catch (err) {
            if (/INPROG|NOGOODSLAVE/.test((err as Error).message)) return false;
            throw new Fatal((err as Error).message);
          }
        },
        logs,
      );
      lastFrom = port;
      return port;
    },
    async waitForReplica(o = {}) {
      const want = o.count ?? 1;
      const written = await writtenSoFar();
      return await until(
        `${want} replica(s) in sync that the sentinel could promote, with every write so far`,
        o.timeoutMs ?? 20_000,
        async () => {
          const seen = (await adminCall(sentinels[0]!.port, sentinelAccess, 'SENTINEL', 'REPLICAS', name)) as string[][];
          const ok: number[] = [];
          for (const flat of seen) {
            const r = new Map<string, string>();
            for (let i = 0; i + 1 < flat.length; i += 2) r.set(String(flat[i]), String(flat[i + 1]));
            // The sentinel's own view of the link lags by up to 10 s (its INFO period); the replica's is current.
            if (r.get('flags') !== 'slave') continue;
            const port = Number(r.get('port'));
            const info = String(await adminCall(port, dataAccess, 'INFO', 'replication'));
            if (/master_link_status:up/.test(info) && (await caughtUp(port, written))) ok.push(port);
          }
          return ok.length >= want ? ok[0] : false;
        },
        logs,
      );
    },
    async waitForFailover(o = {}) {
      const from = o.from ?? lastFrom;
      if (from === undefined) throw new Error('waitForFailover: nothing was killed or failed over');
      return await until(
        `the sentinels to promote a new master (old: ${from})`,
        o.timeoutMs ?? 20_000,
        async () => {
          const ports = await Promise.all(sentinels.map(masterAddr));
          const next = ports[0]!;
          if (next === from || ports.some((p) => p !== next)) return false;
          const role = (await adminCall(next, dataAccess, 'ROLE')) as unknown[];
          if (role[0] !== 'master') return false;
          // Done only when the sentinel has also finished reconfiguring the other replicas.
          const flat = (await adminCall(sentinels[0]!.port, sentinelAccess, 'SENTINEL', 'MASTER', name)) as string[];
          const flags = flat[flat.indexOf('flags') + 1] ?? '';
          return flags.includes('failover_in_progress') ? false : next;
        },
        logs,
      );
    },
    logs,
    stop,
    startedInMs: 0,
  };
  topologies.add(t);
  try {
    await master.start();
    await Promise.all(replicas.map((r) => r.start()));
    await Promise.all(sentinels.map((s) => s.start()));
    t.sentinelUrls = sentinels.map((s) => `${tls ? 'rediss' : 'redis'}://127.0.0.1:${s.port}`);
    t.sentinelPorts = sentinels.map((s) => s.port);
    // A sentinel can only promote a replica it is connected to, and (with several) only with peers it knows of.
    await t.waitForReplica({ timeoutMs: 15_000, count: replicas.length });
    if (count > 1) {
      await Promise.all(
        sentinels.map((s) =>
          until(
            `${s.name} to know ${count - 1} other sentinels`,
            15_000,
            async () => ((await adminCall(s.port, sentinelAccess, 'SENTINEL', 'SENTINELS', name)) as unknown[]).length >= count - 1,
            logs,
          ),
        ),
      );
    }
  } catch (err) {
    await stop();
    throw err;
  }
  t.startedInMs = Date.now() - t0;
  return t;
}
