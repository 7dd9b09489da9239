import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { AuditLog } from '../../src/audit/audit-log.ts';
import { AuditExporter, type AuditExporterOptions } from '../../src/audit/export.ts';
import { exportFiles } from '../../src/audit/export-file.ts';
import type { AuditEvent } from '../../src/audit/record.ts';
import { deriveSealKey } from '../../src/audit/seal.ts';
import { writeMarks } from '../../src/ops/bucket-marks.ts';
import { silentLogger } from '../../src/logger.ts';
import { type AuditChain, Keys } from '../../src/redis/keys.ts';
import { dropPrefix, REDIS_URL, uniquePrefix } from '../helpers/broker.ts';

/** A prefix with an audit log, an export file and a seal key, as the broker wires them (without the broker). */
export interface AuditFixture {
  prefix: string;
  keys: Keys;
  redis: Redis;
  log: AuditLog;
  dir: string;
  file: string;
  kek: string;
  sealKey: Buffer;
  /** An exporter on its own connection (several may run at once). */
  exporter(opts?: Partial<AuditExporterOptions>): AuditExporter;
  /** Appends n records to the ops chain (or to the bucket of `taskId`). */
  append(n: number, taskId?: string, extra?: Partial<AuditEvent>): Promise<void>;
  /** Every line of every export file, parsed, oldest first. */
  lines(): Promise<Record<string, any>[]>;
  close(): Promise<void>;
}

export async function auditFixture(name: string): Promise<AuditFixture> {
  const prefix = uniquePrefix(name);
  const keys = new Keys(prefix, 4);
  const redis = new Redis(REDIS_URL);
  const conns: Redis[] = [redis];
  const conn = () => {
    const c = new Redis(REDIS_URL);
    conns.push(c);
    return c;
  };
  // The broker writes this marker once per dataset; exports wait for it (see ops/recovery.ts).
  await redis.set(keys.epoch(), 'test');
  // And each bucket's: appends to a bucket's empty chain wait for it (see ops/bucket-marks.ts).
  await writeMarks(redis, keys, 'test');
  const log = new AuditLog({ redis: conn(), keys, logger: silentLogger, taskIndexMs: 60_000, guardEpoch: true });
  const dir = mkdtempSync(join(tmpdir(), 'jit-audit-'));
  const file = join(dir, 'export', 'audit.jsonl');
  const kek = randomBytes(32).toString('base64');
  const sealKey = deriveSealKey(kek);
  const exporters: AuditExporter[] = [];
  let n = 0;
  return {
    prefix,
    keys,
    redis,
    log,
    dir,
    file,
    kek,
    sealKey,
    exporter(opts = {}) {
      const e = new AuditExporter({
        redis: conn(),
        keys,
        logger: silentLogger,
        file,
        maxFileBytes: 1024 * 1024,
        retention: { maxAgeDays: 30, maxRecords: 1_000_000 },
        sealKey,
        audit: (e) => log.append(e),
        sealIntervalMs: 1000,
        retentionIntervalMs: 1000,
        now: Date.now,
        ...opts,
      });
      exporters.push(e);
      return e;
    },
    async append(count, taskId, extra = {}) {
      await log.appendAll(
        Array.from({ length: count }, () => {
          n += 1;
          return {
            action: 'credential.issue' as const,
            actor: `spiffe://dev.local/agent/${n}`,
            decision: 'allow' as const,
            leaseId: `l${n}`,
            ...(taskId ? { taskId } : {}),
            ...extra,
          };
        }),
      );
    },
    async lines() {
      const out: Record<string, any>[] = [];
      for (const f of await exportFiles(file)) {
        for (const l of readFileSync(f, 'utf8').split('\n')) {
          try {
            if (l) out.push(JSON.parse(l));
          } catch {
            out.push({ unparsable: l });
          }
        }
      }
      return out;
    },
    async close() {
      await Promise.all(exporters.map((e) => e.close()));
      await log.flush();
      await Promise.all(conns.map((c) => c.quit()));
      await dropPrefix(prefix);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The records of `chain` in the export, in file order, duplicates included. */
export function recordsOf(lines: Record<string, any>[], chain: AuditChain): Record<string, any>[] {
  return lines.filter((l) => l.record && l.chain === chain).map((l) => l.record);
}
