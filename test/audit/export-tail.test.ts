import { createHash } from 'node:crypto';
import { appendFileSync, mkdirSync, openSync, closeSync, readFileSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { EXPORT_FORMAT, ForeignExportError, readExport } from '../../src/audit/export-file.ts';
import { readExportTail } from '../../src/audit/export-tail.ts';
import { RollbackWatch } from '../../src/ops/rollback.ts';
import type { AuditChain } from '../../src/redis/keys.ts';
import { type AuditFixture, auditFixture } from './fixture.ts';

/**
 * Every broker start compares Redis's chain heads with the end of the audit export (has Redis gone back in
 * time?). The newest export file grows to audit.export.maxFileBytes (100 MiB by default): the comparison
 * must read its end, not the whole file. What the process read is measured by the kernel (/proc/self/io
 * rchar: bytes this process got from read(2)/pread(2), whatever the page cache held), so it counts every
 * path the reader could take.
 */
let f: AuditFixture;
beforeEach(async () => {
  f = await auditFixture('export-tail');
});
afterEach(async () => {
  await f.close();
});

const hashOf = (seq: number) => createHash('sha256').update(`r${seq}`).digest('hex');
const bytesRead = () => Number(/rchar: (\d+)/.exec(readFileSync('/proc/self/io', 'utf8'))![1]);

/** An export file of `records` ops records (about 256 bytes each) written fast, without the exporter. */
function bigExport(file: string, prefix: string, records: number): void {
  mkdirSync(dirname(file), { recursive: true });
  const fd = openSync(file, 'w');
  try {
    writeSync(fd, `${JSON.stringify({ export: EXPORT_FORMAT, version: 1, prefix, created: new Date().toISOString() })}\n`);
    let batch: string[] = [];
    for (let seq = 1; seq <= records; seq++) {
      const record = {
        seq,
        time: '2030-01-01T00:00:00.000Z',
        action: 'credential.issue',
        actor: `spiffe://dev.local/agent/${seq}`,
        decision: 'allow',
        leaseId: `lease-${seq}`,
        prev: seq === 1 ? '0'.repeat(64) : hashOf(seq - 1),
        hash: hashOf(seq),
      };
      batch.push(`${JSON.stringify({ chain: 'ops', record })}\n`);
      if (batch.length === 10_000) {
        writeSync(fd, batch.join(''));
        batch = [];
      }
    }
    writeSync(fd, batch.join(''));
  } finally {
    closeSync(fd);
  }
}

test('the startup comparison with a large export reads its end only, and still sees the export ahead of Redis', async () => {
  const N = 260_000; // about 90 MiB
  bigExport(f.file, f.prefix, N);
  const watch = new RollbackWatch({ redis: f.redis, keys: f.keys, audit: f.log, instance: 'export-tail' });

  // Redis holds the export's last record and knows it exported it: nothing went back.
  await f.redis.set(f.keys.auditHead('ops'), `${N}:${hashOf(N)}`);
  await f.redis.set(f.keys.auditExported('ops'), `${N}:${hashOf(N)}`);
  let before = bytesRead();
  expect(await watch.againstExport(f.file, f.prefix)).toBeUndefined();
  expect(bytesRead() - before).toBeLessThan(1024 * 1024);

  // Redis back on a snapshot two records before the export's end, its marker too (and a torn last line).
  appendFileSync(f.file, '{"chain":"ops","record":{"seq":');
  await f.redis.set(f.keys.auditHead('ops'), `${N - 2}:${hashOf(N - 2)}`);
  await f.redis.set(f.keys.auditExported('ops'), `${N - 3}:${hashOf(N - 3)}`);
  before = bytesRead();
  expect(await watch.againstExport(f.file, f.prefix)).toMatchObject({
    seen: 'export',
    chain: 'ops',
    redis: `${N - 2}:${hashOf(N - 2)}`,
    known: `${N}:${hashOf(N)}`,
  });
  expect(bytesRead() - before).toBeLessThan(1024 * 1024);
}, 120_000);

test('the end of the export is still checked against its header: another deployment fails', async () => {
  bigExport(f.file, 'another-deployment', 100);
  await f.redis.set(f.keys.auditHead('ops'), `100:${hashOf(100)}`);
  const watch = new RollbackWatch({ redis: f.redis, keys: f.keys, audit: f.log, instance: 'export-tail' });
  await expect(watch.againstExport(f.file, f.prefix)).rejects.toThrow(ForeignExportError);
});

test('reading from the end finds what reading the whole export finds: lines across chunks, UTF-8, duplicates, rotated files', async () => {
  const header = (prefix: string) =>
    `${JSON.stringify({ export: EXPORT_FORMAT, version: 1, prefix, created: '2030-01-01T00:00:00.000Z' })}\n`;
  const seqs = new Map<AuditChain, number>();
  const line = (chain: AuditChain, size: number, again?: number) => {
    const seq = again ?? (seqs.get(chain) ?? 0) + 1;
    if (again === undefined) seqs.set(chain, seq);
    // Multi-byte characters, some lines far longer than a 64 KiB chunk.
    const record = {
      seq,
      time: '2030-01-01T00:00:00.000Z',
      action: 'task.complete',
      actor: `é€😀${'ü'.repeat(size)}`,
      hash: `${chain}-${seq}`,
    };
    return `${JSON.stringify({ chain, record })}\n`;
  };
  mkdirSync(dirname(f.file), { recursive: true });
  let older = header(f.prefix);
  for (let i = 0; i < 200; i++) older += line(i % 3 === 0 ? 'ops' : i % 3, (i * 997) % 3000);
  appendFileSync(`${f.file}.1`, older);
  let newer = header(f.prefix);
  for (let i = 0; i < 150; i++) {
    const chain = i % 2 === 0 ? 'ops' : 1;
    newer += line(chain, i % 17 === 0 ? 100_000 : (i * 331) % 2000);
    // A crash between append and marker: the last two lines written again.
    if (i === 90) newer += line(chain, 10, seqs.get(chain)! - 1) + line(chain, 10, seqs.get(chain));
  }
  appendFileSync(f.file, newer);

  const since = (c: AuditChain) => (c === 'ops' ? 120 : c === 1 ? 60 : c === 2 ? 50 : undefined);
  const chains: AuditChain[] = ['ops', 1, 2];
  const tail = await readExportTail(f.file, f.prefix, since, (r) => r.seq % 2 === 0, chains, { hashes: true });
  // The reference: every line of every file, read forwards.
  const want = new Map<AuditChain, { last: number; hashes: Map<number, string>; kept: number[] }>();
  for await (const e of readExport(f.file)) {
    if (e.kind !== 'record') continue;
    const w = want.get(e.chain) ?? { last: 0, hashes: new Map<number, string>(), kept: [] as number[] };
    want.set(e.chain, w);
    w.last = Math.max(w.last, e.record.seq);
    if (e.record.seq > since(e.chain)!) {
      w.hashes.set(e.record.seq, e.record.hash);
      if (e.record.seq % 2 === 0 && !w.kept.includes(e.record.seq)) w.kept.push(e.record.seq);
    }
  }
  for (const c of chains) {
    const got = tail.get(c)!;
    const w = want.get(c)!;
    expect({ c, last: got.last?.seq, hashes: [...got.hashes].sort((a, b) => a[0] - b[0]), kept: got.kept.map((r) => r.seq) }).toEqual({
      c,
      last: w.last,
      hashes: [...w.hashes].sort((a, b) => a[0] - b[0]),
      kept: w.kept.sort((a, b) => a - b),
    });
    expect(got.kept.every((r) => r.actor.startsWith('é€😀'))).toBe(true);
  }
});
