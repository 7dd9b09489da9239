import type { Redis } from 'ioredis';
import type { Keys } from '../redis.ts';
import type { Logger } from '../logger.ts';
import { GENESIS, hashRecord, type AuditEvent, type AuditRecord } from './record.ts';

type Pending = { event: AuditEvent; time: string; resolve: () => void; reject: (e: unknown) => void };

/**
 * Appends hash-chained audit records to a Redis stream shared by every
 * instance. Each record carries the previous record's hash, so editing or
 * deleting one breaks the chain (`npm run audit:verify` finds it).
 *
 * Appends are batched: while one batch is being written, new records queue
 * up and go in the next one. A batch reads the chain head under WATCH, hashes
 * its records in order and commits them with the new head in one MULTI; if
 * another instance moved the head meanwhile, the batch is re-hashed and
 * retried. It needs its own connection because WATCH is per connection.
 */
export class AuditLog {
  private queue: Pending[] = [];
  private writing = false;
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
          this.logger.error({ err }, 'audit append failed');
          for (const p of batch) p.reject(err);
        }
      }
    } finally {
      this.writing = false;
    }
  }

  private async writeBatch(batch: Pending[]): Promise<AuditRecord[]> {
    for (let attempt = 0; attempt < 50; attempt++) {
      await this.redis.watch(this.keys.auditHead());
      const head = await this.redis.get(this.keys.auditHead());
      let [seq, prev] = head ? [Number(head.split(':')[0]), head.split(':')[1]!] : [0, GENESIS];
      const records: AuditRecord[] = [];
      const multi = this.redis.multi();
      for (const p of batch) {
        seq += 1;
        const base = { ...p.event, seq, time: p.time, prev };
        const record: AuditRecord = { ...base, hash: hashRecord(base) };
        records.push(record);
        multi.xadd(this.keys.auditStream(), '*', 'r', JSON.stringify(record));
        prev = record.hash;
      }
      multi.set(this.keys.auditHead(), `${seq}:${prev}`);
      const result = await multi.exec();
      if (result !== null) return records; // null: the head moved under us; re-read and re-hash
      await new Promise((r) => setTimeout(r, Math.random() * 5));
    }
    throw new Error('audit chain contention: gave up after 50 attempts');
  }

  /** Waits for queued records to be written (shutdown). */
  async flush(): Promise<void> {
    while (this.writing || this.queue.length > 0) await new Promise((r) => setTimeout(r, 5));
  }
}
