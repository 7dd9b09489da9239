/**
 * `npm run audit:verify`: walks every audit chain in Redis (BROKER_CONFIG's
 * redis.url and prefix) and names the first broken record. Exit 0 if intact.
 */
import { Redis } from 'ioredis';
import { verifyAuditChain } from '../src/audit/verify.ts';
import { loadConfig } from '../src/config/load.ts';
import { Keys } from '../src/redis/keys.ts';

const config = loadConfig();
if (config.redis.url === undefined) throw new Error('audit:verify supports redis.url only for now');
const redis = new Redis(config.redis.url);
const keys = new Keys(config.redis.prefix);
let broken = false;
for (const chain of keys.auditChains()) {
  const res = await verifyAuditChain(redis, keys, chain);
  if (res.ok) {
    if (res.records > 0) console.log(`chain ${chain}: intact, ${res.records} records, head ${res.head}`);
    continue;
  }
  broken = true;
  console.error(`chain ${chain}: BROKEN at record seq=${res.brokenAt.seq ?? '?'} (stream id ${res.brokenAt.streamId}): ${res.problem}`);
}
await redis.quit();
process.exit(broken ? 1 : 0);
