import { afterEach, describe, expect, test } from '@jest/globals';
import { createCedarEngine, type CedarPolicyEngine } from '../../src/policy/cedar-engine.ts';
import { PolicyLoadError } from '../../src/policy/errors.ts';
import { policyDir, request, task } from './fixtures.ts';

// Two whole sets: each allows exactly one of two requests.
const SET_REVOKE = { 'p.cedar': 'permit (principal, action == Action::"revoke", resource);\n' };
const SET_COMPLETE = { 'p.cedar': 'permit (principal, action == Action::"completeTask", resource);\n' };
const P = 'spiffe://dev.local/agent/a';
const revoke = request(P, 'revoke', { type: 'Task', id: 't-1' }, { task: task() });
const complete = request(P, 'completeTask', { type: 'Task', id: 't-1' }, { task: task() });

const open: Array<{ engine: CedarPolicyEngine; cleanup: () => Promise<void> }> = [];
afterEach(async () => {
  for (const o of open.splice(0)) {
    await o.engine.close();
    await o.cleanup();
  }
});

async function setup(files: Record<string, string>, opts: { watch?: boolean } = {}) {
  const fixture = await policyDir(files);
  const engine = await createCedarEngine({ dir: fixture.dir, debounceMs: 50, ...opts });
  open.push({ engine, cleanup: fixture.cleanup });
  return { engine, write: fixture.write, dir: fixture.dir };
}

describe('reload', () => {
  test('a valid reload swaps the set and the version', async () => {
    const { engine, write } = await setup(SET_REVOKE);
    const before = engine.version;
    expect(engine.authorize(revoke).allowed).toBe(true);
    await write(SET_COMPLETE);
    await expect(engine.reload()).resolves.toEqual({ policies: 1, version: expect.any(String) });
    expect(engine.version).not.toBe(before);
    expect(engine.authorize(revoke).allowed).toBe(false);
    expect(engine.authorize(complete).allowed).toBe(true);
  });

  test('an invalid file is refused with file and line, and the old set stays in force', async () => {
    const { engine, write, dir } = await setup(SET_REVOKE);
    const before = engine.version;
    await write({
      'p.cedar': 'permit (principal, action == Action::"completeTask", resource);\n',
      'q.cedar': '\n\nforbid (principal, action, resource) when { context.task.tenant == };\n',
    });
    const err = await engine.reload().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PolicyLoadError);
    expect((err as Error).message).toMatch(new RegExp(`^${dir}/q\\.cedar:3:\\d+: unexpected token`));
    expect(engine.version).toBe(before);
    expect(engine.authorize(revoke).allowed).toBe(true);
    expect(engine.authorize(complete).allowed).toBe(false);
  });

  test('a set that fails validation at startup fails createCedarEngine', async () => {
    const fixture = await policyDir({ 'x.cedar': 'permit (principal, action, resource) when { context.nope };\n' });
    try {
      await expect(createCedarEngine({ dir: fixture.dir })).rejects.toThrow(/x\.cedar:1:\d+: .*nope/);
    } finally {
      await fixture.cleanup();
    }
  });

  test('authorize never sees a half-loaded set while reloads race with it', async () => {
    const { engine, write } = await setup(SET_REVOKE);
    let reloads = 0;
    let stop = false;
    const flipper = (async () => {
      for (let i = 0; i < 30; i++) {
        await write(i % 2 === 0 ? SET_COMPLETE : SET_REVOKE);
        // Several reloads in flight at once, interleaved with decisions.
        await Promise.all([engine.reload(), engine.reload()]);
        reloads += 2;
      }
      stop = true;
    })();
    let decisions = 0;
    const seen = new Set<string>();
    while (!stop) {
      for (let k = 0; k < 50; k++) {
        const a = engine.authorize(revoke).allowed;
        const b = engine.authorize(complete).allowed;
        // Both authorize calls run in one synchronous turn, so they see the same set:
        // exactly one of the two requests is allowed, never both, never neither.
        expect(a !== b).toBe(true);
        seen.add(a ? 'revoke' : 'complete');
        decisions += 2;
      }
      await new Promise((r) => setImmediate(r));
    }
    await flipper;
    expect(reloads).toBe(60);
    expect(decisions).toBeGreaterThan(100);
    expect(seen).toEqual(new Set(['revoke', 'complete']));
  });

  test('watch: a change in the directory is picked up after the debounce', async () => {
    const { engine, write } = await setup(SET_REVOKE, { watch: true });
    await write(SET_COMPLETE);
    const deadline = Date.now() + 5000;
    while (!engine.authorize(complete).allowed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    expect(engine.authorize(complete).allowed).toBe(true);
    expect(engine.authorize(revoke).allowed).toBe(false);
  });

  test('watch: a broken edit keeps the old set in force', async () => {
    const { engine, write } = await setup(SET_REVOKE, { watch: true });
    const before = engine.version;
    await write({ 'p.cedar': 'permit (' });
    await new Promise((r) => setTimeout(r, 400));
    expect(engine.version).toBe(before);
    expect(engine.authorize(revoke).allowed).toBe(true);
  });

  test('SIGHUP reloads when watching', async () => {
    const { engine, write } = await setup(SET_REVOKE, { watch: true });
    const before = engine.version;
    await write(SET_COMPLETE);
    process.emit('SIGHUP', 'SIGHUP');
    const deadline = Date.now() + 5000;
    while (engine.version === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(engine.authorize(complete).allowed).toBe(true);
  });

  test('after close, everything is denied', async () => {
    const fixture = await policyDir(SET_REVOKE);
    const engine = await createCedarEngine({ dir: fixture.dir });
    await engine.close();
    await fixture.cleanup();
    expect(engine.authorize(revoke)).toEqual({ allowed: false, policies: [], errors: ['policy engine is closed'] });
  });
});
