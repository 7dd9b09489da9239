/**
 * `npm run audit:verify`: walks every audit chain in Redis (BROKER_CONFIG's
 * redis.url and prefix) and names the first broken record. Exit 0 if intact.
 */
import { verifyAuditChain } from '../src/audit/verify.ts';
import { loadConfig } from '../src/config/load.ts';
import { silentLogger } from '../src/logger.ts';
import { createConnector } from '../src/redis/connection.ts';
import { Keys } from '../src/redis/keys.ts';

const config = loadConfig();
// The same connection code as the broker: one node, a Cluster or Sentinel.
const conns = createConnector(config.redis, { logger: silentLogger });
const redis = conns.command('jit-audit-verify');
const keys = new Keys(config.redis.prefix, config.redis.buckets);
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
await conns.close();
process.exit(broken ? 1 : 0);
