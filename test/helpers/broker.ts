import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Redis } from 'ioredis';
import { startBroker, type BrokerOptions, type RunningBroker } from '../../src/broker.ts';
import { validateConfig, type LoadedConfig } from '../../src/config/load.ts';
import { silentLogger } from '../../src/logger.ts';
import type { Keys } from '../../src/redis/keys.ts';
import type { RedisClient } from '../../src/redis/scripts.ts';
import { TestIssuer } from './identity.ts';

export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

/** A unique Redis prefix per test file/broker, so files run in parallel without sharing state. */
export function uniquePrefix(name: string): string {
  return `test-${name}-${randomUUID().slice(0, 8)}`;
}

/** Deletes every key under a prefix (test cleanup). */
export async function dropPrefix(prefix: string): Promise<void> {
  const r = new Redis(REDIS_URL);
  const keys = new Set<string>();
  let cursor = '0';
  do {
    const [next, found] = await r.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    for (const k of found) keys.add(k);
  } while (cursor !== '0');
  // One transaction, as a wipe is: deleting batch by batch while SCAN walks a large shared keyspace let a
  // running broker notice the loss after the first batch, recover, and lose part of what recovery wrote to a
  // later batch (test/audit/data-loss-seal.test.ts failed that way in CI).
  const all = [...keys];
  const tx = r.multi();
  for (let i = 0; i < all.length; i += 1000) tx.del(...all.slice(i, i + 1000));
  if (all.length > 0) await tx.exec();
  else tx.discard();
  await r.quit();
}

/** A config for tests: dev.local trust (inline bundle from `issuer`), shipped policies, port 0. */
export function testConfig(issuer: TestIssuer, prefix: string, overrides: Record<string, unknown> = {}): LoadedConfig {
  return validateConfig(testRawConfig(issuer, prefix, overrides), {}, join(process.cwd(), 'config/test.yaml'));
}

/** The same config written to a file (JSON is YAML), for a broker started as its own process (`BROKER_CONFIG`). */
export function testConfigFile(issuer: TestIssuer, prefix: string, overrides: Record<string, unknown> = {}): string {
  const file = join(mkdtempSync(join(tmpdir(), 'jit-config-')), 'broker.yaml');
  writeFileSync(file, JSON.stringify(testRawConfig(issuer, prefix, overrides)));
  return file;
}

/**
 * The test config's revocation settings. An override of `revocation` replaces the whole block, so a test that
 * changes one setting spreads these first (`{ ...TEST_REVOCATION, orphanMs: 2000 }`) and keeps the rest.
 */
export const TEST_REVOCATION: Readonly<Record<string, number>> = {
  backoffMs: 50,
  maxBackoffMs: 500,
  reconcileIntervalMs: 60_000,
  concurrency: 8,
  lockMs: 1000,
  stalledCheckMs: 500,
  sweepMs: 20,
};

/** The test config's `server` with rate limits off: for tests that make more calls than a budget allows. */
export const UNLIMITED_SERVER = { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } };

/** The raw (unvalidated) test config. */
export function testRawConfig(issuer: TestIssuer, prefix: string, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const dir = mkdtempSync(join(tmpdir(), 'jit-kek-'));
  const kekFile = join(dir, 'kek');
  writeFileSync(kekFile, randomBytes(32).toString('base64'));
  const raw: Record<string, unknown> = {
    server: { port: 0, publicUrl: 'http://127.0.0.1:8080' },
    redis: { url: REDIS_URL, prefix },
    secrets: { kek: { file: kekFile } },
    trust: [{ name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: issuer.bundle().keys } }],
    orchestrators: ['spiffe://dev.local/orchestrator/*'],
    admins: ['spiffe://dev.local/ops/*'],
    approvers: ['spiffe://dev.local/ops/*'],
    policies: resolve('config/policies'),
    roles: {
      'tickets-api': {
        provider: 'jwt',
        audience: 'https://tickets.internal',
        maxTtlSeconds: 900,
        scopes: ['tickets:read', 'tickets:write'],
      },
      'demo-api': { provider: 'jwt', audience: 'https://demo.internal', maxTtlSeconds: 300 },
      'prod-deploy': { provider: 'jwt', audience: 'https://deploy.internal', maxTtlSeconds: 300, approval: 'required' },
    },
    revocation: { ...TEST_REVOCATION },
    ...overrides,
  };
  // Each test broker its own audit export (the default ./data/audit.jsonl would be shared by every test).
  const audit = (overrides.audit ?? {}) as { export?: Record<string, unknown> };
  raw.audit = { ...audit, export: { file: join(dir, 'audit.jsonl'), ...(audit.export ?? {}) } };
  // Tests that leave a rotation unfinished on purpose check what the next rotation does: the worker's own
  // pass that finishes it (test/ops/rotation-resume.test.ts turns it on) would race them.
  raw.rotation = { resumeInterruptedSeconds: 0, ...((overrides.rotation as Record<string, unknown> | undefined) ?? {}) };
  return raw;
}

export interface TestBroker {
  broker: RunningBroker;
  url: string;
  issuer: TestIssuer;
  prefix: string;
  config: LoadedConfig;
  /** Bearer header for a workload under dev.local. */
  as(path: string): { authorization: string };
  close(): Promise<void>;
}

/** Starts a real broker (API + worker) against the real Redis under a fresh prefix. */
export async function startTestBroker(
  name: string,
  opts: { config?: Record<string, unknown>; broker?: BrokerOptions; issuer?: TestIssuer; prefix?: string; loaded?: LoadedConfig } = {},
): Promise<TestBroker> {
  const issuer = opts.issuer ?? new TestIssuer();
  const prefix = opts.prefix ?? uniquePrefix(name);
  const config = opts.loaded ?? testConfig(issuer, prefix, opts.config);
  const broker = await startBroker(config, { logger: silentLogger, ...opts.broker });
  return {
    broker,
    url: broker.url!,
    issuer,
    prefix,
    config,
    as: (path) => ({ authorization: `Bearer ${issuer.svid(path)}` }),
    async close() {
      await broker.close();
      await dropPrefix(prefix);
    },
  };
}

/**
 * A second instance on `first`'s prefix, config and identity issuer (many
 * brokers on one Redis). Its close() stops only this broker: the prefix
 * belongs to `first`, which drops it.
 */
export async function startSibling(first: TestBroker, broker: BrokerOptions = {}): Promise<TestBroker> {
  const sibling = await startTestBroker('sibling', {
    prefix: first.prefix,
    loaded: first.config,
    issuer: first.issuer,
    broker: { logger: silentLogger, ...broker },
  });
  return { ...sibling, close: () => sibling.broker.close() };
}

/** JSON request helper returning status and parsed body. */
export async function call(
  url: string,
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: unknown,
): Promise<{ status: number; body: any; headers: Headers }> {
  const res = await fetch(`${url}${path}`, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    /* not JSON */
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

/** Polls until `fn` returns a truthy value or the timeout passes. */
export async function waitFor<T>(fn: () => Promise<T | undefined | false>, timeoutMs = 5000, stepMs = 20): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

/**
 * Opens a budget's two windows (1 s and the reserve's: src/http/rate-limit.ts) ahead with ten minutes to run, as
 * a window's first charge would open them (rate-limit-charge.lua leaves an open window alone). The tests that
 * count calls in sequence then see exactly the burst pass however slowly they run: counted in 1 s windows a
 * loaded machine that took over a second between calls saw a window refill and one call more pass (CI run 37).
 * `key`: the identity string (`spiffe://…`) for `id` and `introspect`, the client address (`127.0.0.1`, an IPv6
 * `/64`) for `unauth`.
 */
export async function openRateWindows(t: TestBroker, budget: 'id' | 'introspect' | 'unauth', key: string): Promise<void> {
  for (const w of ['s', 'r']) await t.broker.deps.redis.set(`${t.prefix}:rl:${budget}:${w}:${key}`, 0, 'PX', 600_000);
}

export const ORCH = '/orchestrator/main';
export const AGENT = '/agent/support';
export const ADMIN = '/ops/alice';

/**
 * Opens a task for the test agent (AGENT) as the test orchestrator (ORCH),
 * 600 s unless told, tenant acme, with `grants`; expects 201. `t` may be a
 * broker process too (`{ url, as }`: its URL and the test issuer's headers).
 */
export async function openAgentTask(
  t: Pick<TestBroker, 'url' | 'as'>,
  taskId: string,
  grants: Record<string, unknown>[],
  purpose = 'test',
  ttlSeconds = 600,
): Promise<void> {
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose,
    ttlSeconds,
    grants,
  });
  expect(r.status).toBe(201);
}

/** Every audit record under a broker's prefix (all chains), oldest first. */
export async function auditRecords(redis: RedisClient, keys: Keys): Promise<Record<string, any>[]> {
  const all: Record<string, any>[] = [];
  for (const chain of keys.auditChains()) {
    for (const [, f] of await redis.xrange(keys.auditStream(chain), '-', '+')) all.push({ ...JSON.parse(f[1]!), chain });
  }
  return all.sort((a, b) => a.time.localeCompare(b.time) || a.seq - b.seq);
}
