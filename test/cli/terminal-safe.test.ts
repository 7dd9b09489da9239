import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { main } from '../../src/cli/main.ts';
import { hasControls, terminalSafe } from '../../src/cli/terminal.ts';
import { ADMIN, AGENT, ORCH, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { startFakeBroker, send as answer } from '../helpers/fake-broker.ts';

/**
 * What a caller sends must not repaint an operator's terminal. Found by a review of the change that
 * let callers name any role: a role name with ESC, C1, bidi and CR/LF bytes reached the audit record
 * and `jit audit query` printed it raw (colours, a cleared line, a forged row of its own). Role names
 * with such characters are now malformed input (so are a task's tenant, purpose and label values), and
 * the CLI escapes control characters in every table cell and field, since text stored by an earlier
 * release, an approver's reason or a hostile broker may still carry them.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('cli-terminal-safe');
});
afterAll(async () => {
  await t?.close();
});

const FORGED = '999  2026-01-01T00:00:00.000Z  spiffe://dev.local/ops/alice  task.complete  ok';
const EVIL = `x\u001b[2K\u001b[31m\u009b0m\u202e\r\n${FORGED}`;

async function jit(args: string[], as: string): Promise<{ code: number; stdout: string }> {
  let stdout = '';
  const code = await main(args, {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: () => true },
    env: { JIT_BROKER_URL: t.url, JIT_TOKEN: t.issuer.svid(as, { ttl: 600 }) },
    cwd: process.cwd(),
  });
  return { code, stdout };
}

test('a role name with control, bidi or line-break characters is malformed input, in a grant and in a request', async () => {
  await openAgentTask(t, 'ts-1', [{ role: 'demo-api' }]);
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'ts-1', role: EVIL });
  expect({ status: r.status, code: r.body.code }).toEqual({ status: 400, code: 'invalid_request' });
  const g = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 60,
    grants: [{ role: EVIL }],
  });
  expect({ status: g.status, code: g.body.code }).toEqual({ status: 400, code: 'invalid_request' });
});

test('the CLI escapes control characters in what it prints: a purpose with an ESC sequence and a forged line', async () => {
  const body = { taskId: 'ts-2', agent: `spiffe://dev.local${AGENT}`, tenant: 'acme', ttlSeconds: 60, grants: [{ role: 'demo-api' }] };
  // Such a purpose is malformed input now (test/redteam/task-text-controls.test.ts); a task stored by an earlier
  // release may still hold one, so the stored record is given it behind the broker's back.
  const refused = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), { ...body, purpose: EVIL });
  expect({ status: refused.status, code: refused.body.code }).toEqual({ status: 400, code: 'invalid_request' });
  expect((await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), { ...body, purpose: 'p' })).status).toBe(201);
  const { redis, keys, tasks } = t.broker.deps;
  const stored = JSON.parse((await redis.hget(keys.task('ts-2'), 'd'))!);
  await redis.hset(keys.task('ts-2'), 'd', JSON.stringify({ ...stored, purpose: EVIL }));
  tasks.forget('ts-2');
  for (const args of [
    ['task', 'show', 'ts-2'],
    ['audit', 'query', '--task', 'ts-2'],
  ]) {
    const out = await jit(args, ORCH);
    expect(out.code).toBe(0);
    if (args[0] === 'task') expect(out.stdout).toContain('x\\u001b[2K');
    for (const c of ['\u001b', '\u009b', '\u202e', '\r']) expect(out.stdout).not.toContain(c);
    expect(out.stdout.split('\n').some((line) => line.startsWith(FORGED))).toBe(false);
  }
});

test("jit audit tail escapes them too: an approver's reason with an ESC sequence and a forged line", async () => {
  await openAgentTask(t, 'ts-3', [{ role: 'prod-deploy' }]);
  const p = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'ts-3', role: 'prod-deploy' });
  expect(p.status).toBe(202);
  const reason = `x\u001b[2K\u001b[31m\u009b0m\u202e\r\n2026-01-01T00:00:00.000Z  spiffe://dev.local/ops/alice  task.complete  ok  ts-3`;
  // Such a reason is malformed input now (test/redteam/reason-text-controls.test.ts); a record written by an earlier
  // release may still hold one, so the record is appended behind the HTTP API's back.
  const refused = await call(t.url, 'POST', `/v1/approvals/${p.body.approvalId}`, t.as(ADMIN), { decision: 'approve', reason });
  expect({ status: refused.status, code: refused.body.code }).toEqual({ status: 400, code: 'invalid_request' });
  await t.broker.deps.audit.append({
    action: 'approval.decide',
    actor: `spiffe://dev.local${ADMIN}`,
    decision: 'allow',
    taskId: 'ts-3',
    role: 'prod-deploy',
    reason,
  });
  let stdout = '';
  const STOP = new Error('stop');
  await main(['audit', 'tail', '--task', 'ts-3', '--since', '1h', '--interval', '1'], {
    stdout: {
      write: (s: string) => {
        stdout += s;
        if (stdout.includes('approval.decide')) throw STOP; // one poll is enough
        return true;
      },
    },
    stderr: { write: () => true },
    env: { JIT_BROKER_URL: t.url, JIT_TOKEN: t.issuer.svid(ORCH, { ttl: 600 }) },
    cwd: process.cwd(),
  });
  expect(stdout).toContain('approval.decide');
  // Before: printed raw (the query command escaped it, tail did not).
  for (const c of ['\u001b', '\u009b', '\u202e', '\r']) expect(stdout).not.toContain(c);
  expect(stdout.split('\n').some((line) => line.startsWith('2026-01-01T00:00:00.000Z'))).toBe(false);
});

test('invisible characters (tag characters, variation selectors, Hangul fillers) are escaped too, and refused in role names', async () => {
  // Found in review: outside the escaped set, they let a role name look like another in an audit record or table.
  const lookalike = 'demo-api\u{e0041}\u{e0042}\ufe0f\u3164\u034f';
  expect(terminalSafe(lookalike)).toBe('demo-api\\u{e0041}\\u{e0042}\\ufe0f\\u3164\\u034f');
  expect(hasControls(lookalike)).toBe(true);
  expect(hasControls('demo-api')).toBe(false);
  expect(hasControls('støre-ärende-読み取り')).toBe(false); // letters of any script are names, not tricks
  // Outside the default-ignorable set (found in review): a blank braille pattern, annotation marks that hide
  // text, Arabic and hieroglyph format controls, a no-break space that passes for a space, a lone surrogate.
  for (const c of ['\u2800', '\ufff9', '\u0600', '\u{13430}', '\u00a0', '\ud800']) expect(hasControls(`demo${c}api`)).toBe(true);
  // Blank glyphs that are neither spaces nor default-ignorable (red team): `acme` + one of them reads as `acme`.
  for (const c of ['\u{1d159}', '\u{16fe4}']) expect([c, hasControls(`acme${c}`)]).toEqual([c, true]);
  expect(terminalSafe('demo\u00a0api\u{13430}')).toBe('demo\\u00a0api\\u{13430}');
  expect(hasControls('demo api')).toBe(false);
  await openAgentTask(t, 'ts-4', [{ role: 'demo-api' }]);
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'ts-4', role: lookalike });
  expect({ status: r.status, code: r.body.code }).toEqual({ status: 400, code: 'invalid_request' });
});

test('nothing a hostile broker answers reaches the terminal raw: task open, list cursor, pending approval (found by red team)', async () => {
  // The CLI escaped table cells and problem details, but printed ids and times in its own lines and notes
  // as the broker sent them: an ESC/OSC sequence could retitle or clear the operator's terminal.
  const evil = '\u001b]0;pwned\u0007\u001b[2J\u001b[31mFAKE\u001b[0m\u202e';
  const fake = await startFakeBroker((req, res) => {
    const send = (status: number, body: unknown) => answer(res, status, JSON.stringify(body));
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (req.method === 'POST' && path === '/v1/credentials') return send(202, { approvalId: `a${evil}`, status: 'pending' });
    if (req.method === 'POST' && path === '/v1/tasks')
      return send(201, {
        taskId: `T${evil}`,
        agent: `A${evil}`,
        tenant: 't',
        status: 'open',
        expiresAt: `E${evil}`,
        grants: [{ role: `R${evil}`, scopes: [`S${evil}`] }],
      });
    if (req.method === 'GET' && path === '/v1/tasks') return send(200, { items: [], nextCursor: `C${evil}` });
    send(404, { code: 'route_not_found', detail: 'no' });
  });
  const url = fake.url;
  const run = async (args: string[]) => {
    let printed = '';
    const write = (s: string) => {
      printed += s;
      return true;
    };
    await main(args, { stdout: { write }, stderr: { write }, env: { JIT_BROKER_URL: url, JIT_TOKEN: 'x.y.z' }, cwd: process.cwd() });
    return printed;
  };
  try {
    for (const args of [
      ['task', 'open', '--agent', 'spiffe://dev.local/agent/a', '--tenant', 't', '--purpose', 'p', '--ttl', '60', '--grant', 'demo-api'],
      ['task', 'list'],
      ['cred', 'get', '--task', 't', '--role', 'demo-api'],
    ]) {
      const printed = await run(args);
      expect([args.join(' '), printed.includes('\\u001b')]).toEqual([args.join(' '), true]); // the broker's value, escaped
      for (const c of ['\u001b', '\u0007', '\u202e']) expect([args.join(' '), printed.includes(c)]).toEqual([args.join(' '), false]);
    }
  } finally {
    await fake.close();
  }
});
