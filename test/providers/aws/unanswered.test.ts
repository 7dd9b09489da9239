import { expect, test } from '@jest/globals';
import { withRetry } from '../../../src/providers/aws/upstream.ts';
import { wasUnanswered } from '../../../src/providers/types.ts';

/** What an issuance failure says about whether the upstream may have done the call (credential-service). */
const sdkError = (o: { name?: string; code?: string; Code?: string; status?: number; fault?: string }) =>
  Object.assign(new Error(o.Code ?? o.code ?? o.name ?? 'x'), {
    name: o.name ?? 'Error',
    ...(o.code ? { code: o.code } : {}),
    ...(o.Code ? { Code: o.Code } : {}),
    ...(o.status ? { $metadata: { httpStatusCode: o.status } } : {}),
    ...(o.fault ? { $fault: o.fault } : {}),
  });

async function finalError(errors: Error[]): Promise<unknown> {
  let i = 0;
  try {
    await withRetry(
      async () => {
        throw errors[Math.min(i++, errors.length - 1)];
      },
      { attempts: errors.length, baseDelayMs: 1 },
    );
  } catch (err) {
    return err;
  }
  throw new Error('expected a failure');
}

const timeout = () => sdkError({ name: 'TimeoutError' });
const denied = () => sdkError({ Code: 'AccessDenied', status: 403, fault: 'client' });
const refused = () => sdkError({ code: 'ECONNREFUSED' });

test.each([
  ['a timeout', true, [timeout()]],
  ['a reset connection', true, [sdkError({ code: 'ECONNRESET' })]],
  ['a 5xx', true, [sdkError({ Code: 'InternalFailure', status: 500, fault: 'server' })]],
  ['a refused connection (never sent)', false, [refused()]],
  ['an unknown host (never sent)', false, [sdkError({ code: 'ENOTFOUND' })]],
  ['AccessDenied', false, [denied()]],
  ['a timeout, then AccessDenied on the retry', true, [timeout(), denied()]],
  ['a refused connection, then throttling', false, [refused(), sdkError({ Code: 'Throttling', status: 400, fault: 'client' })]],
] as const)('%s: may have been carried out = %p', async (_name, expected, errors) => {
  expect(wasUnanswered(await finalError([...errors]))).toBe(expected);
});
