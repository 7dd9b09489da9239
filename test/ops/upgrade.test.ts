import { expect } from '@jest/globals';
import { execFile } from 'node:child_process';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { Keys } from '../../src/redis/keys.ts';
import {
  AGENT,
  ADMIN,
  auditRecords,
  call,
  ORCH,
  openAgentTask,
  REDIS_URL,
  TEST_REVOCATION,
  testRawConfig,
  UNLIMITED_SERVER,
  waitFor,
} from '../helpers/broker.ts';
import { capturingLogger } from '../helpers/log-capture.ts';
import {
  extractPreviousRelease,
  previousReleaseConfig,
  previousReleaseTest,
  scriptSha,
  writeReleaseConfigs,
} from '../helpers/old-release.ts';
import { START_TIMEOUT_MS, processFixture } from '../helpers/process.ts';
import { redisCutProxy } from '../helpers/redis-cut-proxy.ts';

/**
 * The operator's upgrade day, in place: every process of the previous release (dd78339) is stopped and the
 * new ones start on the same Redis. The old release runs as real processes from its own tree (`git archive`
 * of the commit, with this checkout's node_modules: package.json did not change between them) and leaves
 * what a running deployment leaves: open tasks with JWT leases (in the plain `task-leases` set this release
 * replaced with the `task-lease-ids` index), ended leases, a sub-task, a pending approval, exported and
 * sealed audit chains, and records in an audit outbox (an API process cut off between a task's ending and
 * its append, then SIGKILLed; the outbox members of that release carry no tag). The new release must end
 * every lease on time and with its task, read and page the old leases, decide the approval, append what the
 * outbox holds exactly once, and `audit:verify` must say intact. (It passed on this release as it was: the
 * in-place upgrade needed no fix; the rolling one did, test/ops/upgrade-mixed.test.ts.)
 */
const maybe = previousReleaseTest('test/ops/upgrade.test.ts');

const run = promisify(execFile);
const fx = processFixture();
const { issuer, as } = fx;
const prefix = fx.prefix('upgrade');
const HELPER = '/agent/helper';
const introspect = async (url: string, token: string) =>
  (
    await fetch(`${url}/v1/introspect`, {
      method: 'POST',
      headers: { ...as('/resource/tickets'), 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    })
  ).json() as Promise<{ active: boolean }>;

maybe(
  'state left by the previous release is served, ended and audited by this one after an in-place upgrade',
  async () => {
    const old = extractPreviousRelease();
    fx.onCleanup(old.remove);
    const oldDir = old.dir;

    // One config (one KEK, one export file, one prefix) for both releases; the old one knows fewer keys.
    const raw = testRawConfig(issuer, prefix, {
      server: UNLIMITED_SERVER,
      audit: { sealIntervalSeconds: 1, retentionIntervalSeconds: 1 },
      revocation: { ...TEST_REVOCATION, reconcileIntervalMs: 1000 },
    });
    const exportFile = (raw.audit as { export: { file: string } }).export.file;
    const { dir, oldFile, newFile } = writeReleaseConfigs(oldDir, raw, 'jit-upgrade');
    const proxy = await redisCutProxy(REDIS_URL);
    // The old release once more, its Redis behind the cutting proxy.
    const oldCutFile = join(dir, 'old-cut.yaml');
    writeFileSync(
      oldCutFile,
      JSON.stringify({ ...previousReleaseConfig(oldDir, raw), redis: { ...(raw.redis as object), url: proxy.url } }),
    );
    const keys = new Keys(prefix);
    const r = new Redis(REDIS_URL);
    try {
      // ---- The old release: API and worker in one process, and an API behind the cutting proxy (started together).
      const [before, victim] = await Promise.all([
        fx.start(oldFile, { cwd: oldDir }),
        fx.start(oldCutFile, { cwd: oldDir, args: ['--api'] }),
      ]);
      const open = (taskId: string, ttlSeconds: number, grants: Record<string, unknown>[]) =>
        openAgentTask({ url: before.url, as }, taskId, grants, 'upgrade', ttlSeconds);
      const issue = async (url: string, who: string, taskId: string, role: string, ttlSeconds: number) => {
        const res = await call(url, 'POST', '/v1/credentials', as(who), { taskId, role, ttlSeconds });
        expect(res.status).toBe(201);
        return {
          id: res.body.leaseId as string,
          token: res.body.credentials.access_token as string,
          expiresAt: Date.parse(res.body.expiresAt),
        };
      };
      await open('t-main', 600, [{ role: 'demo-api' }, { role: 'tickets-api', scopes: ['tickets:read'] }]);
      await open('t-short', 600, [{ role: 'demo-api' }]);
      const long = await issue(before.url, AGENT, 't-main', 'tickets-api', 300);
      const ended = await issue(before.url, AGENT, 't-main', 'demo-api', 300);
      expect((await call(before.url, 'DELETE', `/v1/leases/${ended.id}`, as(AGENT))).status).toBe(202);
      // A sub-task for another agent, with its own lease.
      const sub = await call(before.url, 'POST', '/v1/tasks', as(AGENT), {
        taskId: 'sub',
        parentTaskId: 't-main',
        agent: `spiffe://dev.local${HELPER}`,
        ttlSeconds: 300,
        grants: [{ role: 'demo-api' }],
      });
      expect(sub.status).toBe(201);
      const subLease = await issue(before.url, HELPER, 't-main~sub', 'demo-api', 300);
      // A credential waiting for a human.
      await open('t-approve', 600, [{ role: 'prod-deploy' }]);
      const pending = await call(before.url, 'POST', '/v1/credentials', as(AGENT), { taskId: 't-approve', role: 'prod-deploy' });
      expect(pending.status).toBe(202);
      // A task whose deadline passes under the new release, with a lease clamped to it.
      await open('t-deadline', 20, [{ role: 'demo-api' }]);
      const clamped = await issue(before.url, AGENT, 't-deadline', 'demo-api', 300);
      // A task the next process completes and dies in.
      await open('t-killed', 600, [{ role: 'demo-api' }]);
      const killedLeases = [
        await issue(before.url, AGENT, 't-killed', 'demo-api', 300),
        await issue(before.url, AGENT, 't-killed', 'demo-api', 300),
      ];
      await waitFor(async () => (await r.hget(keys.lease(ended.id), 'status')) === 'revoked', 10_000, 50);
      // The old worker exported and sealed.
      await waitFor(async () => statSync(exportFile, { throwIfNoEntry: false })?.size, 10_000, 100);
      await waitFor(async () => (await r.exists(keys.auditSeal(keys.bucketOfTask('t-main')))) === 1, 10_000, 100);

      // ---- An old API process completes t-killed and is cut off between task-end.lua and its append.
      const cut = proxy.arm(scriptSha(oldDir, 'audit-append'));
      const completing = call(victim.url, 'POST', '/v1/tasks/t-killed/complete', as(ORCH)).catch(() => undefined);
      await cut;
      await waitFor(async () => (await r.hget(keys.task('t-killed'), 'status')) === 'completed', 5000);
      await victim.kill('SIGKILL');
      await completing;
      const outbox = keys.auditOutbox(keys.bucketOfTask('t-killed'));
      expect(await r.zcard(outbox)).toBeGreaterThan(0);

      // A lease that expires after the upgrade; then every old process stops (SIGTERM, as an operator would).
      const short = await issue(before.url, AGENT, 't-short', 'demo-api', 12);
      // In the sweep's index (score: when the sweep must end it) at its expiry: the new worker ends it then.
      const shortLive = keys.liveLeases(keys.bucketOfId(short.id)!);
      expect(Number(await r.zscore(shortLive, short.id))).toBe(short.expiresAt);
      // The old release kept a task's lease ids in a plain set.
      expect(await r.type(keys.taskLeasesLegacy('t-main'))).toBe('set');
      await before.kill('SIGTERM');

      // ---- The new release on the same Redis.
      const log = capturingLogger('warn');
      const fresh = await fx.startBroker('upgrade-new', newFile, { logger: log.logger });
      const url = fresh.url;
      expect((await call(url, 'GET', '/readyz', {})).status).toBe(200);

      // The old leases are read and paged.
      const task = await call(url, 'GET', '/v1/tasks/t-main', as(ORCH));
      expect(task.status).toBe(200);
      const shown = new Map((task.body.leases as { leaseId: string; status: string }[]).map((l) => [l.leaseId, l.status]));
      expect(Object.fromEntries(shown)).toEqual({ [long.id]: 'active', [ended.id]: 'revoked' });
      const paged = await call(url, 'GET', '/v1/tasks/t-main/leases?limit=1', as(ORCH));
      expect(paged.status).toBe(200);
      expect(paged.body.items).toHaveLength(1);
      const rest = await call(url, 'GET', `/v1/tasks/t-main/leases?limit=1&cursor=${paged.body.nextCursor}`, as(ORCH));
      expect(new Set([...paged.body.items, ...rest.body.items].map((l: { leaseId: string }) => l.leaseId))).toEqual(new Set(shown.keys()));
      const tree = await call(url, 'GET', '/v1/tasks/t-main/leases?tree=true', as(ORCH));
      expect(tree.body.items.map((l: { leaseId: string }) => l.leaseId)).toContain(subLease.id);
      const ev = await call(url, 'GET', '/v1/tasks/t-main/evidence', as(ORCH));
      expect(ev.status).toBe(200);
      expect(ev.body.chain).toBe('intact');

      // The pending approval is decided, and the credential it waited for is issued.
      const decided = await call(url, 'POST', `/v1/approvals/${pending.body.approvalId}`, as(ADMIN), {
        decision: 'approve',
        reason: 'upgrade',
      });
      expect(decided.status).toBe(200);
      expect((await call(url, 'POST', '/v1/credentials', as(AGENT), { taskId: 't-approve', role: 'prod-deploy' })).status).toBe(201);

      // A lease the new release issues on an old task joins the old ones.
      const added = await issue(url, AGENT, 't-main', 'demo-api', 300);

      // Completing the old task revokes its leases, old and new, and its sub-task's.
      expect((await call(url, 'POST', '/v1/tasks/t-main/complete', as(ORCH))).status).toBe(202);
      const status = async (id: string) => r.hget(keys.lease(id), 'status');
      await waitFor(
        async () =>
          (await status(long.id)) === 'revoked' && (await status(subLease.id)) === 'revoked' && (await status(added.id)) === 'revoked',
        10_000,
        50,
      );
      expect((await introspect(url, long.token)).active).toBe(false);
      expect((await introspect(url, subLease.token)).active).toBe(false);
      expect(await r.hget(keys.task('t-main~sub'), 'status')).toBe('completed');

      // The lease issued by the old release expires on time (the worker's sweep, not its TTL in Redis).
      // Judged on its record, not on when the test saw it (on a loaded machine the polls run seconds late): ended
      // by the sweep (its record kept, `ttl_expired`, out of the index, lease.expire audited), not before its time.
      await waitFor(async () => (await status(short.id)) === 'expired', 20_000, 50);
      const [reason, revokedAt] = await r.hmget(keys.lease(short.id), 'reason', 'revokedAt');
      expect(reason).toBe('ttl_expired');
      expect(Number(revokedAt)).toBeGreaterThanOrEqual(short.expiresAt);
      expect(await r.zscore(shortLive, short.id)).toBeNull();
      await waitFor(
        async () => (await auditRecords(r, keys)).some((x) => x.action === 'lease.expire' && x.leaseId === short.id),
        10_000,
        100,
      );
      expect((await introspect(url, short.token)).active).toBe(false);
      // The task's deadline ends it and the lease clamped to it.
      await waitFor(async () => (await r.hget(keys.task('t-deadline'), 'status')) === 'expired', 20_000, 50);
      await waitFor(async () => (await status(clamped.id)) === 'expired', 5000, 50);

      // The leases of the task the killed process completed end, and what it left in the outbox is appended once.
      await waitFor(async () => (await Promise.all(killedLeases.map((l) => status(l.id)))).every((s) => s === 'revoked'), 10_000, 50);
      await waitFor(async () => (await r.zcard(outbox)) === 0, 20_000, 200);
      const recs = await auditRecords(r, keys);
      expect(recs.filter((x) => x.action === 'task.complete' && x.taskId === 't-killed')).toHaveLength(1);
      for (const l of killedLeases) expect(recs.filter((x) => x.action === 'lease.revoke' && x.leaseId === l.id)).toHaveLength(1);

      // Every chain (the old export, the old seals, the new records) verifies.
      await new Promise((res) => setTimeout(res, 2500)); // a seal and an export by the new worker
      const verify = await run(process.execPath, ['scripts/audit-verify.ts'], { env: { ...process.env, BROKER_CONFIG: newFile } }).catch(
        (err: { code: number; stdout: string; stderr: string }) => ({ stdout: `exit ${err.code}\n${err.stdout}${err.stderr}` }),
      );
      expect(verify.stdout).not.toMatch(/^exit/);
      expect(verify.stdout).toMatch(/intact/);
      // Nothing taken for a data loss, a foreign lock or a poison member, and nothing logged as an error.
      expect(
        (await auditRecords(r, keys)).filter((x) => ['broker.data_loss', 'lock.takeover', 'audit.outbox_poison'].includes(x.action)),
      ).toEqual([]);
      // A Redis command that timed out on a loaded machine (an export pass failed, retried by the next one with
      // nothing lost) is the machine, not the upgrade: left out, as any error that is not one.
      const timedOut = (l: Record<string, unknown>) => /^(Command timed out|Redis stalled)/.test(String(l.err ?? ''));
      expect(log.lines.filter((l) => Number(l.level) >= 50 && !timedOut(l))).toEqual([]);
    } finally {
      await r.quit();
      await proxy.close();
    }
  },
  // The old release's processes may take START_TIMEOUT_MS to start on a loaded machine; the rest took ~50 s there.
  START_TIMEOUT_MS + 90_000,
);
