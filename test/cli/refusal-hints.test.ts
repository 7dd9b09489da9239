import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { main } from '../../src/cli/main.ts';
import { AGENT, ORCH, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Found walking docs/getting-started.md as a newcomer: its steps switch JIT_TOKEN between the orchestrator and the
 * agent (`export JIT_TOKEN=...` in one step, an inline one in the next), so a step run out of order, or in another
 * terminal, is refused with `403 not_orchestrator` or `403 not_task_agent` that never says which identity the broker
 * saw; and `jit audit query` / `export` / `tail` without `--task` as a task's party answered only "Only admins may
 * query the audit log without taskId", not the flag to add. The CLI now names the identity its token is for on the
 * refusals that depend on who the caller is, and gives the flag on `audit_task_required`.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('cli-refusal-hints');
});
afterAll(async () => {
  await t?.close();
});

async function jit(args: string[], env: Record<string, string>): Promise<{ code: number; stderr: string }> {
  let stderr = '';
  const code = await main(args, {
    stdout: { write: () => true },
    stderr: { write: (s: string) => (stderr += s) },
    env: { JIT_BROKER_URL: t.url, ...env },
    cwd: process.cwd(),
  });
  return { code, stderr };
}
const as = (path: string) => ({ JIT_TOKEN: t.issuer.svid(path, { ttl: 600 }) });
const open = [
  'task',
  'open',
  '--agent',
  `spiffe://dev.local${AGENT}`,
  '--tenant',
  'acme',
  '--purpose',
  'p',
  '--ttl',
  '10m',
  '--grant',
  'demo-api',
];

test('a refusal that depends on who you are names the identity the token is for', async () => {
  const r = await jit(open, as(AGENT));
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(
    /403 not_orchestrator: .* \(you are spiffe:\/\/dev\.local\/agent\/support: JIT_TOKEN or --token-file sets who you are\)\n$/,
  );

  await openAgentTask(t, 'rh-1', [{ role: 'demo-api' }]);
  const c = await jit(['cred', 'get', '--task', 'rh-1', '--role', 'demo-api'], as(ORCH));
  expect(c.code).toBe(1);
  expect(c.stderr).toContain(`403 not_task_agent`);
  expect(c.stderr).toContain(`(you are spiffe://dev.local${ORCH}:`);

  // From a token file too, which wins over JIT_TOKEN.
  const file = join(mkdtempSync(join(tmpdir(), 'jit-hint-')), 'svid');
  writeFileSync(file, t.issuer.svid(ORCH, { ttl: 600 }));
  const f = await jit(['cred', 'get', '--task', 'rh-1', '--role', 'demo-api', '--token-file', file], as(AGENT));
  expect(f.stderr).toContain(`(you are spiffe://dev.local${ORCH}:`);
});

test('other refusals get no identity hint', async () => {
  const r = await jit(['task', 'show', 'rh-none'], as(ORCH));
  expect(r).toEqual({ code: 1, stderr: expect.not.stringContaining('you are') });
});

test('the audit log without --task, for a non-admin: the refusal says to give --task', async () => {
  for (const args of [
    ['audit', 'query'],
    ['audit', 'export'],
  ]) {
    const r = await jit(args, as(ORCH));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/400 audit_task_required: .*\(give --task <taskId>: only admins read the whole log\)\n$/);
  }
});
