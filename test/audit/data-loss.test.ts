import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';
import { deriveSealKey } from '../../src/audit/seal.ts';
import { verifyAudit } from '../../src/audit/verify.ts';
import { readSecret, resolvePath } from '../../src/config/load.ts';
import { ADMIN, call, startTestBroker, type TestBroker, uniquePrefix, waitFor } from '../helpers/broker.ts';

// A Redis of its own: the test empties it with FLUSHALL, as a restart without persistence would.
let server: ChildProcess;
let url: string;
let redis: Redis;
let b: TestBroker;

async function freePort(): Promise<number> {
  const s = createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address() as { port: number };
  s.close();
  await once(s, 'close');
  return port;
}

beforeAll(async () => {
  const port = await freePort();
  server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  url = `redis://127.0.0.1:${port}`;
  redis = new Redis(url, { lazyConnect: true, retryStrategy: () => 50 });
  await waitFor(async () => (await redis.ping().catch(() => '')) === 'PONG', 5000, 50);
  const prefix = uniquePrefix('audit-loss');
  b = await startTestBroker('audit-loss', {
    prefix,
    config: { redis: { url, prefix }, audit: { sealIntervalSeconds: 60, retentionIntervalSeconds: 60 } },
    broker: { dataLossCheckMs: 100 },
  });
});

afterAll(async () => {
  await b?.close();
  await redis?.quit();
  server?.kill('SIGTERM');
});

const BAD = '/agent/leaky';

/** What a call by `who` gets (a task that does not exist: 404 unless the caller is refused first). */
async function refused(who: string): Promise<{ status: number; code: string }> {
  const res = await call(b.url, 'GET', '/v1/tasks/no-such-task', b.as(who));
  return { status: res.status, code: res.body?.code };
}

test('a quarantine survives Redis losing its data: restored from the export before the broker is ready again', async () => {
  const q = await call(b.url, 'POST', '/v1/admin/quarantine', b.as(ADMIN), { agent: `spiffe://dev.local${BAD}`, reason: 'leaked a key' });
  expect(q.status).toBe(201);
  expect(await refused(BAD)).toEqual({ status: 403, code: 'identity_quarantined' });
  // Durable in the export when the admin got the answer (no periodic pass runs within this test's 60 s interval).
  const file = resolvePath(b.config.audit.export.file);
  const exported = readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
  expect(exported.some((l) => l.record?.action === 'quarantine.add' && l.record.detail.pattern === `spiffe://dev.local${BAD}`)).toBe(true);

  const seen: number[] = [];
  let polling = true;
  const poller = (async () => {
    while (polling) {
      seen.push((await fetch(`${b.url}/readyz`)).status);
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  const lostAt = Date.now();
  await redis.flushall();
  await waitFor(
    async () => (await redis.get(b.broker.deps.keys.epoch())) !== null && (await fetch(`${b.url}/readyz`)).status === 200,
    10_000,
    20,
  );
  const readyAfterMs = Date.now() - lostAt;
  polling = false;
  await poller;
  // Not ready in between, or ready again within the data-loss check interval (100 ms) plus the recovery itself.
  expect(seen.includes(503) || readyAfterMs < 1000).toBe(true);

  expect(await refused(BAD)).toEqual({ status: 403, code: 'identity_quarantined' });
  expect(await refused('/agent/other')).toEqual({ status: 404, code: 'task_not_found' });
  const list = await call(b.url, 'GET', '/v1/admin/quarantine', b.as(ADMIN));
  expect(list.body.items).toEqual([
    expect.objectContaining({ pattern: `spiffe://dev.local${BAD}`, reason: 'leaked a key', by: `spiffe://dev.local${ADMIN}` }),
  ]);

  // The ops chain goes on from the export: verify reads export + Redis as one chain and names the loss.
  await b.broker.deps.audit.flush();
  const sealKey = deriveSealKey(readSecret(b.config.secrets.kek!, 'secrets.kek'));
  const reports = await verifyAudit(b.broker.deps.redis, b.broker.deps.keys, { exportFile: file, sealKey });
  for (const r of reports) expect({ chain: r.chain, problems: r.problems }).toEqual({ chain: r.chain, problems: [] });
  const ops = reports.find((r) => r.chain === 'ops')!;
  expect(ops.losses).toHaveLength(1);
  expect(ops.losses[0]!.continuedFromSeq).toBeGreaterThan(0);
  expect(ops.fromFile).toBeGreaterThan(0);
});

test('a broker started on an emptied Redis next to its export recovers the same way (every instance had restarted)', async () => {
  const keys = b.broker.deps.keys;
  const before = (await redis.get(keys.auditHead('ops')))!;
  await b.close();
  await redis.flushall();
  b = await startTestBroker('audit-loss', { prefix: b.prefix, loaded: b.config, issuer: b.issuer, broker: { dataLossCheckMs: 100 } });
  expect(await refused(BAD)).toEqual({ status: 403, code: 'identity_quarantined' });
  // The chain continues from the export's last record, not from seq 1.
  const head = (await redis.get(keys.auditHead('ops')))!;
  expect(Number(head.split(':')[0])).toBeGreaterThan(1);
  await b.broker.deps.audit.flush();
  const sealKey = deriveSealKey(readSecret(b.config.secrets.kek!, 'secrets.kek'));
  const ops = (
    await verifyAudit(b.broker.deps.redis, keys, { exportFile: resolvePath(b.config.audit.export.file), sealKey, chains: ['ops'] })
  )[0]!;
  expect(ops.problems).toEqual([]);
  expect(ops.losses).toHaveLength(2);
  // Shutdown exported what the first broker wrote last, so nothing was lost this time.
  expect(ops.losses[1]).toMatchObject({ continuedFromSeq: Number(before.split(':')[0]) });
  expect(ops.losses[1]!.lostToSeq).toBeUndefined();
});
