/**
 * Makes sure a Redis answers at REDIS_URL (default redis://127.0.0.1:6379).
 * On a fresh machine nothing may be running: for a local URL we start
 * `redis-server` (in-memory, no persistence) and wait for it. Used by
 * `npm start`, `npm test` and CI.
 */
import { spawnSync } from 'node:child_process';
import { Redis } from 'ioredis';

const url = new URL(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
const host = url.hostname || '127.0.0.1';
const port = Number(url.port || 6379);

async function ping(): Promise<boolean> {
  const r = new Redis({ host, port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 1000 });
  r.on('error', () => {});
  try {
    await r.connect();
    return (await r.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    r.disconnect();
  }
}

if (await ping()) process.exit(0);
if (!['127.0.0.1', 'localhost', '::1', '[::1]'].includes(host)) {
  console.error(`ensure-redis: no Redis answers at ${url.href}, and it is not local, so it cannot be started here.`);
  process.exit(1);
}
console.error(`ensure-redis: nothing answers on ${host}:${port}; starting redis-server`);
const started = spawnSync(
  'redis-server',
  ['--daemonize', 'yes', '--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no'],
  { stdio: 'inherit' },
);
if (started.error || started.status !== 0) {
  console.error('ensure-redis: could not start redis-server. Install it with `apt-get install -y redis-server` (Debian/Ubuntu).');
  process.exit(1);
}
for (let i = 0; i < 50; i++) {
  if (await ping()) process.exit(0);
  await new Promise((r) => setTimeout(r, 100));
}
console.error('ensure-redis: redis-server did not answer within 5 s');
process.exit(1);
