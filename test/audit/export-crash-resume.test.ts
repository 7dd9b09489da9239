import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import type { ExportFileWriter } from '../../src/audit/export-file.ts';
import type { AuditExporter } from '../../src/audit/export.ts';
import { verifyAudit, verifyAuditChain } from '../../src/audit/verify.ts';
import { REDIS_URL } from '../helpers/broker.ts';
import { type AuditFixture, auditFixture, recordsOf } from './fixture.ts';

/**
 * The export appends a page to the file, fsyncs it, then moves the chain's export marker in Redis. Between the
 * two, a crash (or a stall past the export lock's 10-s hold) left the page in the file with the marker behind it:
 * the next pass appended the same records again. Readers skipped those exact duplicates, but the file held every
 * record of that page twice. The pass now reads the end of the file first (the file is the truth) and does not
 * append what is already there.
 */
let f: AuditFixture;
beforeEach(async () => {
  f = await auditFixture('export-crash');
});
afterEach(async () => {
  await f.close();
});

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

test('an exporter killed between its append and the marker move: the next pass appends nothing twice, and verify passes', async () => {
  await f.append(10);
  await f.exporter().exportNow();
  await f.append(7);
  const child = spawn(
    process.execPath,
    [
      new URL('./workers/export-die-after-append.ts', import.meta.url).pathname,
      JSON.stringify({ prefix: f.prefix, buckets: 4, file: f.file, kek: f.kek, redisUrl: REDIS_URL }),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((r) => child.on('exit', (c, s) => r([c, s])));
  expect({ code, signal, out }).toMatchObject({ signal: 'SIGKILL' });
  // Its page is in the file, the marker still before it.
  expect(recordsOf(await f.lines(), 'ops').map((r) => r.seq)).toEqual(range(1, 17));
  expect(await f.redis.get(f.keys.auditExported('ops'))).toMatch(/^10:/);
  // Its lock would lapse within the 10-s hold; gone now, so the test does not wait for it.
  await f.redis.del(f.keys.lock('audit-export'));

  await f.append(3);
  const res = await f.exporter().exportNow();
  // Before: [1..17, 11..20] (the dead exporter's page appended a second time).
  expect(recordsOf(await f.lines(), 'ops').map((r) => r.seq)).toEqual(range(1, 20));
  expect(res.exported.get('ops')).toBe(3);
  expect(await f.redis.get(f.keys.auditExported('ops'))).toMatch(/^20:/);
  const verified = await verifyAudit(f.redis, f.keys, { exportFile: f.file, sealKey: f.sealKey });
  expect(verified.filter((r) => !r.ok)).toEqual([]);
  expect(verified.find((r) => r.chain === 'ops')).toMatchObject({ ok: true, records: 20, unsealed: 0 });
}, 60_000);

test('an exporter stalled between its append and the marker move past its lock: the next holder appends nothing twice', async () => {
  await f.append(5);
  const a = f.exporter({ pageSize: 4 });
  const writer = (a as unknown as { writer: ExportFileWriter }).writer;
  const append = writer.append.bind(writer);
  let stalled!: () => void;
  const resume = new Promise<void>((r) => (stalled = r));
  let reached!: () => void;
  const atStall = new Promise<void>((r) => (reached = r));
  let first = true;
  writer.append = async (lines) => {
    await append(lines);
    if (!first) return;
    first = false;
    reached();
    await resume;
  };
  const passA = (a as AuditExporter).exportNow().catch((err: Error) => err);
  await atStall;
  // A's first page (seqs 1..4) is in the file; A stalls past its hold: its lock lapses, B takes it.
  await f.redis.del(f.keys.lock('audit-export'));
  await f.append(2);
  await f.exporter({ pageSize: 4 }).exportNow();
  stalled();
  await passA;
  // Before: [1..4, 1..7] (B appended A's page again).
  expect(recordsOf(await f.lines(), 'ops').map((r) => r.seq)).toEqual(range(1, 7));
  const verified = await verifyAudit(f.redis, f.keys, { exportFile: f.file, sealKey: f.sealKey });
  expect(verified.find((r) => r.chain === 'ops')).toMatchObject({ ok: true, records: 7, unsealed: 0 });
}, 60_000);

test('a crash mid-write (the page cut short in the file, the marker before it): only what the file lacks is appended', async () => {
  await f.append(10);
  await f.exporter().exportNow();
  // As if the pass had died writing records 6..10: the file ends with 6, 7, 8 and half of 9; the marker names 5.
  const text = readFileSync(f.file, 'utf8');
  const cut = text.indexOf('"seq":9,');
  expect(cut).toBeGreaterThan(0);
  writeFileSync(f.file, text.slice(0, cut));
  const five = recordsOf(await f.lines(), 'ops')[4]!;
  await f.redis.set(f.keys.auditExported('ops'), `5:${five.hash}`);
  await f.append(2);
  const res = await f.exporter().exportNow();
  expect(res.exported.get('ops')).toBe(4);
  expect(recordsOf(await f.lines(), 'ops').map((r) => r.seq)).toEqual(range(1, 12));
  const verified = await verifyAuditChain(f.redis, f.keys, 'ops', { exportFile: f.file, sealKey: f.sealKey });
  expect(verified).toMatchObject({ ok: true, records: 12, unsealed: 0 });
  expect(verified.warnings.join('\n')).toMatch(/not valid JSON/);
});
