import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { main } from '../../src/cli/main.ts';
import { ADMIN, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

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
