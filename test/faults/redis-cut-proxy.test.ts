import { connect } from 'node:net';
import { createHash } from 'node:crypto';
import { Redis } from 'ioredis';
import { redisCutProxy, within } from '../helpers/redis-cut-proxy.ts';
import { uniquePrefix } from '../helpers/broker.ts';

/**
 * The crash tests' Redis proxy (test/helpers/redis-cut-proxy.ts) must cut a script's EVALSHA however the bytes
 * arrive: a command whose SHA-1 was split across two reads slipped through and ran, and the test waited for the
 * cut for ever (test/topologies/shard-loss-killed.test.ts timed out at 330 s in CI).
 */
const body = `return redis.call('SET', KEYS[1], ARGV[1])`;
const sha = createHash('sha1').update(body).digest('hex');
const key = `${uniquePrefix('cut-proxy')}k`;
let admin: Redis;
beforeAll(async () => {
  admin = new Redis('redis://127.0.0.1:6379', { lazyConnect: true });
  await admin.connect();
  await admin.script('LOAD', body);
});
afterAll(async () => {
  await admin.del(key);
  admin.disconnect();
});

const command = (...args: string[]) => `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;

test.each([
  ['in one read', [] as number[]],
  ['split inside its SHA-1', [20]],
  ['split one character into its SHA-1', [1]],
  ['split before the command, then inside its SHA-1', [-5, 3]],
])('an EVALSHA sent %s is cut there: what came before it runs, it does not', async (_name, splits) => {
  const proxy = await redisCutProxy('redis://127.0.0.1:6379');
  try {
    const before = command('SET', key, 'before');
    const evalsha = command('EVALSHA', sha, '1', key, 'after');
    const bytes = Buffer.from(before + evalsha, 'latin1');
    const shaAt = bytes.indexOf(sha, 0, 'latin1');
    // Split points: relative to the SHA-1's start.
    const points = [0, ...splits.map((d) => shaAt + d), bytes.length];
    const cut = proxy.arm(sha);
    const socket = connect(Number(new URL(proxy.url).port), '127.0.0.1');
    await new Promise<void>((r) => socket.once('connect', () => r()));
    socket.setNoDelay(true);
    for (let i = 1; i < points.length; i++) {
      socket.write(bytes.subarray(points[i - 1], points[i]));
      // Each part its own read at the proxy.
      await new Promise((r) => setTimeout(r, 10));
    }
    await within(cut, 5000, 'the proxy never cut the EVALSHA');
    await new Promise((r) => setTimeout(r, 100));
    expect(await admin.get(key)).toBe('before');
    socket.destroy();
  } finally {
    await proxy.close();
  }
});

test('a read that ends in what only looks like the start of the SHA-1 is held back briefly, then forwarded', async () => {
  const proxy = await redisCutProxy('redis://127.0.0.1:6379');
  const client = new Redis(proxy.url, { lazyConnect: true });
  try {
    await client.connect();
    void proxy.arm(sha);
    // Ends in the SHA-1's first characters: nothing more comes, so it must go on after the hold.
    expect(await client.set(key, `x${sha.slice(0, 6)}`)).toBe('OK');
    expect(await admin.get(key)).toBe(`x${sha.slice(0, 6)}`);
  } finally {
    client.disconnect();
    await proxy.close();
  }
});
