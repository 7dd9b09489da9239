import { describe, expect, it } from '@jest/globals';
import {
  addAgent,
  addSession,
  addTask,
  addTaskSessions,
  coarsen,
  covers,
  type DenyModel,
  denies,
  emptyModel,
  isoSeconds,
  lastEnd,
  MAX_SESSION_MS,
  mergeModels,
  parseDenyPolicy,
  pruneModel,
  renderDenyPolicy,
  WINDOW_MS,
} from '../../../src/providers/aws/deny-policy.ts';
import { foldToFit } from '../../../src/providers/aws/deny-fold.ts';
import { ownersToStore, parseOwners } from '../../../src/providers/aws/deny-owners.ts';
import { agentKeyFor, taskKeyFor } from '../../../src/providers/aws/session-name.ts';
import { parsePolicy } from '../../emulators/aws/policy.ts';

const T0 = Date.parse('2026-11-23T10:00:00Z');

describe('the deny policy document', () => {
  it('round-trips through IAM text: every end of life is in the Sids, nothing else is needed', () => {
    const m = emptyModel();
    addSession(m, '*:jit-a', T0 + 100_000);
    addSession(m, '*:jit-b', T0 + 2_000_000);
    addTask(m, 't-1/sub', T0 + 3_600_000);
    addAgent(m, 'example.org@agent@x', T0 - 5000, T0);
    const text = renderDenyPolicy(m)!;
    parsePolicy(text); // IAM accepts it (alphanumeric, unique Sids)
    const back = parseDenyPolicy(text, T0 + 99_000_000);
    expect(renderDenyPolicy(back)).toBe(text);
    expect([...back.sessions]).toEqual([
      ['*:jit-a', T0 + WINDOW_MS],
      ['*:jit-b', T0 + 3 * WINDOW_MS],
    ]);
    expect(back.agents.get('example.org@agent@x')).toBe(T0);
    expect(JSON.parse(text).Statement.map((s: { Sid: string }) => s.Sid)).toEqual([
      `JitAgentsUntil${(T0 + MAX_SESSION_MS) / 1000}`,
      `JitTasksUntil${(T0 + 4 * WINDOW_MS) / 1000}`,
      `JitSessionsUntil${(T0 + WINDOW_MS) / 1000}`,
      `JitSessionsUntil${(T0 + 3 * WINDOW_MS) / 1000}`,
    ]);
  });

  it('prunes only after end of life plus the skew margin', () => {
    const m = emptyModel();
    addSession(m, '*:jit-a', T0);
    addAgent(m, 'x', T0 - 5000, T0);
    expect(pruneModel(mergeModels(m, emptyModel()), T0 + 59_999, 60_000)).toBe(0);
    const copy = mergeModels(m, emptyModel());
    expect(pruneModel(copy, T0 + 60_000, 60_000)).toBe(1);
    expect(copy.agents.size).toBe(1);
    expect(pruneModel(copy, T0 + MAX_SESSION_MS + 60_000, 60_000)).toBe(1);
  });

  it('merging keeps the later end and the later cut-off', () => {
    const a = emptyModel();
    const b = emptyModel();
    addTask(a, 't', T0);
    addTask(b, 't', T0 + 2 * WINDOW_MS);
    a.agents.set('x', T0);
    b.agents.set('x', T0 - 1000);
    const m = mergeModels(a, b);
    expect(m.tasks.get('t')).toBe(T0 + 2 * WINDOW_MS);
    expect(m.agents.get('x')).toBe(T0);
  });

  it('knows what already denies a session: its entry, its task, its agent before its issue time, the cut-off', () => {
    const m = emptyModel();
    addTask(m, 't', T0 + WINDOW_MS);
    m.agents.set('x', T0);
    const s = { userId: '*:jit-z', expiresAt: T0 + 500_000, tokenIssuedAt: T0 - 10_000 };
    expect(denies(m, s)).toBe(false);
    expect(denies(m, { ...s, taskTag: 't' })).toBe(true);
    expect(denies(m, { ...s, taskTag: 't', expiresAt: T0 + WINDOW_MS + 1 })).toBe(false);
    expect(denies(m, { ...s, sourceIdentity: 'x' })).toBe(true);
    expect(denies(m, { ...s, sourceIdentity: 'x', tokenIssuedAt: T0 - 1000 })).toBe(false); // too close to call
    expect(denies(m, { ...s, sourceIdentity: 'x', tokenIssuedAt: undefined })).toBe(false);
  });

  it("shares another agent's cut-off only if it is no earlier than this agent's own (found in review)", () => {
    // Reusing one up to 60 s earlier (it covered the revoked session) spared the agent's other sessions, the ones it
    // chained unrecorded, issued between that cut-off and its own kill.
    const m = emptyModel();
    addAgent(m, 'a', T0 - 10_000, T0);
    addAgent(m, 'b', T0 - 10_000, T0 + 30_000);
    expect(m.agents.get('b')).toBe(T0 + 30_000);
    // Killed together (a second or so apart, each worker's bound of AWS's clock a little different): one statement.
    addAgent(m, 'c', T0 - 10_000, T0 + 29_000);
    expect(m.agents.get('c')).toBe(T0 + 30_000);
    addAgent(m, 'd', T0 - 10_000, T0 + 30_000 - 1500);
    expect(m.agents.get('d')).toBe(T0 + 30_000);
    // Never one much later: the agent's sessions issued after its kill (a quarantine lifted) keep working.
    addAgent(m, 'e', T0 - 10_000, T0 + 20_000);
    expect(m.agents.get('e')).toBe(T0 + 20_000);
  });

  it('coarsens by merging the closest windows into the later one', () => {
    const m = emptyModel();
    addSession(m, 'a', T0);
    addSession(m, 'b', T0 + WINDOW_MS);
    addSession(m, 'c', T0 + 5 * WINDOW_MS);
    expect(coarsen(m)).toBe(true);
    expect(m.sessions.get('a')).toBe(T0 + WINDOW_MS);
    expect(coarsen(m)).toBe(true);
    expect(new Set(m.sessions.values())).toEqual(new Set([T0 + 5 * WINDOW_MS]));
    expect(coarsen(m)).toBe(false);
  });

  it('keeps foreign statements verbatim and never reuses their Sid', () => {
    const sid = `JitSessionsUntil${(T0 + WINDOW_MS) / 1000}`;
    const edited = { Sid: sid, Effect: 'Deny', Action: 's3:*', Resource: '*' };
    const m = parseDenyPolicy(JSON.stringify({ Version: '2012-10-17', Statement: [edited] }), T0);
    expect(m.foreign).toEqual([edited]);
    addSession(m, '*:jit-a', T0 + 1);
    const text = renderDenyPolicy(m)!;
    parsePolicy(text);
    expect(JSON.parse(text).Statement).toEqual([
      expect.objectContaining({ Sid: `JitSessionsUntil${(T0 + WINDOW_MS) / 1000 + 1}` }),
      edited,
    ]);
  });
});

describe('the ledger (what the broker wrote, checked against IAM)', () => {
  it('is covered by a policy holding each of its entries at least as long, foreign statements aside', () => {
    const ledger = emptyModel();
    addSession(ledger, '*:jit-a', T0 + 100_000);
    addAgent(ledger, 'example.org@agent@x', T0 - 5000, T0);
    const iam = parseDenyPolicy(renderDenyPolicy(ledger), T0);
    expect(covers(iam, ledger)).toBe(true);
    // A later end (coarsened, or raised by a later revocation) still covers; entries IAM has besides do too.
    addSession(iam, '*:jit-a', T0 + 3 * WINDOW_MS);
    addSession(iam, '*:jit-b', T0 + WINDOW_MS);
    expect(covers(iam, ledger)).toBe(true);
    // A missing entry, an earlier end or an earlier cut-off does not.
    const lost = parseDenyPolicy(renderDenyPolicy(iam), T0);
    lost.sessions.delete('*:jit-a');
    expect(covers(lost, ledger)).toBe(false);
    const shorter = emptyModel();
    addSession(shorter, '*:jit-a', T0);
    shorter.agents.set('example.org@agent@x', T0);
    addSession(ledger, '*:jit-a', T0 + 2 * WINDOW_MS);
    expect(covers(shorter, ledger)).toBe(false);
    // A statement added by hand is not the broker's to put back.
    const mine = parseDenyPolicy(renderDenyPolicy(ledger), T0);
    const withManual = mergeModels(mine, emptyModel());
    withManual.foreign.push({ Sid: 'OpsManual', Effect: 'Deny', Action: 's3:DeleteBucket', Resource: '*' });
    expect(covers(mine, withManual)).toBe(true);
  });

  it('lasts until its latest entry has expired: a cut-off 12 h past it', () => {
    const m = emptyModel();
    expect(lastEnd(m)).toBeUndefined();
    addSession(m, '*:jit-a', T0 + 100_000);
    expect(lastEnd(m)).toBe(T0 + WINDOW_MS);
    addAgent(m, 'x', T0 - 5000, T0);
    expect(lastEnd(m)).toBe(T0 + MAX_SESSION_MS);
  });
});

describe('folding (deny-fold.ts)', () => {
  const A = agentKeyFor('spiffe://example.org/agent/a');
  const B = agentKeyFor('spiffe://example.org/agent/b');
  const C = agentKeyFor('spiffe://example.org/agent/c');
  const t = (id: string) => taskKeyFor(id);
  const lease = (i: number) => i.toString(16).padStart(32, '0');
  const entry = (agent: string, task: string, i: number) => `*:jit-${agent}-${task}-${lease(i)}`;
  const size = (m: DenyModel) => renderDenyPolicy(m)?.length ?? 0;
  const CUT = T0 + 300_000;

  it('round-trips folds through IAM text, and a fold denies only its principal’s sessions issued before its cut-off', () => {
    const m = emptyModel();
    m.folds.set(`*:jit-${A}-${t('t1')}-*`, { cutoff: CUT, end: T0 + WINDOW_MS });
    m.folds.set(`*:jit-${B}-*`, { cutoff: CUT, end: T0 + 2 * WINDOW_MS });
    const text = renderDenyPolicy(m)!;
    parsePolicy(text);
    const st = JSON.parse(text).Statement;
    expect(st).toEqual([
      {
        Sid: `JitFoldsUntil${(T0 + 2 * WINDOW_MS) / 1000}`,
        Effect: 'Deny',
        Action: '*',
        Resource: '*',
        Condition: {
          StringLike: { 'aws:userid': [`*:jit-${A}-${t('t1')}-*`, `*:jit-${B}-*`].sort() },
          DateLessThan: { 'aws:TokenIssueTime': isoSeconds(CUT) },
        },
      },
    ]);
    const back = parseDenyPolicy(text, T0);
    expect(renderDenyPolicy(back)).toBe(text);
    const s = { userId: entry(A, t('t1'), 1), expiresAt: T0 + 600_000, tokenIssuedAt: T0 - 300_000 };
    expect(denies(back, s)).toBe(true);
    expect(denies(back, { ...s, userId: entry(A, t('t2'), 1) })).toBe(false); // another task of A
    expect(denies(back, { ...s, userId: entry(C, t('t1'), 1) })).toBe(false); // another agent
    expect(denies(back, { ...s, userId: entry(B, t('t9'), 1) })).toBe(true); // B is folded as a whole
    expect(denies(back, { ...s, tokenIssuedAt: CUT })).toBe(false); // issued after the cut-off
    expect(denies(back, { ...s, tokenIssuedAt: undefined })).toBe(false); // unknown issue time: not assumed
    // A role-wide cut-off at or after a fold's replaces it.
    back.cutoff = CUT;
    expect(pruneModel(back, T0, 0)).toBe(2);
  });

  it('folds the agent taking the most room first, its busiest task before the agent, and never anyone without an entry', () => {
    const m = emptyModel();
    for (let i = 0; i < 60; i++) addSession(m, entry(A, t('big'), i), T0 + WINDOW_MS);
    for (let i = 0; i < 8; i++) addSession(m, entry(A, t(`small${i}`), 100 + i), T0 + WINDOW_MS);
    for (let i = 0; i < 5; i++) addSession(m, entry(B, t('b'), 200 + i), T0 + 2 * WINDOW_MS);
    addSession(m, '*:jit-0123456789abcdef0123456789abcdef', T0 + WINDOW_MS); // an older session name: never folded
    const budget = size(m) - 1000;
    const { decisions, fits } = foldToFit(m, size, budget, budget, CUT);
    expect(fits).toBe(true);
    expect(decisions).toEqual([
      expect.objectContaining({ scope: 'task', agentKey: A, taskKey: t('big'), patterns: [`*:jit-${A}-${t('big')}-*`], cutoff: CUT }),
    ]);
    expect(decisions[0]!.replaced).toHaveLength(60);
    expect(m.folds.get(`*:jit-${A}-${t('big')}-*`)).toEqual({ cutoff: CUT, end: T0 + WINDOW_MS });
    expect(m.sessions.size).toBe(8 + 5 + 1);

    // Tighter: A still takes the most room; its single-entry tasks are not folded one by one but A as a whole; B stays as it is.
    const tight = size(m) - 300;
    const more = foldToFit(m, size, tight, tight, CUT + 1000);
    expect(more.fits).toBe(true);
    expect(more.decisions.map((d) => [d.scope, d.agentKey])).toEqual([['agent', A]]);
    expect([...m.folds.keys()]).toEqual([`*:jit-${A}-*`]);
    expect([...m.sessions.keys()].filter((k) => k.includes(A))).toEqual([]);
    expect([...m.sessions.keys()].filter((k) => k.includes(B))).toHaveLength(5);
    expect([...m.folds.keys(), ...m.sessions.keys()].some((k) => k.includes(C))).toBe(false);
  });

  it('counts an ended task’s tag to the agent it belongs to, and folds it into the task’s wildcard (regression: tags were never folded)', () => {
    const m = emptyModel();
    const tag = (i: number) => `t-root/${'m'.repeat(128)}/${'x'.repeat(50)}${i}`;
    const owners = new Map<string, { agentKey: string; taskKey: string }>();
    for (let i = 0; i < 12; i++) {
      addTask(m, tag(i), T0 + WINDOW_MS);
      owners.set(tag(i), { agentKey: A, taskKey: t(`sub-${i}`) });
    }
    addTask(m, 'legacy-task-of-nobody-known', T0 + WINDOW_MS); // an owner not known: counted to nobody, never folded
    addSession(m, entry(B, t('b'), 1), T0 + WINDOW_MS); // a bystander with one revoked session
    const budget = size(m) - 500;
    const { decisions, fits } = foldToFit(m, size, budget, Math.floor(budget * 0.8), CUT, owners);
    expect(fits).toBe(true);
    expect(decisions.length).toBeGreaterThan(0);
    for (const d of decisions) {
      expect(d).toMatchObject({ scope: 'task', agentKey: A, cutoff: CUT });
      expect(d.replaced).toHaveLength(1);
      expect(m.tasks.has(d.replaced[0]!)).toBe(false);
      expect(m.folds.get(`*:jit-${A}-${d.taskKey}-*`)).toEqual({ cutoff: CUT, end: T0 + WINDOW_MS });
    }
    expect(m.tasks.has('legacy-task-of-nobody-known')).toBe(true);
    expect(m.sessions.has(entry(B, t('b'), 1))).toBe(true);
    // Every session of a folded task issued before the cut-off is still denied.
    const folded = decisions[0]!.taskKey!;
    expect(denies(m, { userId: `*:jit-${A}-${folded}-x`, expiresAt: T0 + 600_000, tokenIssuedAt: T0 - 60_000 })).toBe(true);
  });

  it('denies an ended task by the wildcard on its session names, and folds those to their agent from the text alone (no owners)', () => {
    const m = emptyModel();
    for (let i = 0; i < 40; i++) addTaskSessions(m, `*:jit-${A}-${t(`sub-${i}`)}-*`, T0 + WINDOW_MS);
    addSession(m, entry(B, t('b'), 1), T0 + WINDOW_MS); // a bystander with one revoked session
    // Read back from IAM text, as after a Redis data loss: nothing but the policy is known.
    const back = parseDenyPolicy(renderDenyPolicy(m)!, T0);
    // Every session of an ended task is denied, without a time condition; another task's is not.
    const s = { userId: `*:jit-${A}-${t('sub-3')}-${lease(9)}`, expiresAt: T0 + 600_000 };
    expect(denies(back, s)).toBe(true);
    expect(denies(back, { ...s, expiresAt: T0 + WINDOW_MS + 1 })).toBe(false);
    expect(denies(back, { ...s, userId: `*:jit-${A}-${t('other')}-${lease(9)}` })).toBe(false);
    const budget = size(back) - 200;
    const { decisions, fits } = foldToFit(back, size, budget, Math.floor(budget * 0.8), CUT);
    expect(fits).toBe(true);
    expect(decisions).toEqual([expect.objectContaining({ scope: 'agent', agentKey: A, patterns: [`*:jit-${A}-*`] })]);
    expect(decisions[0]!.replaced).toHaveLength(40);
    expect([...back.sessions.keys()]).toEqual([entry(B, t('b'), 1)]);
    expect(denies(back, { ...s, tokenIssuedAt: T0 - 60_000 })).toBe(true);
  });

  it('makes headroom only at the expense of agents whose own entries take it (regression: it folded a bystander)', () => {
    const m = emptyModel();
    // Most of the room is taken by entries it cannot fold (tags of unknown owner), some by A, one session by B.
    for (let i = 0; i < 30; i++) addTask(m, `${'u'.repeat(200)}${i}`, T0 + WINDOW_MS);
    for (let i = 0; i < 20; i++) addSession(m, entry(A, t('a'), i), T0 + WINDOW_MS);
    addSession(m, entry(B, t('b'), 100), T0 + WINDOW_MS);
    const budget = size(m) - 200;
    const { decisions, fits } = foldToFit(m, size, budget, Math.floor(budget * 0.8), CUT);
    expect(fits).toBe(true);
    expect(decisions.map((d) => [d.scope, d.agentKey])).toEqual([['task', A]]);
    expect(m.sessions.has(entry(B, t('b'), 100))).toBe(true);
    expect(size(m)).toBeGreaterThan(Math.floor(budget * 0.8)); // above the target: B's one entry does not pay for it

    // When the document cannot fit otherwise, B is folded too: better than the role-wide cut-off, which would cut B off as well.
    const tight = size(m) - 20;
    const more = foldToFit(m, size, tight, Math.floor(tight * 0.8), CUT);
    expect(more.fits).toBe(true);
    expect(more.decisions.map((d) => [d.scope, d.agentKey])).toEqual([['agent', B]]); // B's entry now takes more room than A's fold
  });

  it('stores the owners of the tags still in the list, and reads back only well-formed ones', () => {
    const m = emptyModel();
    addTask(m, '__proto__', T0 + WINDOW_MS); // a legal task id
    addTask(m, 't-2', T0 + 3 * WINDOW_MS);
    const owners = new Map([
      ['__proto__', { agentKey: A, taskKey: t('__proto__') }],
      ['t-2', { agentKey: B, taskKey: t('t-2') }],
      ['t-gone', { agentKey: B, taskKey: t('t-gone') }], // pruned or folded meanwhile: not kept
    ]);
    const { text, ttlMs } = ownersToStore(owners, m, T0, 300_000);
    expect(ttlMs).toBe(3 * WINDOW_MS + 300_000);
    expect(parseOwners(text)).toEqual(new Map([...owners].slice(0, 2)));
    expect(ownersToStore(owners, emptyModel(), T0, 0).text).toBeUndefined();
    for (const junk of [null, '', '{', '{"t":"a-b"}', '[["t","not-keys"]]', '[["t",1]]', '[null]']) expect(parseOwners(junk).size).toBe(0);
  });

  it('says when even folding every agent does not fit', () => {
    const m = emptyModel();
    for (let i = 0; i < 40; i++) addSession(m, entry(agentKeyFor(`agent-${i}`), t('x'), i), T0 + WINDOW_MS);
    expect(foldToFit(m, size, 500, 400, CUT).fits).toBe(false);
  });
});
