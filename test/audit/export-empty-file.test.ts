import { renameSync, writeFileSync } from 'node:fs';
import { verifyAuditChain } from '../../src/audit/verify.ts';
import { type AuditFixture, auditFixture, recordsOf } from './fixture.ts';

/**
 * Red team: a rotation renames the export file and opens a new one, whose header is its first write. A crash (or a
 * full disk) between the two leaves an empty file. The writer takes an empty file as new (it writes the header), but
 * the pass that follows a pass stopped after its note (Keys.auditExportPending ahead of the marker) first reads the
 * end of the file, and that read refused the empty file as "no jit-broker header": every later pass of the chain
 * failed, and its records stayed in Redis, unexported and unsealed, until an operator removed the file.
 */
let f: AuditFixture;
beforeEach(async () => {
  f = await auditFixture('export-empty-file');
});
afterEach(async () => {
  await f.close();
});

test('a pass after a rotation cut short (an empty current file) exports, having read nothing there (found by red team)', async () => {
  await f.append(4);
  await f.exporter().exportNow();
  await f.append(3);
  // As a pass that noted records 5..7, rotated, and died before the new file's header: the note ahead of the marker,
  // the old file rotated, the new one empty.
  const seven = (await f.redis.xrange(f.keys.auditStream('ops'), '-', '+'))
    .map(([, fields]) => JSON.parse(fields[1]!) as { seq: number; hash: string })
    .find((r) => r.seq === 7)!;
  await f.redis.set(f.keys.auditExportPending('ops'), `7:${seven.hash} crashed`);
  renameSync(f.file, `${f.file}.1`);
  writeFileSync(f.file, '');
  // Before: audit export .../audit.jsonl has no jit-broker header: not reading it.
  const res = await f.exporter().exportNow();
  expect(res.exported.get('ops')).toBe(3);
  expect(recordsOf(await f.lines(), 'ops').map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
  expect(await verifyAuditChain(f.redis, f.keys, 'ops', { exportFile: f.file, sealKey: f.sealKey })).toMatchObject({
    ok: true,
    records: 7,
    unsealed: 0,
  });
});
