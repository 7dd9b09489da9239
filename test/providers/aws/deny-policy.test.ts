import { describe, expect, it } from '@jest/globals';
import {
  addAgent,
  addSession,
  addTask,
  coarsen,
  denies,
  emptyModel,
  MAX_SESSION_MS,
  mergeModels,
  parseDenyPolicy,
  pruneModel,
  renderDenyPolicy,
  WINDOW_MS,
} from '../../../src/providers/aws/deny-policy.ts';
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
