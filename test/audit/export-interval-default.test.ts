import { readFile } from 'node:fs/promises';
import { resolvePath } from '../../src/config/load.ts';
import { openAgentTask, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';

/**
 * What a Redis data loss costs the audit trail is what was not yet exported (docs/operations.md): at most one
 * `audit.sealIntervalSeconds`. At the old default (30 s) that was half a minute of records, and at 2,000
 * issuances a second each pass exported ~60,000 records in one ~11-s burst beside the requests
 * (docs/benchmarks.md, "The 2,000/s tail"). The default is now 5 s: a record reaches the file within about
 * that, by the broker's own periodic pass (no exportNow here).
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('export-interval');
}, 30_000);
afterAll(async () => {
  await t?.close();
});

test('by default a record is in the export file within about 5 s, by the periodic pass alone', async () => {
  expect(t.config.audit.sealIntervalSeconds).toBe(5);
  const taskId = `t-export-interval-${Date.now()}`;
  await openAgentTask(t, taskId, [{ role: 'tickets-api', scopes: ['tickets:read'] }]);
  await t.broker.deps.audit.flush();
  const opened = Date.now();
  const file = resolvePath(t.config.audit.export.file);
  // One interval, the pass's paced pages and a margin for a loaded machine: well under the old 30 s.
  await waitFor(async () => (await readFile(file, 'utf8').catch(() => '')).includes(taskId), 12_000, 100);
  expect(Date.now() - opened).toBeLessThan(12_000);
});
