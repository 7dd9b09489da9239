import { afterAll, expect, test } from '@jest/globals';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * A closed broker leaves nothing of its own running in the process (an embedding process, a test file
 * that starts and closes many brokers). Before, the policy-version heartbeat (src/ops/policy-sync.ts,
 * every 5 s) was stopped only when a start failed, not by close(): each closed broker went on writing
 * its version to its closed Redis connection every 5 s for as long as the process lived.
 */
let t: TestBroker | undefined;
afterAll(async () => {
  await t?.close();
});

test('after close() the policy-version heartbeat publishes no more', async () => {
  t = await startTestBroker('close-timers');
  const sync = t.broker.services.rotation.policySync;
  const publish = sync.publish.bind(sync);
  let calls = 0;
  sync.publish = () => {
    calls += 1;
    return publish();
  };
  const closing = t;
  t = undefined;
  await closing.close();
  // Counted over two heartbeat periods (5 s each): a heartbeat left running publishes in each; a loaded
  // machine can only make it fewer, never more than none when stopped.
  await new Promise((r) => setTimeout(r, 10_500));
  expect(calls).toBe(0);
}, 30_000);
