import { expect } from '@jest/globals';
import { Redis } from 'ioredis';
import { Keys } from '../../src/redis/keys.ts';
import {
  AGENT,
  auditRecords,
  call,
  ORCH,
  REDIS_URL,
  TEST_REVOCATION,
  testRawConfig,
  UNLIMITED_SERVER,
  waitFor,
} from '../helpers/broker.ts';
import { extractPreviousRelease, previousReleaseTest, writeReleaseConfigs } from '../helpers/old-release.ts';
import { type BrokerProcess, START_TIMEOUT_MS, processFixture } from '../helpers/process.ts';
import { startUpstreams } from '../helpers/upstreams.ts';

/**
 * A rolling upgrade with upstream credentials: processes of the previous release (dd78339, real processes from
 * its own tree) and of this one (real processes too) on one Redis at once, issuing and revoking Vault tokens,
 * Vault dynamic secrets and AWS STS sessions (the strict emulators, revocation by iam-deny). Mixed: credentials
 * of one task issued through both APIs, the task completed through either, its ending job taken by a worker of
 * either release (both run at once), a task's deadline and leases' TTLs passing while both sweep; then a worker
 * of each release SIGKILLed while it revokes (Vault sealed, so its Vault leases are `revoke_failed`; its deny
 * write to IAM held on the wire) and a worker of the other release finishing the job, the killed write landing
 * late over the other release's denies; and an API of each release SIGKILLed mid-issuance (STS made the session,
 * its answer held) with only the other release's workers left to give it up. Every credential either release issued must end upstream with its task,
 * with one end record each, no lease left non-final, and no 5xx from the new processes.
 *
 * Found here: the deny written by a worker of the previous release could be undone for good by a late write of
 * a new worker. A new worker killed while its deny write was on the wire (or one whose write timed out and went
 * on) had read the role policy before an old worker denied another task's sessions; its document, landing after,
 * put back the policy without them, and their sessions worked again. This release's read-back
 * (providers.aws.revocationVerifySeconds) compared IAM with its own ledger only, which old workers do not write
 * (they keep a copy of the document under the previous key, `aws:deny:<role>:doc`), and looked only at roles
 * listed once a write had completed (a role whose first new write was the killed one was not looked at). The
 * read-back now also holds IAM to that copy, and a role is listed before its write is sent
 * (src/providers/aws/deny-list.ts); each of the two alone still fails here.
 *
 * What held: Vault tokens and secrets of either API revoked by a worker of either release (their handles read
 * alike), a task's deadline and leases' TTLs ended by whichever sweeper came first, Vault leases left
 * `revoke_failed` by a killed worker of one release finished by the other, an old worker's late write over a
 * new worker's denies repaired by the read-back, an interrupted issuance of either API given up `failed` (one
 * `credential.fail`) by a worker of the other and its session denied, one end record per lease, no 5xx from the
 * new API.
 * Not here: a renewable Vault secret a new API issued whose revocation an old worker gives up at its first
 * `lease_duration` (the old worker does not read `endsBy`; docs/operations.md says to replace workers first).
 */
const maybe = previousReleaseTest('test/ops/upgrade-rolling-upstream.test.ts');

const fx = processFixture();
const { issuer, as } = fx;
const prefix = fx.prefix('upgrade-rolling-upstream');
const held: (() => void)[] = [];
fx.onCleanup(() => {
  for (const release of held) release();
});
const GRANTS = [
  { role: 'vault-ops' },
  { role: 'orders-db' },
  { role: 'reports', scopes: ['s3:GetObject'] },
  { role: 'audits', scopes: ['s3:GetObject'] },
];

/** What one issued credential is upstream, to check there that it ended; `by` the release whose API issued it. */
type Issued = { leaseId: string; taskId: string; by: 'old' | 'new' } & (
  | { kind: 'token'; token: string }
  | { kind: 'secret'; leaseIdVault: string; username: string; reader: string }
  | { kind: 'aws'; accessKeyId: string }
);

maybe(
  'old and new processes at once: every Vault and AWS credential either issued ends upstream with its task, also past a killed worker of either',
  async () => {
    const old = extractPreviousRelease();
    fx.onCleanup(old.remove);
    const { v, a, user, awsRole, providers } = await startUpstreams(fx);
    // Used from the last part on only: the first deny on it is the killed new worker's.
    const awsRole2 = a.createRole('agent-audits', { maxSessionDuration: 3600, trust: [user.arn] });

    const raw = testRawConfig(issuer, prefix, {
      server: UNLIMITED_SERVER,
      providers,
      roles: {
        'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] }, maxTtlSeconds: 900 },
        'orders-db': { provider: 'vault', path: 'database/creds/orders', maxTtlSeconds: 900 },
        reports: { provider: 'aws', roleArn: awsRole.arn, maxTtlSeconds: 3600 },
        audits: { provider: 'aws', roleArn: awsRole2.arn, maxTtlSeconds: 3600 },
      },
      // An issuance unconfirmed for 10 s is interrupted (AWS's own window is over a minute).
      revocation: { ...TEST_REVOCATION, reconcileIntervalMs: 1000, orphanMs: 10_000 },
    });
    const { oldFile, newFile } = writeReleaseConfigs(old.dir, raw, 'jit-upgrade-rolling-upstream');
    const keys = new Keys(prefix);
    const r = new Redis(REDIS_URL);
    const start = (release: 'old' | 'new', role: '--api' | '--worker') =>
      fx.start(release === 'old' ? oldFile : newFile, { ...(release === 'old' ? { cwd: old.dir } : {}), args: [role] });
    const issued: Issued[] = [];
    try {
      // ---- Both releases' APIs and workers at once.
      const [O, OW, N, NW] = await Promise.all([
        start('old', '--api'),
        start('old', '--worker'),
        start('new', '--api'),
        start('new', '--worker'),
      ]);
      const fromNew: string[] = [];
      const req = async (api: BrokerProcess, method: string, path: string, who: string, body?: unknown) => {
        const res = await call(api.url, method, path, as(who), body);
        if (api === N && res.status >= 500) fromNew.push(`${method} ${path}: ${res.status} ${JSON.stringify(res.body)}`);
        return res;
      };
      const open = async (api: BrokerProcess, taskId: string, ttlSeconds = 600) =>
        expect(
          (
            await req(api, 'POST', '/v1/tasks', ORCH, {
              taskId,
              agent: `spiffe://dev.local${AGENT}`,
              tenant: 'acme',
              purpose: 'rolling upgrade',
              ttlSeconds,
              grants: GRANTS,
            })
          ).status,
        ).toBe(201);
      const complete = async (api: BrokerProcess, taskId: string) =>
        expect((await req(api, 'POST', `/v1/tasks/${taskId}/complete`, ORCH)).status).toBe(202);
      const issue = async (api: BrokerProcess, taskId: string, role: string, ttlSeconds = 600): Promise<Issued> => {
        const res = await req(api, 'POST', '/v1/credentials', AGENT, { taskId, role, ttlSeconds });
        expect(res.status).toBe(201);
        const c = res.body.credentials;
        const base = { leaseId: res.body.leaseId as string, taskId, by: api === N ? ('new' as const) : ('old' as const) };
        let out: Issued;
        if (role === 'reports' || role === 'audits') out = { ...base, kind: 'aws', accessKeyId: c.AccessKeyId };
        else if (role === 'vault-ops') out = { ...base, kind: 'token', token: c.token };
        else {
          // The reader token that read the secret is named in the lease's handle only.
          const handle = JSON.parse((await r.hget(keys.lease(base.leaseId), 'handle')) ?? '{}');
          out = { ...base, kind: 'secret', leaseIdVault: c.lease_id, username: c.username, reader: handle.accessor };
        }
        issued.push(out);
        expect(await live(out)).toBe(true);
        return out;
      };
      /** Each kind from each API. */
      /** An AWS issuance whose API is SIGKILLed once STS made the session (its answer held): the lease left `issuing`. */
      const orphanOf = async (api: BrokerProcess, taskId: string): Promise<Issued> => {
        await open(api, taskId);
        const sessionCount = a.sessions().length;
        a.holdAnswer('AssumeRole', 600_000);
        const issuing = call(api.url, 'POST', '/v1/credentials', as(AGENT), { taskId, role: 'reports', ttlSeconds: 900 });
        await waitFor(async () => a.sessions().length > sessionCount, 20_000, 20);
        // Both releases keep a task's lease ids in the plain set.
        const [leaseId] = await r.smembers(keys.taskLeasesLegacy(taskId));
        expect(await status(leaseId!)).toBe('issuing');
        const by = api === N ? ('new' as const) : ('old' as const);
        await api.kill('SIGKILL');
        await issuing.catch(() => undefined);
        return { leaseId: leaseId!, taskId, by, kind: 'aws', accessKeyId: a.sessions().at(-1)!.accessKeyId };
      };
      const issueAll = async (taskId: string, awsRoleName = 'reports') => {
        const out: Issued[] = [];
        for (const api of [O, N]) for (const role of ['vault-ops', 'orders-db', awsRoleName]) out.push(await issue(api, taskId, role));
        return out;
      };
      const status = (id: string) => r.hget(keys.lease(id), 'status');
      const statuses = (cs: Issued[]) => Promise.all(cs.map((c) => status(c.leaseId)));
      const FINAL = ['revoked', 'expired', 'failed'];
      const allEnded = async (cs: Issued[], ms = 40_000) => {
        await waitFor(async () => (await statuses(cs)).every((s) => FINAL.includes(s ?? '')), ms, 100).catch(async () => {
          const ss = await statuses(cs);
          throw new Error(`lease statuses: ${cs.map((c, i) => `${c.kind} of ${c.taskId} by ${c.by}: ${ss[i]}`).join(', ')}`);
        });
        await waitFor(async () => (await Promise.all(cs.map(live))).every((l) => !l), 20_000, 100).catch(async () => {
          const liveNow = await Promise.all(cs.map(live));
          const left = cs.filter((_, i) => liveNow[i]);
          throw new Error(`still live upstream: ${left.map((c) => `${c.kind} of ${c.taskId} by ${c.by}`).join(', ')}`);
        });
      };
      const lockOf = (arn: string) => `${prefix}:aws:deny:${arn}:lock`;
      const lock = lockOf(awsRole.arn);

      // Issued through both APIs, completed through either, the ending job taken by a worker of either release;
      // a task's deadline and leases' TTLs passing while both releases' sweepers run.
      await open(N, 't-a');
      await open(O, 't-b');
      await open(O, 't-deadline', 25);
      await open(N, 't-ttl');
      const deadline = [await issue(O, 't-deadline', 'vault-ops', 300), await issue(N, 't-deadline', 'vault-ops', 300)];
      deadline.push(await issue(O, 't-deadline', 'reports', 900), await issue(N, 't-deadline', 'reports', 900));
      const lapsing = [await issue(N, 't-ttl', 'vault-ops', 15), await issue(O, 't-ttl', 'vault-ops', 15)];
      lapsing.push(await issue(O, 't-ttl', 'orders-db', 15), await issue(N, 't-ttl', 'orders-db', 15));
      const ta = await issueAll('t-a');
      const tb = await issueAll('t-b');
      await complete(O, 't-a');
      await complete(N, 't-b');
      await allEnded([...ta, ...tb]);
      expect(await statuses([...ta, ...tb])).toEqual([...ta, ...tb].map(() => 'revoked'));
      await allEnded([...deadline, ...lapsing]);
      expect(await r.hget(keys.task('t-deadline'), 'status')).toBe('expired');
      // Clamped to the task's deadline, a lease ends with it or at its own TTL, whichever a sweep sees first.
      for (const c of deadline)
        expect([
          ['revoked', 'task_expired'],
          ['expired', 'ttl_expired'],
        ]).toContainEqual(await r.hmget(keys.lease(c.leaseId), 'status', 'reason'));
      for (const c of lapsing) expect(await r.hmget(keys.lease(c.leaseId), 'status', 'reason')).toEqual(['expired', 'ttl_expired']);

      // ---- An old worker killed while it revokes a task of both APIs (the new worker stopped first, so that it
      // is the old one that takes the job): Vault refuses (sealed), its deny write to IAM is held on the wire.
      await NW.kill('SIGTERM');
      await open(N, 't-c');
      await open(O, 't-c2');
      const tc = await issueAll('t-c');
      const tc2 = await issueAll('t-c2');
      v.seal();
      const heldOld = a.holdRequest('PutRolePolicy');
      held.push(heldOld.release);
      await complete(N, 't-c');
      await heldOld.arrived;
      const vaultOf = (cs: Issued[]) => cs.filter((c) => c.kind !== 'aws');
      await waitFor(async () => (await statuses(vaultOf(tc))).every((s) => s === 'revoke_failed'), 20_000, 50);
      await OW.kill('SIGKILL');
      for (const c of tc) expect(await live(c)).toBe(true);
      // The dead process held the role's deny-list lock (60 s): let it lapse now rather than in a minute.
      expect(await r.pttl(lock)).toBeGreaterThan(0);
      await r.pexpire(lock, 1);
      // A new worker takes over; another task ends through the old API meanwhile.
      const NW2 = await start('new', '--worker');
      v.unseal();
      await complete(O, 't-c2');
      await allEnded([...tc, ...tc2]);
      // The old worker's write lands now, over the new worker's: t-c2's denies are gone, and the read-back puts them back.
      heldOld.release();
      await heldOld.landed;
      expect(a.evaluate((tc2.find((c) => c.kind === 'aws') as { accessKeyId: string }).accessKeyId, 's3:GetObject', '*')).toBe('allow');
      await allEnded(tc2);
      await waitFor(async () => /deny the broker wrote was missing/.test(NW2.output()), 10_000, 50);

      // ---- A new worker killed the same way, the only worker then, writing the first deny on a role; a worker of
      // the old release takes over and ends another task, whose deny the killed write, landing late, takes out
      // of the role policy.
      await open(O, 't-d');
      await open(N, 't-e');
      const td = await issueAll('t-d', 'audits');
      const te = await issueAll('t-e', 'audits');
      v.seal();
      const heldNew = a.holdRequest('PutRolePolicy');
      held.push(heldNew.release);
      await complete(O, 't-d');
      await heldNew.arrived;
      await waitFor(async () => (await statuses(vaultOf(td))).every((s) => s === 'revoke_failed'), 20_000, 50);
      await NW2.kill('SIGKILL');
      for (const c of td) expect(await live(c)).toBe(true);
      expect(await r.pttl(lockOf(awsRole2.arn))).toBeGreaterThan(0);
      await r.pexpire(lockOf(awsRole2.arn), 1);
      const OW2 = await start('old', '--worker');
      v.unseal();
      await complete(N, 't-e');
      await allEnded([...td, ...te]);
      // The new API dies mid-issuance (STS made the session, its answer held) with the old worker alone.
      const newOrphan = await orphanOf(N, 't-issuing-new');
      await waitFor(async () => (await status(newOrphan.leaseId)) === 'failed', 40_000, 100);
      await allEnded([newOrphan]);
      heldNew.release();
      await heldNew.landed;
      expect(a.evaluate((te.find((c) => c.kind === 'aws') as { accessKeyId: string }).accessKeyId, 's3:GetObject', '*')).toBe('allow');
      // The upgrade goes on: the workers replaced by new ones.
      await OW2.kill('SIGTERM');
      const NW3 = await start('new', '--worker');
      await allEnded(te);
      // Logged after the write, so it may reach the pipe after the session was seen denied.
      await waitFor(async () => /deny the broker wrote was missing/.test(NW3.output()), 10_000, 50);

      // The old API dies mid-issuance the same way, with new workers alone.
      const oldOrphan = await orphanOf(O, 't-issuing-old');
      await waitFor(async () => (await status(oldOrphan.leaseId)) === 'failed', 40_000, 100);
      await allEnded([oldOrphan]);

      // Every lease of either release ended, one end record each.
      const recs = await auditRecords(r, keys);
      const ends = (id: string) => recs.filter((x) => ['lease.revoke', 'lease.expire'].includes(x.action) && x.leaseId === id);
      expect(
        issued.filter((c) => ends(c.leaseId).length !== 1).map((c) => `${c.kind} of ${c.taskId} by ${c.by}: ${ends(c.leaseId).length}`),
      ).toEqual([]);
      const ended = [...lapsing, ...deadline];
      const byTask = issued.filter((c) => !ended.includes(c));
      expect(await statuses(byTask)).toEqual(byTask.map(() => 'revoked'));
      expect((await statuses(ended)).filter((s) => !FINAL.includes(s ?? ''))).toEqual([]);
      for (const o of [newOrphan, oldOrphan]) {
        expect(recs.filter((x) => x.action === 'credential.fail' && x.leaseId === o.leaseId)).toHaveLength(1);
        expect(ends(o.leaseId)).toHaveLength(0);
      }
      expect(fromNew).toEqual([]);
      expect(v.unhandled).toEqual([]);
    } finally {
      await r.quit();
    }

    /** Whether the credential still works upstream. */
    async function live(c: Issued): Promise<boolean> {
      if (c.kind === 'token') return v.isTokenValid(c.token);
      if (c.kind === 'secret')
        return v.leaseExists(c.leaseIdVault) || v.isDbUserValid(c.username) || v.tokenByAccessor(c.reader) !== undefined;
      return a.evaluate(c.accessKeyId, 's3:GetObject', '*') === 'allow';
    }
  },
  // Six old and new processes may each take START_TIMEOUT_MS to start on a loaded machine (four at once); the rest takes ~2 min.
  3 * START_TIMEOUT_MS + 180_000,
);
