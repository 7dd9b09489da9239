import { beforeAll, expect, test } from '@jest/globals';
import { ensureBuilt, jit } from '../helpers/cli.ts';

/**
 * A command group named without its subcommand (`jit task`, `jit task --json`): the same bad usage (exit 2) whatever
 * global flags follow it, saying the subcommand is missing and listing the group's subcommands. Found in review:
 * `jit task --json` said `unknown command "task --json"`, while `jit task` printed the group's help. The compiled
 * CLI on Node 20; no broker is asked (JIT_BROKER_URL names a port nothing listens on).
 */
const ENV = { JIT_BROKER_URL: 'http://127.0.0.1:9', JIT_TOKEN: 'a.b.c' };
const TASK_MISSING = '"jit task" needs a subcommand: open, show, complete, list, evidence, leases';

beforeAll(async () => {
  await ensureBuilt();
}, 120_000);

test.each([
  [['task']],
  [['task', '--json']],
  [['task', '--broker', 'http://127.0.0.1:9']],
  [['task', '--token-file=/nonexistent']],
  [['--json', 'task']],
])('jit %j: exit 2, the subcommand is missing, the subcommands listed', async (args) => {
  const r = await jit(args, ENV);
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(new RegExp(`^jit: ${TASK_MISSING}\nusage: jit task open --agent A `));
  for (const sub of ['show <taskId>', 'complete <taskId>', 'list [--status', 'evidence <taskId>', 'leases <taskId>'])
    expect(r.stderr).toContain(`\n       jit task ${sub}`);
  if (args.includes('--json')) expect(JSON.parse(r.stdout)).toEqual({ code: 'usage', detail: TASK_MISSING });
  else expect(r.stdout).toBe('');
});

test('other groups say the same: jit lease --json, jit audit', async () => {
  const lease = await jit(['lease', '--json'], ENV);
  expect(lease.code).toBe(2);
  expect(JSON.parse(lease.stdout)).toEqual({ code: 'usage', detail: '"jit lease" needs a subcommand: show, revoke' });
  const audit = await jit(['audit'], ENV);
  expect(audit.code).toBe(2);
  expect(audit.stderr).toMatch(/^jit: "jit audit" needs a subcommand: query, tail, verify, export\nusage: jit audit query/);
});

test('a global flag between the group and its subcommand is a flag: jit task --json show (no id) is that command’s usage', async () => {
  const r = await jit(['task', '--json', 'show'], ENV);
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/\nusage: jit task show <taskId>\n$/);
  expect(JSON.parse(r.stdout)).toMatchObject({ code: 'usage' });
});

test('--help after the group still shows its help (exit 0); an unknown subcommand is still an unknown command', async () => {
  for (const args of [
    ['task', '--help'],
    ['task', '--json', '--help'],
  ]) {
    const help = await jit(args, ENV);
    expect([args, help.code]).toEqual([args, 0]);
    expect(help.stdout).toContain('  jit task open --agent A');
    expect(help.stdout).toContain('  jit task leases <taskId>');
  }
  const nope = await jit(['task', 'nope', '--json'], ENV);
  expect(nope.code).toBe(2);
  expect(nope.stderr).toBe('jit: unknown command "task nope"; `jit --help` lists them\n');
});
