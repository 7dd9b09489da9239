/**
 * The bare minimum one issuance needs, without the broker: verify the agent's
 * ES256 JWT-SVID (jose, no cache), sign an ES256 token, one Redis write and
 * one BullMQ add. Run with 64 in flight like the HTTP load.
 */
import { generateKeyPairSync, sign } from 'node:crypto';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { importJWK, jwtVerify } from 'jose';
import { BenchIssuer } from './setup.ts';

export async function measureReference(opts: { redisUrl: string; seconds: number }): Promise<{ perSecond: number }> {
  const issuer = new BenchIssuer();
  const token = issuer.svid('/agent/ref');
  const key = await importJWK({ ...issuer.bundle[0], use: undefined } as never, 'ES256');
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const redis = new Redis(opts.redisUrl);
  // BullMQ leaves a connection it was handed open on close: kept here to be closed below.
  const queueConnection = new Redis(opts.redisUrl, { maxRetriesPerRequest: null });
  const queue = new Queue('reference', { connection: queueConnection, prefix: 'bench-ref' });
  let done = 0;
  let i = 0;
  const until = Date.now() + opts.seconds * 1000;
  const one = async () => {
    await jwtVerify(token, key, { audience: 'jit-broker', algorithms: ['ES256'] });
    const id = `r${i++}`;
    const payload = Buffer.from(JSON.stringify({ sub: 'x', jti: id, exp: Math.floor(Date.now() / 1000) + 600 })).toString('base64url');
    sign('sha256', Buffer.from(`eyJhbGciOiJFUzI1NiJ9.${payload}`), { key: privateKey, dsaEncoding: 'ieee-p1363' });
    await redis.set(`bench-ref:lease:${id}`, payload, 'EX', 600);
    await queue.add('x', { id }, { jobId: `j-${id}`, delay: 600_000, removeOnComplete: true });
    done += 1;
  };
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (Date.now() < until) await one();
    }),
  );
  await queue.obliterate({ force: true }).catch(() => {});
  await queue.close();
  queueConnection.disconnect();
  await redis.quit();
  return { perSecond: Math.round(done / opts.seconds) };
}
