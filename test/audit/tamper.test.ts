import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { type AuditRecord, GENESIS, hashRecord } from '../../src/audit/record.ts';
import { trimChain } from '../../src/audit/retention.ts';
import { RecordChecker } from '../../src/audit/record-checker.ts';
import { deriveSealKey, makeSeal } from '../../src/audit/seal.ts';
import { verifyAuditChain } from '../../src/audit/verify.ts';
import type { Logger } from '../../src/logger.ts';
import { type AuditFixture, auditFixture } from './fixture.ts';

let f: AuditFixture;
beforeEach(async () => {
  f = await auditFixture('audit-tamper');
});
afterEach(async () => {
  await f.close();
});

const verify = (opts: { file?: boolean; key?: Buffer | null } = {}) =>
  verifyAuditChain(f.redis, f.keys, 'ops', {
    ...(opts.file === false ? {} : { exportFile: f.file }),
    ...(opts.key === null ? {} : { sealKey: opts.key ?? f.sealKey }),
  });

/** Someone with Redis write access rebuilds the stream, changing records from `fromSeq` on and (optionally) recomputing every hash after. */
async function rewriteRedis(fromSeq: number, recompute: boolean): Promise<void> {
  const stream = f.keys.auditStream('ops');
  const all = await f.redis.xrange(stream, '-', '+');
  const m = f.redis.multi().del(stream);
  let prev = GENESIS;
  let last = '';
  for (const [id, fields] of all) {
    const r = JSON.parse(fields[1]!) as AuditRecord;
    if (r.seq >= fromSeq) r.decision = 'deny';
    if (recompute) {
      const { hash: _h, ...rest } = { ...r, prev: r.seq === 1 ? GENESIS : prev };
      r.prev = rest.prev;
      r.hash = hashRecord(rest);
    }
    prev = r.hash;
    last = `${r.seq}:${r.hash}`;
    m.xadd(stream, id, 'r', JSON.stringify(r));
  }
  if (recompute) m.set(f.keys.auditHead('ops'), last);
  await m.exec();
}

/** An exporter whose file cannot be written (its directory is a regular file): seals reach Redis only. */
function brokenFileExporter() {
  const blocker = join(f.dir, 'blocker');
  writeFileSync(blocker, 'not a directory');
  return f.exporter({ file: join(blocker, 'audit.jsonl') });
}

test('an intact chain verifies, with or without the KEK', async () => {
  await f.append(20);
  await f.exporter().exportNow();
  expect(await verify()).toMatchObject({ ok: true, records: 20, seals: { checked: true } });
  const noKey = await verify({ key: null });
  expect(noKey).toMatchObject({ ok: true, seals: { checked: false } });
  expect(noKey.warnings).toContain('seals not checked (no KEK)');
});

test('an edited record in the export file is found, with its file and line', async () => {
  await f.append(20);
  await f.exporter().exportNow();
  await trimChain(f.redis, f.keys, 'ops', { maxAgeDays: 0, maxRecords: 1000 }, Date.now() + 1000);
  const text = readFileSync(f.file, 'utf8').split('\n');
  const i = text.findIndex((l) => l.includes('"seq":6,'));
  text[i] = text[i]!.replace('"decision":"allow"', '"decision":"deny"');
  writeFileSync(f.file, text.join('\n'));
  const res = await verify();
  expect(res.ok).toBe(false);
  expect(res.brokenAt).toEqual({ seq: 6, file: f.file, line: i + 1 });
  expect(res.problem).toMatch(/edited/);
});

test('an edited record in Redis is found', async () => {
  await f.append(20);
  await f.exporter().exportNow();
  await f.append(5);
  await rewriteRedis(23, false);
  const res = await verify();
  expect(res.ok).toBe(false);
  expect(res.brokenAt?.seq).toBe(23);
  expect(res.brokenAt?.streamId).toMatch(/^\d+-\d+$/);
  expect(res.problem).toMatch(/edited/);
});

test('a chain rewritten in Redis with recomputed hashes differs from the export', async () => {
  await f.append(20);
  await f.exporter().exportNow();
  await rewriteRedis(8, true);
  const res = await verify();
  expect(res.ok).toBe(false);
  expect(res.brokenAt?.seq).toBe(8);
  expect(res.problem).toMatch(/rewritten in Redis/);
});

test('a chain rewritten in Redis with recomputed hashes is found by the seal alone', async () => {
  await f.append(20);
  // The export file is down: the head is sealed in Redis all the same.
  await expect(brokenFileExporter().exportNow()).rejects.toThrow();
  expect(JSON.parse((await f.redis.get(f.keys.auditSeal('ops')))!)).toMatchObject({ seq: 20 });
  expect(await verify({ file: false })).toMatchObject({ ok: true, unsealed: 0 });
  await rewriteRedis(8, true);
  const res = await verify({ file: false });
  expect(res.ok).toBe(false);
  expect(res.brokenAt).toMatchObject({ seq: 20 });
  expect(res.problem).toMatch(/sealed at .* the chain was rewritten/);
  // Without the KEK the seal's MAC is not checked, but the mismatch still shows.
  expect((await verify({ file: false, key: null })).ok).toBe(false);
});

test('a seal forged without the KEK does not verify', async () => {
  await f.append(20);
  await expect(brokenFileExporter().exportNow()).rejects.toThrow();
  await rewriteRedis(8, true);
  // The attacker re-seals the rewritten head with a key of their own.
  const head = (await f.redis.get(f.keys.auditHead('ops')))!;
  const forged = makeSeal(deriveSealKey(randomBytes(32).toString('base64')), 'ops', 20, head.slice(3), new Date().toISOString());
  await f.redis.set(f.keys.auditSeal('ops'), JSON.stringify({ chain: 'ops', ...forged }));
  const res = await verify({ file: false });
  expect(res.ok).toBe(false);
  expect(res.problem).toMatch(/MAC that does not verify/);
});

test('a cut tail below the last seal is found (Redis)', async () => {
  await f.append(20);
  await expect(brokenFileExporter().exportNow()).rejects.toThrow();
  // Delete records 15..20 and move the head back so the chain looks whole.
  const stream = f.keys.auditStream('ops');
  const all = await f.redis.xrange(stream, '-', '+');
  await f.redis.xdel(stream, ...all.slice(14).map(([id]) => id));
  const r14 = JSON.parse(all[13]![1][1]!) as AuditRecord;
  await f.redis.set(f.keys.auditHead('ops'), `14:${r14.hash}`);
  const res = await verify({ file: false });
  expect(res.ok).toBe(false);
  expect(res.brokenAt?.seq).toBe(20);
  expect(res.problem).toMatch(/tail was cut after seq 14/);
});

test('a cut tail is found when the export file is cut too (the seal in Redis remembers)', async () => {
  await f.append(20);
  await f.exporter().exportNow();
  await trimChain(f.redis, f.keys, 'ops', { maxAgeDays: 0, maxRecords: 1000 }, Date.now() + 1000);
  // Someone who can write the file drops its last 5 records and the seal line after them.
  const text = readFileSync(f.file, 'utf8').trimEnd().split('\n');
  writeFileSync(f.file, `${text.slice(0, -6).join('\n')}\n`);
  const res = await verify();
  expect(res.ok).toBe(false);
  expect(res.brokenAt?.seq).toBe(20);
  expect(res.problem).toMatch(/neither in the export nor in Redis: the chain's tail was cut after seq 15/);
});

test('records after the last seal are unsealed, not broken', async () => {
  await f.append(10);
  await f.exporter().exportNow();
  await f.append(4);
  const res = await verify();
  expect(res).toMatchObject({ ok: true, records: 14, unsealed: 4, seals: { last: { seq: 10 } } });
  expect(Date.parse(res.unsealedSince!)).toBeGreaterThan(Date.parse(res.seals.last!.time) - 1000);
});

/** A pino logger whose lines are kept. */
function capturingLogger(): { logger: Logger; lines: () => Record<string, unknown>[] } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return {
    logger: pino({ level: 'warn' }, stream),
    lines: () =>
      chunks
        .join('')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}

test('the exporter re-hashes every record in a worker thread, and still reports an edited record in Redis', async () => {
  // Re-hashing on the event loop held it ~6 µs per record, 60,000 records every 30 s at 2,000 issuances/s.
  await f.append(600);
  await rewriteRedis(437, false);
  const log = capturingLogger();
  const exporter = f.exporter({ logger: log.logger });
  expect((await exporter.exportNow()).exported.get('ops')).toBe(600); // exported anyway: the file is the evidence
  expect(exporter.checker.checked).toEqual({ thread: 600, loop: 0 });
  const broken = log.lines().filter((l) => String(l.msg).includes('the chain in Redis is broken here'));
  // (rewriteRedis edits every record from seq 437 on)
  expect(broken.map((l) => l.seq)).toEqual(Array.from({ length: 164 }, (_, i) => 437 + i));
});

test('a record-check thread that cannot run: pages are checked on the event loop, the export goes on', async () => {
  await f.append(30);
  await rewriteRedis(12, false);
  const log = capturingLogger();
  const checker = new RecordChecker(log.logger, new URL('./no-such-worker.ts', import.meta.url));
  const raws = (await f.redis.xrange(f.keys.auditStream('ops'), '-', '+')).map(([, fields]) => fields[1]!);
  const checked = await checker.check(raws);
  expect(checked.map((c) => c?.hashOk)).toEqual(raws.map((_, i) => i + 1 < 12)); // edited from seq 12 on
  expect(checked.map((c) => c?.seq)).toEqual(raws.map((_, i) => i + 1));
  expect(checker.checked).toEqual({ thread: 0, loop: 30 });
  expect(log.lines().some((l) => String(l.msg).includes('record-check thread unavailable'))).toBe(true);
  // Later pages go straight to the loop.
  await checker.check(raws.slice(0, 5));
  expect(checker.checked).toEqual({ thread: 0, loop: 35 });
  await checker.close();
});
