import { expect, jest } from '@jest/globals';
import { randomInt } from 'node:crypto';
import { Redis } from 'ioredis';
import { taskTagValue } from '../../src/providers/aws/session-name.ts';
import { Keys } from '../../src/redis/keys.ts';
import {
  ADMIN,
  auditRecords,
  call,
  ORCH,
  REDIS_URL,
  TEST_REVOCATION,
  testConfigFile,
  UNLIMITED_SERVER,
  waitFor,
} from '../helpers/broker.ts';
import { type BrokerProcess, START_TIMEOUT_MS, processFixture } from '../helpers/process.ts';
import { startUpstreams } from '../helpers/upstreams.ts';

/**
 * Red team, the revocation promise under chaos: two API processes and a worker process on one Redis prefix, with
 * the strict Vault and AWS emulators, run a seeded random sequence of operations (open a task, issue a JWT, a
 * Vault token, a Vault database secret or an AWS session, complete a task, DELETE a lease, the kill switch,
 * quarantine and lift) while a random process is SIGKILLed at a random moment (often mid-request) and started
 * again. Then every task is ended and, after a bounded wait, every lease must be final with one ending record,
 * and nothing any task had must still work upstream or introspect active.
 *
 * CHAOS_SEED replays a sequence (the timing of kills is not replayable, only where they are aimed);
 * `CHAOS_SEED=random` draws a new one (how it was hunted with: 52 runs, 8-30 rounds); CHAOS_ROUNDS runs longer
 * locally. The seed is printed on failure. `npm test` runs one fixed sequence, so a red run names a sequence
 * that can be run again rather than one drawn that day.
 */
const SEED = process.env.CHAOS_SEED === 'random' ? randomInt(2 ** 31) : Number(process.env.CHAOS_SEED ?? 1_234_567);
const ROUNDS = Number(process.env.CHAOS_ROUNDS ?? 8);
jest.setTimeout(2 * START_TIMEOUT_MS + ROUNDS * 15_000 + 60_000);

const fx = processFixture();
const { as } = fx;
const prefix = fx.prefix('chaos');
const AGENTS = ['/agent/chaos-0', '/agent/chaos-1', '/agent/chaos-2'];
const ISSUE_TTL = 5;
const KINDS = ['jwt', 'vault-ops', 'orders-db', 'reports'] as const;
const FINAL = ['revoked', 'expired', 'failed'];
const VAULT_HOLDS = [
  /^database\/creds\//,
  /^auth\/token\/create/,
  'auth/token/renew-accessor',
  'auth/token/revoke-accessor',
  'sys/leases/revoke',
];

/** mulberry32: small, seedable, good enough to pick operations. */
function rng(seed: number) {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (n: number) => Math.floor(next() * n), pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]! };
}

test(`chaos (seed ${SEED}, ${ROUNDS} rounds): nothing a task had outlives it across SIGKILLed processes`, async () => {
  const R = rng(SEED);
  const log: string[] = [];
  const say = (s: string) => log.push(s);
  try {
    const { v, a, awsRole, providers } = await startUpstreams(fx);
    const file = testConfigFile(fx.issuer, prefix, {
      server: UNLIMITED_SERVER,
      providers: { vault: { ...providers.vault, issueTtlSeconds: ISSUE_TTL }, aws: { ...providers.aws, requestTimeoutMs: 5000 } },
      roles: {
        jwt: { provider: 'jwt', audience: 'https://chaos.internal', maxTtlSeconds: 300, scopes: ['chaos:read'] },
        'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] }, maxTtlSeconds: 900 },
        'orders-db': { provider: 'vault', path: 'database/creds/orders', maxTtlSeconds: 900 },
        reports: { provider: 'aws', roleArn: awsRole.arn, maxTtlSeconds: 3600 },
      },
      revocation: { ...TEST_REVOCATION, reconcileIntervalMs: 1000, orphanMs: 3000 },
    });
    const keys = new Keys(prefix);
    const r = new Redis(REDIS_URL);
    fx.onCleanup(() => r.quit());

    const roles = ['a', 'b', 'w'] as const;
    const args = { a: ['--api'], b: ['--api'], w: ['--worker'] };
    const procs = {} as Record<(typeof roles)[number], BrokerProcess>;
    const start = async (n: (typeof roles)[number]) => {
      procs[n] = await fx.start(file, { args: args[n] });
    };
    await Promise.all(roles.map(start));
    const apis = () => [procs.a, procs.b];

    const tasks: string[] = [];
    const leases: string[] = [];
    const jwts: string[] = [];
    const quarantined = new Set<string>();
    const agentOf = new Map<string, string>();
    /** Tasks not known to have ended (as far as answers told): credentials are mostly asked for these. */
    const open = new Set<string>();
    const endedAll = (agent: string) => {
      for (const t of open) if (`spiffe://dev.local${agentOf.get(t)}` === agent) open.delete(t);
    };
    const server500: string[] = [];
    let n = 0;

    const req = async (method: string, path: string, who: string, body?: unknown) => {
      const api = R.pick(apis());
      try {
        const res = await call(api.url, method, path, as(who), body);
        say(`  ${method} ${path}: ${res.status}${res.status >= 400 ? ` ${res.body?.code ?? res.body?.error}` : ''}`);
        if (res.status === 500) server500.push(`${method} ${path}: ${JSON.stringify(res.body)}`);
        return res;
      } catch {
        say(`  ${method} ${path}: no answer`);
        return undefined; // its process was killed under it
      }
    };

    /** One operation, picked by the seed; run concurrently with others of its round. */
    const operation = async () => {
      const k = R.int(100);
      if (k < 15 || tasks.length === 0) {
        const taskId = `c-${n++}`;
        const agent = R.pick(AGENTS);
        const ttlSeconds = R.int(4) === 0 ? 6 : 600;
        tasks.push(taskId);
        agentOf.set(taskId, agent);
        say(`open ${taskId} ${agent} ${ttlSeconds}s`);
        const res = await req('POST', '/v1/tasks', ORCH, {
          taskId,
          agent: `spiffe://dev.local${agent}`,
          tenant: 'acme',
          purpose: 'chaos',
          ttlSeconds,
          grants: KINDS.map((role) => (role === 'reports' ? { role, scopes: ['s3:GetObject'] } : { role })),
        });
        if (res?.status === 201) open.add(taskId);
        return;
      }
      const taskId = open.size && R.int(5) ? R.pick([...open]) : R.pick(tasks);
      if (k < 75) {
        const role = R.pick(KINDS);
        if (role === 'reports' && R.int(2) === 0) a.holdAnswer('AssumeRole', R.int(300));
        say(`issue ${role} ${taskId}`);
        const res = await req('POST', '/v1/credentials', agentOf.get(taskId)!, {
          taskId,
          role,
          ttlSeconds: 600,
        });
        if (res?.status === 201) {
          leases.push(res.body.leaseId);
          if (role === 'jwt') jwts.push(res.body.credentials.access_token);
        }
      } else if (k < 81) {
        say(`complete ${taskId}`);
        await req('POST', `/v1/tasks/${taskId}/complete`, ORCH);
        open.delete(taskId);
      } else if (k < 88 && leases.length) {
        const leaseId = R.pick(leases);
        say(`delete ${leaseId}`);
        await req('DELETE', `/v1/leases/${leaseId}`, ORCH);
      } else if (k < 92) {
        const agent = R.int(3) ? undefined : `spiffe://dev.local${R.pick(AGENTS)}`;
        const body = agent ? { agent } : { taskId };
        say(`kill switch ${JSON.stringify(body)}`);
        await req('POST', '/v1/admin/revoke', ADMIN, body);
        if (agent) endedAll(agent);
        else open.delete(taskId);
      } else if (k < 96 || quarantined.size === 0) {
        const agent = `spiffe://dev.local${R.pick(AGENTS)}`;
        quarantined.add(agent);
        say(`quarantine ${agent}`);
        await req('POST', '/v1/admin/quarantine', ADMIN, { agent, reason: 'chaos' });
        endedAll(agent);
      } else {
        const agent = R.pick([...quarantined]);
        quarantined.delete(agent);
        say(`lift ${agent}`);
        await req('DELETE', `/v1/admin/quarantine/${encodeURIComponent(agent)}`, ADMIN);
      }
    };

    for (let round = 0; round < ROUNDS; round++) {
      const ops = 4 + R.int(6);
      const victim = R.int(3) ? R.pick(roles) : undefined;
      const delay = R.int(250);
      say(`round ${round}: ${ops} ops${victim ? `, SIGKILL ${victim} at ${delay} ms` : ''}`);
      // Vault's answer to one kind of call held a little (the call carried out), to widen the window a kill
      // lands in: an issuance, its extension once recorded, or a revocation.
      const holds = Array.from({ length: R.int(3) }, () => {
        const h = v.holdResponses(R.pick(VAULT_HOLDS), 1 + R.int(2));
        setTimeout(h.release, R.int(400));
        return h;
      });
      // And IAM's answer to a deny write (carried out): a worker killed then does not know its deny landed.
      if (R.int(3) === 0) a.holdAnswer(R.pick(['PutRolePolicy', 'GetRolePolicy']), R.int(400));
      // Sometimes a second process dies with the first (an API and the worker at once).
      const second = victim && R.int(4) === 0 ? R.pick(roles.filter((x) => x !== victim)) : undefined;
      const running = Array.from({ length: ops }, async (_, i) => {
        await new Promise((res) => setTimeout(res, i * R.int(40)));
        await operation();
      });
      const kill = victim ? new Promise((res) => setTimeout(res, delay)).then(() => procs[victim].kill('SIGKILL')) : undefined;
      const kill2 = second ? new Promise((res) => setTimeout(res, R.int(250))).then(() => procs[second].kill('SIGKILL')) : undefined;
      if (second) say(`  and SIGKILL ${second}`);
      await Promise.all([...running, kill, kill2]);
      for (const h of holds) {
        h.times = 0;
        h.release();
      }
      // A worker killed while it wrote the role's AWS deny holds the role's deny-list lock until it lapses: 10 s,
      // within the next writer's wait (it was 60 s, and the test let it lapse by hand; deny-lock-killed.test.ts).
      if (victim) await start(victim);
      if (second) await start(second);
    }

    // ---- The end: quarantines lifted, every task ended, then a bounded wait (an interrupted issuance is given up
    // at orphanMs, an outbox recovered after its 10 s grace, the reconciler every second).
    // A quarantine in force ended its identity's tasks, those opened as it was put in force too (a process that
    // died before ending them leaves that to another's outbox recovery, past its 10 s grace).
    const inForce = new Set(
      ((await call(procs.a.url, 'GET', '/v1/admin/quarantine', as(ADMIN))).body.items as { pattern: string }[]).map((q) => q.pattern),
    );
    const openUnder = async () => {
      const left: string[] = [];
      for (const t of tasks) {
        const agent = `spiffe://dev.local${agentOf.get(t)}`;
        if ((await r.hget(keys.task(t), 'status')) === 'open' && inForce.has(agent)) left.push(`${t} of ${agent}`);
      }
      return left;
    };
    await waitFor(async () => (await openUnder()).length === 0, 30_000, 250).catch(async () => {
      throw new Error(`open under a quarantine in force: ${await openUnder()}`);
    });
    say('end: lift all, complete all');
    for (const agent of AGENTS)
      await call(procs.a.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(`spiffe://dev.local${agent}`)}`, as(ADMIN));
    for (const taskId of tasks) {
      const res = await call(procs.a.url, 'POST', `/v1/tasks/${taskId}/complete`, as(ORCH));
      if (![202, 404].includes(res.status)) say(`complete ${taskId} at the end: ${res.status} ${JSON.stringify(res.body)}`);
    }
    const allLeases = async () => {
      const ids: string[] = [];
      for (const t of tasks) ids.push(...(await r.zrange(keys.taskLeases(t), '0', '-1')));
      return ids;
    };
    const statuses = async (ids: string[]) => Promise.all(ids.map((id) => r.hget(keys.lease(id), 'status')));
    const ids = await allLeases();
    expect(ids.length).toBeGreaterThanOrEqual(leases.length);
    await waitFor(async () => (await statuses(ids)).every((s) => FINAL.includes(s ?? '')), 40_000, 200).catch(async () => {
      const ss = await statuses(ids);
      const left = ids.map((id, i) => `${id}=${ss[i]}`).filter((_, i) => !FINAL.includes(ss[i] ?? ''));
      const detail = await Promise.all(
        ids
          .filter((_, i) => !FINAL.includes(ss[i] ?? ''))
          .map(async (id) => {
            const { handle: _h, ...l } = await r.hgetall(keys.lease(id));
            return JSON.stringify(l);
          }),
      );
      const errors = roles.map(
        (p) =>
          `${p}: ${procs[p]
            .output()
            .split('\n')
            .filter((x) => /"level":(40|50)/.test(x))
            .slice(-5)
            .join('\n')}`,
      );
      throw new Error(`not final: ${left.join(', ')}\n${detail.join('\n')}\n${errors.join('\n')}`);
    });
    for (const t of tasks) {
      const status = await r.hget(keys.task(t), 'status');
      expect([t, status === null || status === 'completed' || status === 'expired']).toEqual([t, true]);
    }

    // Upstream: Vault's short issue TTL passed (an orphan dies by it), nothing of any task works.
    v.advanceTime(ISSUE_TTL + 1);
    const ours = new Set(tasks);
    const vaultLive = () => [...v.state.tokens.values()].filter((t) => ours.has(t.meta?.task_id ?? '')).map((t) => t.meta!.lease_id);
    const usersLive = () => [...v.state.dbUsers.values()].filter((u) => v.isDbUserValid(u.username)).map((u) => u.username);
    const tags = new Set(tasks.map(taskTagValue));
    const awsLive = () =>
      a
        .sessions()
        .filter((s) => s.tags.some((t) => t.Key === 'task' && tags.has(t.Value)))
        .filter((s) => a.evaluate(s.accessKeyId, 's3:GetObject', '*') === 'allow')
        .map((s) => s.sessionName);
    const live = () => [...vaultLive(), ...usersLive(), ...awsLive()];
    await waitFor(async () => live().length === 0, 20_000, 200).catch(() => {
      throw new Error(`still live upstream: vault ${vaultLive()} users ${usersLive()} aws ${awsLive()}`);
    });
    for (const token of jwts) {
      const res = await fetch(`${procs.a.url}/v1/introspect`, {
        method: 'POST',
        headers: { ...as(ORCH), 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ token }),
      });
      expect(await res.json()).toEqual({ active: false });
    }

    // One ending record per lease (its outbox recovered past the grace period if its process died).
    const endings = async () => {
      const recs = await auditRecords(r, keys);
      const ss = await statuses(ids);
      return ids
        .map((id, i) => {
          // A DELETE's own record (`stage: requested`) says it was asked for, not that it ended.
          const ends = recs.filter(
            (x) => x.leaseId === id && (x.action === 'lease.revoke' || x.action === 'lease.expire') && x.detail?.stage !== 'requested',
          ).length;
          const fails = recs.filter((x) => x.leaseId === id && x.action === 'credential.fail').length;
          return ss[i] === 'failed'
            ? (ends === 0 && fails === 1) || `${id} failed: ${ends} ends, ${fails} fails`
            : ends === 1 || `${id} ${ss[i]}: ${ends} ends`;
        })
        .filter((x) => x !== true);
    };
    await waitFor(async () => (await endings()).length === 0, 25_000, 500).catch(async () => {
      throw new Error(`audit: ${(await endings()).join('; ')}`);
    });
    expect(server500).toEqual([]);
    expect(v.unhandled).toEqual([]);
    if (process.env.CHAOS_VERBOSE) {
      const counts: Record<string, number> = {};
      for (const [i, s] of (await statuses(ids)).entries()) {
        const key = `${s}/${await r.hget(keys.lease(ids[i]!), 'reason')}`;
        counts[key] = (counts[key] ?? 0) + 1;
      }
      console.log(`seed ${SEED}: ${tasks.length} tasks, ${ids.length} leases (${leases.length} handed out)`, counts, log.join('\n'));
    }
  } catch (e) {
    // The seed to replay it, and what was done.
    throw new Error(`chaos seed ${SEED} (CHAOS_SEED=${SEED} to replay): ${(e as Error).message}\n${log.slice(-80).join('\n')}`);
  }
});
