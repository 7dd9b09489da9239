/**
 * `npm run audit:verify`: walks the audit chain in Redis (BROKER_CONFIG's
 * redis.url and prefix) and names the first broken record. Exit 0 if intact.
 */
import { Redis } from 'ioredis';
import { loadConfig } from '../src/config/load.ts';
import { verifyAuditChain } from '../src/audit/verify.ts';
import { Keys } from '../src/redis.ts';

const config = loadConfig();
const redis = new Redis(config.redis.url);
const res = await verifyAuditChain(redis, new Keys(config.redis.prefix));
await redis.quit();
if (res.ok) {
  console.log(`audit chain intact: ${res.records} records, head ${res.head}`);
  process.exit(0);
}
console.error(`audit chain BROKEN at record seq=${res.brokenAt.seq ?? '?'} (stream id ${res.brokenAt.streamId}): ${res.problem}`);
console.error(`${res.records} records read up to that point.`);
process.exit(1);
