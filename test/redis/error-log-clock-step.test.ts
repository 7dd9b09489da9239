import { Redis } from 'ioredis';
import { RejectionLog } from '../../src/identity/rejection.ts';
import { logErrors } from '../../src/redis/connection.ts';
import { capturingLogger } from '../helpers/log-capture.ts';

/**
 * The two log limiters (one line per interval of Redis connection errors, one of refused identity tokens) timed
 * the interval on the wall clock: after a step back of an hour (NTP setting a fast clock right, `date -s`), every
 * line of the next hour was held back, an outage or a flood of forged tokens seen only in metrics.
 */
const realDateNow = Date.now;
afterEach(() => {
  Date.now = realDateNow;
});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('Redis connection errors are still logged once per interval after the wall clock stepped back an hour', async () => {
  const { logger, lines } = capturingLogger();
  const client = new Redis({ lazyConnect: true });
  logErrors(client, 'main', logger, undefined, 100);
  client.emit('error', new Error('connect ECONNREFUSED'));
  client.emit('error', new Error('connect ECONNREFUSED'));
  expect(lines).toHaveLength(1);
  Date.now = () => realDateNow() - 3_600_000;
  await sleep(150);
  client.emit('error', new Error('connect ECONNREFUSED'));
  expect(lines).toHaveLength(2);
  expect(lines[1]).toMatchObject({ redis: 'main', suppressed: 1 });
  client.disconnect();
});

test('refused identity tokens are still logged once per interval after the wall clock stepped back an hour', async () => {
  const { logger, lines } = capturingLogger('info');
  const log = new RejectionLog({ logger, intervalMs: 100 });
  log.record('signature', 'x');
  log.record('signature', 'x');
  expect(lines.filter((l) => l.msg === 'identity tokens rejected')).toHaveLength(1);
  Date.now = () => realDateNow() - 3_600_000;
  await sleep(150);
  log.record('signature', 'x');
  expect(lines.filter((l) => l.msg === 'identity tokens rejected')).toHaveLength(2);
});
