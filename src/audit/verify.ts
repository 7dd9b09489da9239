import type { RedisClient } from '../redis/scripts.ts';
import type { AuditChain, Keys } from '../redis/keys.ts';
import { GENESIS, hashRecord, type AuditRecord } from './record.ts';

export type VerifyResult =
  | { ok: true; records: number; head: string }
  | { ok: false; records: number; brokenAt: { streamId: string; seq?: number }; problem: string };

/**
 * Walks the whole audit stream and checks that every record's hash matches
 * its content, links to the previous record, and that the sequence has no
 * gaps, then that the stored head matches the last record (a deleted tail).
 * Names the first broken record.
 */
export async function verifyAuditChain(redis: RedisClient, keys: Keys, chain: AuditChain): Promise<VerifyResult> {
  let prev = GENESIS;
  let expectedSeq = 1;
  let count = 0;
  let cursor = '-';
  for (;;) {
    const page = await redis.xrange(keys.auditStream(chain), cursor, '+', 'COUNT', 1000);
    if (page.length === 0) break;
    for (const [id, fields] of page) {
      count += 1;
      const raw = fields[fields.indexOf('r') + 1];
      let r: AuditRecord;
      try {
        r = JSON.parse(raw ?? '') as AuditRecord;
      } catch {
        return { ok: false, records: count, brokenAt: { streamId: id }, problem: 'record is not valid JSON' };
      }
      const { hash, ...rest } = r;
      if (r.seq !== expectedSeq)
        return {
          ok: false,
          records: count,
          brokenAt: { streamId: id, seq: r.seq },
          problem: `expected seq ${expectedSeq}: a record is missing or out of order`,
        };
      if (r.prev !== prev)
        return {
          ok: false,
          records: count,
          brokenAt: { streamId: id, seq: r.seq },
          problem: "prev does not match the previous record's hash",
        };
      if (hashRecord(rest) !== hash)
        return {
          ok: false,
          records: count,
          brokenAt: { streamId: id, seq: r.seq },
          problem: "hash does not match the record's content (edited)",
        };
      prev = hash;
      expectedSeq += 1;
    }
    const lastId = page[page.length - 1]![0];
    cursor = `(${lastId}`;
  }
  const head = await redis.get(keys.auditHead(chain));
  const expectedHead = count === 0 ? null : `${expectedSeq - 1}:${prev}`;
  if (head !== expectedHead) {
    return {
      ok: false,
      records: count,
      brokenAt: { streamId: 'head', seq: expectedSeq - 1 },
      problem: `chain head ${head ?? '(none)'} does not match the last record: records were removed from the end`,
    };
  }
  return { ok: true, records: count, head: head ?? GENESIS };
}
