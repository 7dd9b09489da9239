import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { main } from '../../src/cli/main.ts';
import { ADMIN, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { ensureBuilt, JIT, NODE20 } from '../helpers/cli.ts';

/**
 * `jit audit tail --since 30m` on a broker with more than one page (50) of records since then printed the
 * first page and died with `jit: 400 invalid_cursor` (exit 1): while paging, it moved its `since` to the
 * newest record seen, so the next page's request carried the cursor of the first with another filter,
 * which the broker rightly refuses. Found by a newcomer tailing a dev broker after the getting-started walk.
 * The same happened to any poll that found more than a page (a burst between two polls).
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('cli-audit-tail');
});
afterAll(async () => {
  await t?.close();
});

test('jit audit tail follows a window of more than one page to its end', async () => {
  const n = 60;
  for (let i = 1; i <= n; i++) await openAgentTask(t, `tail-${i}`, [{ role: 'demo-api' }]);
  let stdout = '';
  let stderr = '';
  const STOP = new Error('stop');
  const seen = () => new Set(stdout.match(/tail-\d+/g) ?? []).size;
  await main(['audit', 'tail', '--action', 'task.open', '--since', '1h', '--interval', '1'], {
    stdout: {
      write: (s: string) => {
        stdout += s;
        if (seen() === n) throw STOP; // every record printed: enough
        return true;
      },
    },
    stderr: { write: (s: string) => (stderr += s) },
    env: { JIT_BROKER_URL: t.url, JIT_TOKEN: t.issuer.svid(ADMIN, { ttl: 600 }) },
    cwd: process.cwd(),
  });
  expect(stderr).not.toContain('invalid_cursor');
  expect(seen()).toBe(n);
});

/** The compiled `jit audit tail` on Node 20, followed until `stop` resolves, then interrupted (SIGINT). */
async function tailUntil(args: string[], env: Record<string, string>, stop: (out: () => string) => Promise<void>) {
  const child = spawn(NODE20, [JIT, 'audit', 'tail', ...args], {
    env: { PATH: process.env.PATH, ...env } as NodeJS.ProcessEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  try {
    await stop(() => stdout);
  } finally {
    child.kill('SIGINT');
  }
  return { code: await exited, stdout, stderr };
}

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('jit audit tail (the compiled command on Node 20)', () => {
  beforeAll(async () => {
    await ensureBuilt();
  }, 120_000);

  test('a record that reaches its chain after a newer one was printed, with its earlier time, is still printed', async () => {
    const env = { JIT_BROKER_URL: t.url, JIT_TOKEN: t.issuer.svid(ADMIN, { ttl: 600 }) };
    const taskId = `tail-late-${Date.now()}`;
    const r = await tailUntil(['--json', '--since', '1m', '--interval', '1', '--task', taskId], env, async (out) => {
      await openAgentTask(t, taskId, [{ role: 'demo-api' }]);
      await until(() => out().includes('"task.open"'), 10_000);
      const opened = JSON.parse(out().trim().split('\n')[0]!);
      // A record timed a moment before that one (an append delayed, retried, or re-chained with its time)
      // reaches the chain only now, after the poll that printed the newer record.
      const { deps } = t.broker;
      await deps.audit.appendTo(
        deps.audit.chainOf({ taskId }),
        { action: 'task.complete', actor: ADMIN, decision: 'ok', taskId, reason: 'late-record' },
        new Date(Date.parse(opened.time) - 1500).toISOString(),
      );
      await until(() => out().includes('late-record'), 10_000).catch(() => {});
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('late-record');
    // Printed once each, however many polls saw them.
    expect(r.stdout.trim().split('\n')).toHaveLength(2);
  }, 60_000);

  test('following for more than ten polls leaks nothing: no MaxListenersExceededWarning on stderr', async () => {
    const env = { JIT_BROKER_URL: t.url, JIT_TOKEN: t.issuer.svid(ADMIN, { ttl: 600 }) };
    const r = await tailUntil(['--interval', '1', '--action', 'no.such.action'], env, () => new Promise((res) => setTimeout(res, 13_000)));
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
  }, 60_000);
});
