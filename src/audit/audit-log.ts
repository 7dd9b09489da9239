import type { Redis } from 'ioredis';
import { luaScript } from '../lua.ts';
import type { Keys } from '../redis.ts';
import type { Logger } from '../logger.ts';
import { GENESIS, hashRecord, type AuditEvent, type AuditRecord } from './record.ts';

type Pending = { event: AuditEvent; time: string; resolve: () => void; reject: (e: unknown) => void };

/**
 * Appends the batch only if the chain head is still what the caller hashed
 * against (compare-and-set), so concurrent instances never fork the chain.
 * On a mismatch it returns the real head and nothing is written.
 */
const APPEND = `
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return cur end
for i = 3, #ARGV do redis.call('XADD', KEYS[2], '*', 'r', ARGV[i]) end
redis.call('SET', KEYS[1], ARGV[2])
return false`;
const runAppend = luaScript(APPEND);

/**
 * Appends hash-chained audit records to a Redis stream shared by every
 * instance. Each record carries the previous record's hash, so editing or
 * deleting one breaks the chain (`npm run audit:verify` finds it).
 *
 * Appends are batched: while one batch is being written, new records queue up
 * and go in the next one. A batch is hashed in order against the head this
 * instance last saw and written in one compare-and-set script (one round
 * trip); if another instance moved the head meanwhile, the batch is re-hashed
 * on the real head and retried.
 */
export class AuditLog {
  private queue: Pending[] = [];
  private writing = false;
  /** The chain head as this instance last saw it (`seq:hash`), '' when the chain is empty; undefined until read. */
  private head: string | undefined;
  private readonly redis: Redis;
  private readonly keys: Keys;
  private readonly logger: Logger;

  constructor(deps: { redis: Redis; keys: Keys; logger: Logger }) {
    this.redis = deps.redis;
    this.keys = deps.keys;
    this.logger = deps.logger.child({ audit: true });
  }

  /** Resolves once the record is durable in Redis; callers that hand out credentials wait for it. */
  append(event: AuditEvent): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ event, time: new Date().toISOString(), resolve, reject });
      if (!this.writing) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.writing = true;
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, 500);
        try {
          const records = await this.writeBatch(batch);
          for (const r of records) this.logger.info({ audit: r }, 'audit');
          for (const p of batch) p.resolve();
        } catch (err) {
          this.head = undefined;
          this.logger.error({ err }, 'audit append failed');
          for (const p of batch) p.reject(err);
        }
      }
    } finally {
      this.writing = false;
    }
  }

  private async writeBatch(batch: Pending[]): Promise<AuditRecord[]> {
    this.head ??= (await this.redis.get(this.keys.auditHead())) ?? '';
    for (let attempt = 0; attempt < 50; attempt++) {
      const expected: string = this.head!;
      let [seq, prev] = expected ? [Number(expected.split(':')[0]), expected.split(':')[1]!] : [0, GENESIS];
      const records: AuditRecord[] = [];
      for (const p of batch) {
        seq += 1;
        const base = { ...p.event, seq, time: p.time, prev };
        const record: AuditRecord = { ...base, hash: hashRecord(base) };
        records.push(record);
        prev = record.hash;
      }
      const next = `${seq}:${prev}`;
      const actual = (await runAppend(
        this.redis,
        2,
        this.keys.auditHead(),
        this.keys.auditStream(),
        expected,
        next,
        ...records.map((r) => JSON.stringify(r)),
      )) as string | null;
      if (actual === null) {
        this.head = next;
        return records;
      }
      this.head = actual; // another instance appended: re-hash on the real head
    }
    throw new Error('audit chain contention: gave up after 50 attempts');
  }

  /** Waits for queued records to be written (shutdown). */
  async flush(): Promise<void> {
    while (this.writing || this.queue.length > 0) await new Promise((r) => setTimeout(r, 5));
  }
}
