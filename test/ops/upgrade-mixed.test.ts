import { expect } from '@jest/globals';
import { Redis } from 'ioredis';
import { Keys } from '../../src/redis/keys.ts';
import { AGENT, call, ORCH, REDIS_URL, TEST_REVOCATION, testRawConfig, UNLIMITED_SERVER, waitFor } from '../helpers/broker.ts';
import { extractPreviousRelease, previousReleaseTest, writeReleaseConfigs } from '../helpers/old-release.ts';
import { START_TIMEOUT_MS, processFixture } from '../helpers/process.ts';

/**
 * A rolling upgrade: processes of the previous release (dd78339) and of this one on one Redis at once. Not
 * supported beyond what docs/operations.md says, but it must fail safe: no credential outlives its task and
 * the new processes answer no 500.
 *
 * Found here: the previous release keeps a task's lease ids in a plain set (`task-leases`) and its worker ends
 * a completed task's leases from that set; this release wrote only its new index (`task-lease-ids`) and moved
 * the set into it on a read. With a worker of the previous release still running, a task completed through a
 * new API (or an old one: the ending job goes to whichever worker takes it) kept every lease a new API had
 * issued `active` (and upstream credentials unrevoked) until their own expiry: 40 s later they still were.
 * lease-create.lua now writes both, and the read leaves the set in place.
 */
const maybe = previousReleaseTest('test/ops/upgrade-mixed.test.ts');

const fx = processFixture();
const { issuer, as } = fx;
const prefix = fx.prefix('upgrade-mixed');

maybe(
  'old and new processes at once: every lease ends with its task, whichever release issued it or ends it',
  async () => {
    const old = extractPreviousRelease();
    fx.onCleanup(old.remove);
    const raw = testRawConfig(issuer, prefix, {
      server: UNLIMITED_SERVER,
      // The reconciler (which would end leftovers in a new worker) runs rarely: the ending job alone must do it.
      revocation: { ...TEST_REVOCATION, reconcileIntervalMs: 600_000 },
    });
    const { oldFile, newFile } = writeReleaseConfigs(old.dir, raw, 'jit-upgrade-mixed');
    const keys = new Keys(prefix);
    const r = new Redis(REDIS_URL);
    try {
      // APIs of both releases; the workers are the previous release's (an upgrade that began with the APIs).
      const [oldApi, oldWorker, newApi] = await Promise.all([
        fx.start(oldFile, { cwd: old.dir, args: ['--api'] }),
        fx.start(oldFile, { cwd: old.dir, args: ['--worker'] }),
        fx.startBroker('upgrade-mixed', newFile, { worker: false }),
      ]);
      const [O, N] = [oldApi.url, newApi.url];
      const fromNew: number[] = [];
      const req = async (url: string, method: string, path: string, who: string, body?: unknown) => {
        const res = await call(url, method, path, as(who), body);
        if (url === N) fromNew.push(res.status);
        return res;
      };
      const open = async (url: string, taskId: string) =>
        expect(
          (
            await req(url, 'POST', '/v1/tasks', ORCH, {
              taskId,
              agent: `spiffe://dev.local${AGENT}`,
              tenant: 'acme',
              purpose: 'p',
              ttlSeconds: 600,
              grants: [{ role: 'demo-api' }],
            })
          ).status,
        ).toBe(201);
      const issue = async (url: string, taskId: string) => {
        const res = await req(url, 'POST', '/v1/credentials', AGENT, { taskId, role: 'demo-api', ttlSeconds: 300 });
        expect(res.status).toBe(201);
        return { id: res.body.leaseId as string, token: res.body.credentials.access_token as string };
      };
      const statuses = (ids: { id: string }[]) => Promise.all(ids.map((l) => r.hget(keys.lease(l.id), 'status')));
      const allRevoked = (ids: { id: string }[]) =>
        waitFor(async () => (await statuses(ids)).every((s) => s === 'revoked'), 10_000, 50).catch(async () => {
          throw new Error(`lease statuses: ${(await statuses(ids)).join(', ')}`);
        });

      // Opened and completed through the new API; leases from both, a read of the new API in between.
      await open(N, 't-x');
      const x = [await issue(N, 't-x')];
      expect((await req(N, 'GET', '/v1/tasks/t-x', ORCH)).body.leases).toHaveLength(1);
      x.push(await issue(O, 't-x'), await issue(N, 't-x'));
      expect((await req(N, 'GET', '/v1/tasks/t-x/leases', ORCH)).body.items).toHaveLength(3);
      expect((await req(N, 'POST', '/v1/tasks/t-x/complete', ORCH)).status).toBe(202);
      await allRevoked(x);
      // Opened and completed through the old API.
      await open(O, 't-y');
      const y = [await issue(O, 't-y'), await issue(N, 't-y')];
      expect((await req(N, 'GET', '/v1/tasks/t-y', ORCH)).body.leases).toHaveLength(2);
      y.push(await issue(O, 't-y'));
      expect((await call(O, 'POST', '/v1/tasks/t-y/complete', as(ORCH))).status).toBe(202);
      await allRevoked(y);

      // The workers replaced by new ones (docs/operations.md: workers first): an old API beside them.
      await oldWorker.kill('SIGTERM');
      await fx.startBroker('upgrade-mixed-worker', newFile, { api: false });
      await open(O, 't-z');
      const z = [await issue(O, 't-z'), await issue(N, 't-z')];
      expect((await req(N, 'GET', '/v1/tasks/t-z', ORCH)).body.leases).toHaveLength(2);
      z.push(await issue(O, 't-z'));
      expect((await call(O, 'POST', '/v1/tasks/t-z/complete', as(ORCH))).status).toBe(202);
      await allRevoked(z);

      for (const t of ['t-x', 't-y', 't-z']) {
        const ev = await req(N, 'GET', `/v1/tasks/${t}/evidence`, ORCH);
        expect(ev.body.chain).toBe('intact');
        expect(ev.body.leases).toHaveLength(3);
      }
      expect(fromNew.filter((s) => s >= 500)).toEqual([]);
    } finally {
      await r.quit();
    }
  },
  // The old release's processes may take START_TIMEOUT_MS to start on a loaded machine; the rest takes ~60 s.
  START_TIMEOUT_MS + 60_000,
);
