import { overlapping } from '../../src/identity/patterns.ts';
import { dropPrefix, startTestBroker, uniquePrefix } from '../helpers/broker.ts';
import { capturingLogger } from '../helpers/log-capture.ts';

/**
 * An identity in both `orchestrators` and `approvers` can approve what the agent of a task it opened asks for:
 * the self-approval rule covers the agent and its delegators, not the task's opener. That stays allowed (a person
 * who runs an agent by hand may be both), but nothing said so; the broker now warns at startup.
 */
test('patterns overlap when one identity can match both', () => {
  const O = 'spiffe://td/orchestrator/*';
  expect(overlapping([O], ['spiffe://td/ops/*'])).toEqual([]);
  expect(overlapping([O], ['spiffe://td/*'])).toEqual([[O, 'spiffe://td/*']]);
  expect(overlapping([O], ['spiffe://td/orchestrator/a'])).toEqual([[O, 'spiffe://td/orchestrator/a']]);
  expect(overlapping(['spiffe://td/orchestrator/a'], [O])).toEqual([['spiffe://td/orchestrator/a', O]]);
  // `a/*` matches identities below `a/`, not `a` itself, nor `ab/...`.
  expect(overlapping([O], ['spiffe://td/orchestrator'])).toEqual([]);
  expect(overlapping([O], ['spiffe://td/orchestrators/*'])).toEqual([]);
  expect(overlapping(['https://idp#alice'], ['https://idp#alice', 'https://idp#bob'])).toEqual([
    ['https://idp#alice', 'https://idp#alice'],
  ]);
  expect(overlapping([O, 'x'], [])).toEqual([]);
});

test('a broker whose orchestrators may also approve warns at startup, naming the patterns; one whose lists are apart does not', async () => {
  const prefixes = [uniquePrefix('overlap-a'), uniquePrefix('overlap-b')];
  const warned = capturingLogger<{ msg: string; overlapping?: unknown }>('warn');
  const both = await startTestBroker('overlap-a', {
    prefix: prefixes[0],
    config: { approvers: ['spiffe://dev.local/*'] },
    broker: { logger: warned.logger },
  });
  await both.broker.close();
  const apart = capturingLogger<{ msg: string }>('warn');
  const fine = await startTestBroker('overlap-b', { prefix: prefixes[1], broker: { logger: apart.logger } });
  await fine.broker.close();
  for (const p of prefixes) await dropPrefix(p);
  const line = warned.lines.find((l) => l.msg.includes('`orchestrators` and `approvers`'));
  expect(line?.overlapping).toEqual([{ orchestrator: 'spiffe://dev.local/orchestrator/*', approver: 'spiffe://dev.local/*' }]);
  expect(apart.lines.filter((l) => l.msg.includes('`orchestrators` and `approvers`'))).toEqual([]);
});
