import { Readable, Transform, pipeline } from 'node:stream';
import type { IAMClient } from '@aws-sdk/client-iam';
import type { STSClient } from '@aws-sdk/client-sts';
import { scrubEcho } from '../echo-scrub.ts';
import type { AwsClock } from './aws-clock.ts';

/**
 * The most of one STS or IAM answer the broker reads. Every answer the broker asks for (credentials, a role,
 * an inline policy of at most 10,240 characters, a page of keys) is a few KiB; the SDK reads a whole body into
 * memory before parsing it, so without a cap an endpoint answering 100 MiB held 100 MiB (and more) per call.
 */
export const MAX_AWS_ANSWER_BYTES = 1024 * 1024;

function failure(message: string, fields: { name?: string; code: string }): Error {
  return Object.assign(new Error(message), fields);
}

/**
 * `body` as read through a meter: fails once more than MAX_AWS_ANSWER_BYTES came, or when `remainingMs` ends
 * before the body did. Failing destroys the upstream response too (pipeline), so its socket is let go.
 */
function bounded(body: Readable, remainingMs: number, timeoutMs: number): Readable {
  let size = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      size += chunk.length;
      if (size > MAX_AWS_ANSWER_BYTES)
        cb(failure(`the answer exceeds ${MAX_AWS_ANSWER_BYTES} bytes`, { code: 'ERR_AWS_ANSWER_TOO_LARGE' }));
      else cb(null, chunk);
    },
  });
  // The name and code the SDK's own request timeout gives (upstream.ts classifies it: unavailable, maybe done).
  const timer = setTimeout(
    () =>
      meter.destroy(
        failure(`the answer did not end within the ${timeoutMs} ms requestTimeout`, { name: 'TimeoutError', code: 'ETIMEDOUT' }),
      ),
    Math.max(1, remainingMs),
  );
  pipeline(body, meter, () => clearTimeout(timer));
  return meter;
}

/**
 * What a request carries that must not come back in an error: the session token (X-Amz-Security-Token, sent
 * when the broker runs on session credentials), the Authorization header (a signature is good for replaying
 * that request for minutes), its signature and the access key id it names. The encodings an echo may write
 * them in, and secrets known only by their name (a proxy's Proxy-Authorization), are scrubEcho's.
 */
function secretsOf(headers: Record<string, string | undefined>): string[] {
  const header = (name: string) => Object.entries(headers).find(([k]) => k.toLowerCase() === name)?.[1];
  const out: string[] = [];
  const token = header('x-amz-security-token');
  if (token) out.push(token);
  const auth = header('authorization');
  if (auth) {
    out.push(auth);
    for (const m of auth.matchAll(/(?:Credential=([^/,\s]+)|Signature=([0-9a-f]+))/g)) out.push(m[1] ?? m[2]!);
  }
  return out.filter((x) => x.length >= 8);
}

/**
 * A failed answer's body, read whole (it is bounded above) and given back with every secret the request
 * carried replaced: the SDK makes the error's message (and `Error.Message`) of it, which the error's `cause`
 * carries to the log, and an endpoint or proxy that echoes its input would have put the broker's session token
 * there. A success is passed on as it streams (credentials are in it, legitimately).
 */
async function scrubbedBody(body: Readable, secrets: string[]): Promise<Readable> {
  const chunks: Buffer[] = [];
  for await (const c of body) chunks.push(Buffer.from(c as Buffer));
  return Readable.from([Buffer.from(scrubEcho(Buffer.concat(chunks).toString('utf8'), secrets))]);
}

/**
 * Bounds every attempt of every call on `client` as a whole: the SDK's `requestTimeout` (with
 * throwOnRequestTimeout) ends at the answer's head, after which the body is read with no deadline at all, so
 * an endpoint that sent headers and then stalled (or dripped a byte at a time) held the call forever: an
 * issuance hung, a revocation job held its worker slot and its deny lock, and `longestRunMs` (the window a
 * rotation trusts) was wrong. A failed answer never repeats a secret the request carried (`scrubbedBody`). Each
 * answer's `Date` goes to `clock`. Runs between the handler and the deserializer (step deserialize, low priority):
 * the deadline starts when the attempt is sent and covers the body the deserializer then reads.
 */
export function boundAnswers(client: STSClient | IAMClient, timeoutMs: number, clock?: AwsClock): void {
  (client as STSClient).middlewareStack.add(
    (next) => async (args) => {
      const start = performance.now();
      const out = await next(args);
      const response = out.response as { body?: unknown; statusCode?: number; headers?: Record<string, string | undefined> };
      // Every answer of AWS's, failures included, says AWS's time (aws-clock.ts). Only AWS's: an answer without
      // its request id (a proxy's or a load balancer's error page, on a clock of its own) would drag the bound down
      // for hours, moving agent cut-offs early by up to clockSkewSeconds.
      const h = response?.headers ?? {};
      if (h['x-amzn-requestid'] || h['x-amz-request-id']) clock?.observe(h.date, start);
      if (response?.body instanceof Readable) {
        response.body = bounded(response.body, timeoutMs - (performance.now() - start), timeoutMs);
        if ((response.statusCode ?? 0) >= 300) {
          const headers = (args.request as { headers?: Record<string, string | undefined> }).headers ?? {};
          response.body = await scrubbedBody(response.body as Readable, secretsOf(headers));
        }
      }
      return out;
    },
    { step: 'deserialize', priority: 'low', name: 'boundedAnswerMiddleware' },
  );
}
