import { expect, test } from '@jest/globals';
import type { AuditRecord } from '../../src/audit/record.ts';
import { lossSteps } from '../../src/audit/restore.ts';
import { repairSteps } from '../../src/ops/rollback.ts';

/**
 * The steps a data-loss recovery and a rollback recovery keep in Redis (src/audit/kept-steps.ts) are read by
 * other instances, of this release and of the one before during a rolling upgrade: the identities their records
 * are appended again with, and what an entry must hold, stay what each kind wrote before they shared a module.
 */
const record: AuditRecord = {
  seq: 12,
  time: '2026-01-01T00:00:00.000Z',
  prev: 'a'.repeat(64),
  hash: 'b'.repeat(64),
  action: 'quarantine.add',
  actor: 'x',
  decision: 'ok',
};

test('the identities of records appended again are unchanged', () => {
  expect(lossSteps.idOf(record)).toBe(`continued:12:${'b'.repeat(64)}`);
  expect(repairSteps.idOf(record)).toBe(`rechained:12:${'b'.repeat(64)}`);
});

test('an entry is read only when it is what its kind of step stores', () => {
  const loss = { continuedFromSeq: 3, knownToSeq: 0, orphans: [record] };
  expect(lossSteps.parse(JSON.stringify(loss), 'ops')).toEqual(loss);
  expect(lossSteps.parse(JSON.stringify({ ...loss, knownToSeq: '0' }), 'ops')).toBeUndefined();
  expect(lossSteps.parse(JSON.stringify({ ...loss, orphans: [{ seq: 1 }] }), 'ops')).toBeUndefined();
  expect(lossSteps.parse('not json', 'ops')).toBeUndefined();
  expect(lossSteps.parse('null', 'ops')).toBeUndefined();

  const repair = {
    by: 'r1',
    repair: { chain: 'ops', redisHead: '1:x', continuedFrom: '2:y', rechained: 1 },
    orphans: [record],
    reapply: [],
  };
  expect(repairSteps.parse(JSON.stringify(repair), 'ops')).toEqual(repair);
  expect(repairSteps.parse(JSON.stringify({ orphans: [], reapply: [] }), 'ops')).toEqual({ orphans: [], reapply: [] });
  // Another chain's repair, a `by` that is not an id, no endings list: left out.
  expect(repairSteps.parse(JSON.stringify(repair), 3)).toBeUndefined();
  expect(repairSteps.parse(JSON.stringify({ ...repair, by: 7 }), 'ops')).toBeUndefined();
  expect(repairSteps.parse(JSON.stringify({ ...repair, reapply: undefined }), 'ops')).toBeUndefined();
  expect(repairSteps.parse(JSON.stringify({ ...repair, repair: { ...repair.repair, rechained: '1' } }), 'ops')).toBeUndefined();
  // A continuation step is no repair step, nor the other way round.
  expect(repairSteps.parse(JSON.stringify(loss), 'ops')).toBeUndefined();
  expect(lossSteps.parse(JSON.stringify(repair), 'ops')).toBeUndefined();
});
