// An exporter that dies (SIGKILL, its own) right after its first page is appended and fsynced, before the export
// marker moves: the crash test/audit/export-crash-resume.test.ts resumes from. argv[2]: JSON { prefix, buckets,
// file, kek, redisUrl }.
import { Redis } from 'ioredis';
import { AuditExporter } from '../../../src/audit/export.ts';
import { ExportFileWriter } from '../../../src/audit/export-file.ts';
import { deriveSealKey } from '../../../src/audit/seal.ts';
import { silentLogger } from '../../../src/logger.ts';
import { Keys } from '../../../src/redis/keys.ts';

const o = JSON.parse(process.argv[2]!) as { prefix: string; buckets: number; file: string; kek: string; redisUrl: string };
const append = ExportFileWriter.prototype.append;
ExportFileWriter.prototype.append = async function (lines) {
  await append.call(this, lines);
  process.kill(process.pid, 'SIGKILL');
  await new Promise(() => {});
};
const e = new AuditExporter({
  redis: new Redis(o.redisUrl),
  keys: new Keys(o.prefix, o.buckets),
  logger: silentLogger,
  file: o.file,
  maxFileBytes: 1024 * 1024,
  retention: { maxAgeDays: 30, maxRecords: 1_000_000 },
  sealKey: deriveSealKey(o.kek),
  audit: undefined,
  sealIntervalMs: 1000,
  retentionIntervalMs: 1000,
  now: Date.now,
});
await e.exportNow();
console.log('the export pass ended: it should have died');
process.exit(3);
