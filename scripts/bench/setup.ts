/** Shared set-up for the benchmark: a private Redis, a config file, a broker child process, an identity issuer. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync, randomBytes, randomUUID, sign, type KeyObject } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { Redis } from 'ioredis';

export const BENCH_REDIS_PORT = Number(process.env.BENCH_REDIS_PORT ?? 6390);

/** A Redis of the benchmark's own, so memory figures count only the broker's keys. */
export async function startBenchRedis(): Promise<{ url: string; redis: Redis; stop(): Promise<void> }> {
  // A leftover bench Redis (an earlier run still shutting down) would answer the
  // first ping and then vanish: stop it and wait until the port is free.
  spawnSync('redis-cli', ['-p', String(BENCH_REDIS_PORT), 'shutdown', 'nosave'], { stdio: 'ignore' });
  for (
    let i = 0;
    i < 50 && spawnSync('redis-cli', ['-p', String(BENCH_REDIS_PORT), 'ping'], { encoding: 'utf8' }).stdout.includes('PONG');
    i++
  ) {
    await new Promise((r) => setTimeout(r, 100));
  }
  const r = spawnSync(
    'redis-server',
    [
      '--daemonize',
      'yes',
      '--port',
      String(BENCH_REDIS_PORT),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--dir',
      tmpdir(),
    ],
    { stdio: 'inherit' },
  );
  if (r.error || r.status !== 0) throw new Error('bench: could not start redis-server');
  const url = `redis://127.0.0.1:${BENCH_REDIS_PORT}`;
  const redis = new Redis(url, { lazyConnect: true });
  redis.on('error', () => {}); // connection refused while it starts; the loop below waits
  for (let i = 0; i < 50; i++) {
    try {
      if (redis.status === 'wait' || redis.status === 'end') await redis.connect();
      if ((await redis.ping()) === 'PONG') break;
    } catch {
      /* starting */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  await redis.flushall();
  return {
    url,
    redis,
    async stop() {
      // Not SHUTDOWN through ioredis: the server closes the socket without a reply, ioredis resends the
      // command after reconnecting and retries the refused connection for half a minute before the bench can exit.
      redis.disconnect();
      spawnSync('redis-cli', ['-p', String(BENCH_REDIS_PORT), 'shutdown', 'nosave'], { stdio: 'ignore' });
    },
  };
}

/** Signs SPIFFE JWT-SVIDs for the bench trust domain. */
export class BenchIssuer {
  readonly kid = randomUUID();
  private readonly key: KeyObject;
  readonly bundle: Record<string, unknown>[];
  constructor() {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    this.key = privateKey;
    this.bundle = [{ ...publicKey.export({ format: 'jwk' }), kid: this.kid, use: 'jwt-svid', alg: 'ES256' }];
  }
  svid(path: string, ttl = 3600): string {
    const now = Math.floor(Date.now() / 1000);
    const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const input = `${enc({ alg: 'ES256', kid: this.kid, typ: 'JWT' })}.${enc({ sub: `spiffe://bench.local${path}`, aud: ['jit-broker'], iat: now, exp: now + ttl })}`;
    return `${input}.${sign('sha256', Buffer.from(input), { key: this.key, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
  }
}

/**
 * The bench drives one agent identity far beyond its default budget (50/s).
 * By default the limiter stays on with a budget the load never spends, so its
 * cost (one Redis round trip per request) is part of every figure;
 * BENCH_RATE_LIMIT=off measures without it.
 */
function benchRateLimit(): Record<string, unknown> {
  return process.env.BENCH_RATE_LIMIT === 'off'
    ? { perSecond: 0, introspect: { perSecond: 0 } }
    : { perSecond: 1_000_000, burst: 1_000_000, introspect: { perSecond: 1_000_000 } };
}

/** Writes a config for the bench broker and returns its path. */
export function writeBenchConfig(opts: {
  redisUrl: string;
  prefix: string;
  port: number;
  issuer: BenchIssuer;
  policiesDir: string;
  extra?: Record<string, unknown>;
  roles?: Record<string, unknown>;
  /** Another config's KEK file: instances sharing a prefix must share the KEK. */
  kekFile?: string;
}): string {
  const dir = mkdtempSync(join(tmpdir(), 'jit-bench-'));
  writeFileSync(join(dir, 'kek'), randomBytes(32).toString('base64'));
  const kek = opts.kekFile ?? join(dir, 'kek');
  const config = {
    server: { port: opts.port, publicUrl: `http://127.0.0.1:${opts.port}`, rateLimit: benchRateLimit() },
    redis: { url: opts.redisUrl, prefix: opts.prefix },
    secrets: { kek: { file: kek } },
    // The load piles tens of thousands of leases on one task: the per-task bounds (1,000 live, 10,000 ever) would refuse them.
    tasks: { maxLeases: 0, maxLeasesTotal: 0 },
    // Each bench broker its own export: the default ./data/audit.jsonl belongs to one prefix.
    audit: { export: { file: join(dir, 'audit.jsonl') } },
    trust: [{ name: 'bench', kind: 'spiffe', trustDomain: 'bench.local', audiences: ['jit-broker'], jwks: { keys: opts.issuer.bundle } }],
    orchestrators: ['spiffe://bench.local/orchestrator/*'],
    admins: ['spiffe://bench.local/ops/*'],
    policies: opts.policiesDir,
    roles: {
      'tickets-api': {
        provider: 'jwt',
        audience: 'https://tickets.internal',
        maxTtlSeconds: 900,
        scopes: ['tickets:read', 'tickets:write'],
      },
      'demo-api': { provider: 'jwt', audience: 'https://demo.internal', maxTtlSeconds: 900 },
      ...opts.roles,
    },
    ...opts.extra,
  };
  const file = join(dir, 'broker.yaml');
  writeFileSync(file, stringify(config));
  return file;
}

/**
 * Opens a bench task (tenant acme, purpose bench) by POST /v1/tasks as the
 * orchestrator `orchToken`; defaults: agent /agent/bench, one hour, the
 * tickets-api grant with tickets:read.
 */
export async function openBenchTask(
  url: string,
  orchToken: string,
  taskId: string,
  opts: { agentPath?: string; ttlSeconds?: number; grants?: unknown[] } = {},
): Promise<void> {
  const res = await fetch(`${url}/v1/tasks`, {
    method: 'POST',
    headers: { authorization: `Bearer ${orchToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      taskId,
      agent: `spiffe://bench.local${opts.agentPath ?? '/agent/bench'}`,
      tenant: 'acme',
      purpose: 'bench',
      ttlSeconds: opts.ttlSeconds ?? 3600,
      grants: opts.grants ?? [{ role: 'tickets-api', scopes: ['tickets:read'] }],
    }),
  });
  if (res.status !== 201) throw new Error(`open task: ${res.status} ${await res.text()}`);
}

/** Starts `node src/main.ts` as its own process (the load generator stays in this one). */
export async function startBrokerProcess(
  configFile: string,
  port: number,
  args: string[] = [],
): Promise<{ child: ChildProcess; url: string; stop(): Promise<void> }> {
  const child = spawn(
    process.execPath,
    [...(process.env.BENCH_NODE_FLAGS ? process.env.BENCH_NODE_FLAGS.split(' ') : []), 'src/main.ts', ...args],
    {
      env: { ...process.env, BROKER_CONFIG: configFile, LOG_LEVEL: 'warn' },
      stdio: ['ignore', process.env.BENCH_NODE_FLAGS ? 'inherit' : 'ignore', 'inherit'],
    },
  );
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    try {
      if ((await fetch(`${url}/readyz`)).ok) break;
    } catch {
      /* starting */
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    child,
    url,
    async stop() {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    },
  };
}

/** Writes a policy directory: a single permit-all, or a realistic set of `n` policies (20+). */
export function writePolicies(kind: 'permit-all' | 'realistic', n = 24): string {
  const dir = mkdtempSync(join(tmpdir(), 'jit-bench-policies-'));
  if (kind === 'permit-all') {
    writeFileSync(join(dir, 'all.cedar'), 'permit (principal, action, resource);\n');
    return dir;
  }
  const lines: string[] = [
    '@id("orchestrators") permit (principal, action in [Action::"openTask", Action::"completeTask"], resource) when { principal.id like "spiffe://bench.local/orchestrator/*" };',
    '@id("agents-issue") permit (principal, action == Action::"issue", resource) when { principal.id like "spiffe://bench.local/agent/*" && context.task.agent == principal.id && context.task.roles.contains(resource.id) && context.ttlSeconds <= 3600 };',
    '@id("revoke") permit (principal, action == Action::"revoke", resource);',
    '@id("no-prod-unapproved") forbid (principal, action == Action::"issue", resource == Role::"prod-deploy") unless { context has approved && context.approved };',
  ];
  for (let i = lines.length; i < n; i++) {
    lines.push(
      `@id("tenant-${i}") forbid (principal, action == Action::"issue", resource) when { context.task.tenant == "blocked-${i}" && context.scopes.contains("scope:${i}") };`,
    );
  }
  writeFileSync(join(dir, 'bench.cedar'), `${lines.join('\n')}\n`);
  return dir;
}
