import { Readable, Transform, pipeline } from 'node:stream';
import type { IAMClient } from '@aws-sdk/client-iam';
import type { STSClient } from '@aws-sdk/client-sts';

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
 * Bounds every attempt of every call on `client` as a whole: the SDK's `requestTimeout` (with
 * throwOnRequestTimeout) ends at the answer's head, after which the body is read with no deadline at all, so
 * an endpoint that sent headers and then stalled (or dripped a byte at a time) held the call forever: an
 * issuance hung, a revocation job held its worker slot and its deny lock, and `longestRunMs` (the window a
 * rotation trusts) was wrong. Runs between the handler and the deserializer (step deserialize, low priority):
 * the deadline starts when the attempt is sent and covers the body the deserializer then reads.
 */
export function boundAnswers(client: STSClient | IAMClient, timeoutMs: number): void {
  (client as STSClient).middlewareStack.add(
    (next) => async (args) => {
      const start = performance.now();
      const out = await next(args);
      const response = out.response as { body?: unknown };
      if (response?.body instanceof Readable) {
        response.body = bounded(response.body, timeoutMs - (performance.now() - start), timeoutMs);
      }
      return out;
    },
    { step: 'deserialize', priority: 'low', name: 'boundedAnswerMiddleware' },
  );
}
