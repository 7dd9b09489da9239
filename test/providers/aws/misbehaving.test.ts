import { afterAll, afterEach, beforeAll, describe, expect, test } from '@jest/globals';
import type { IncomingMessage } from 'node:http';
import { BrokerError, RetryableUpstreamError } from '../../../src/errors.ts';
import type { AwsProvider } from '../../../src/providers/aws/provider.ts';
import { wasUnanswered } from '../../../src/providers/types.ts';
import { hugeBody, type MisbehavingUpstream, misbehavingUpstream, stallBody } from '../../helpers/misbehaving-upstream.ts';
import { awsWorld, type AwsWorld, issueRequest, leaseFor, roleConfig } from './helpers.ts';

/**
 * STS and IAM (or whatever stands in front of them) misbehaving after the answer's head: every call still
 * ends within requestTimeoutMs per attempt, and no answer is read past what an STS or IAM answer can be.
 */
const TIMEOUT_MS = 800;
const ATTEMPTS = 2;
/** Every attempt at its deadline, and the backoff between them (retryBaseDelayMs 5), with room for a busy machine. */
const BOUND_MS = ATTEMPTS * TIMEOUT_MS + 1500;
const action = (name: string) => (_req: IncomingMessage, body: string) => new URLSearchParams(body).get('Action') === name;

let w: AwsWorld;
let front: MisbehavingUpstream;
let p: AwsProvider;
beforeAll(async () => {
  w = await awsWorld('misbehaving');
  front = await misbehavingUpstream(w.emu.url);
  p = w.makeProvider({ endpoint: front.url, requestTimeoutMs: TIMEOUT_MS, maxAttempts: ATTEMPTS, revocationVerifySeconds: 1 });
});
afterAll(async () => {
  await front.close();
  await w.close();
});
afterEach(() => front.clear());

async function timed(work: Promise<unknown>): Promise<{ ms: number; err: Error & { status?: number; code?: string } }> {
  const t0 = performance.now();
  try {
    await work;
  } catch (err) {
    return { ms: performance.now() - t0, err: err as Error & { status?: number; code?: string } };
  }
  throw new Error('expected a rejection');
}

describe('an STS answer that never ends', () => {
  test('AssumeRole: headers, then nothing: 502 at the deadline, marked as possibly carried out', async () => {
    front.on(action('AssumeRole'), stallBody('text/xml', '<AssumeRoleResponse>'));
    const { ms, err } = await timed(p.issue(issueRequest(roleConfig(w.role.arn))));
    expect(err).toBeInstanceOf(BrokerError);
    expect(err).toMatchObject({ status: 502, code: 'upstream_unavailable' });
    expect(wasUnanswered(err.cause)).toBe(true);
    expect(ms).toBeLessThan(BOUND_MS);
    expect(front.matched).toBe(ATTEMPTS);
  });

  test('AssumeRole: headers, then a byte every 100 ms: 502 at the deadline, not when the drip stops', async () => {
    front.on(action('AssumeRole'), (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/xml' });
      res.write('<AssumeRoleResponse>');
      const t = front.every(100, () => res.write(' '));
      res.on('close', () => clearInterval(t));
    });
    const { ms, err } = await timed(p.issue(issueRequest(roleConfig(w.role.arn))));
    expect(err).toMatchObject({ status: 502, code: 'upstream_unavailable' });
    expect(ms).toBeLessThan(BOUND_MS);
  });
});

describe('an IAM answer that never ends, during revocation', () => {
  test('the deny write: retryable at the deadline, then revoked once IAM answers', async () => {
    const role = roleConfig(w.role.arn);
    const req = issueRequest(role);
    const out = await p.issue(req);
    const lease = leaseFor(req, out.handle, out.expiresAt);
    front.on(action('PutRolePolicy'), stallBody('text/xml', '<PutRolePolicyResponse>'));
    const { ms, err } = await timed(p.revoke(lease, role, { reason: 'revoked_by_caller' }));
    expect(err).toBeInstanceOf(RetryableUpstreamError);
    expect(ms).toBeLessThan(BOUND_MS * 2);
    front.clear();
    await p.revoke(lease, role, { reason: 'revoked_by_caller' });
  });
});

describe('an STS answer too large to be one', () => {
  test('100 MiB: the call fails 502 having read no more than the cap', async () => {
    let sent = 0;
    front.on(action('AssumeRole'), (req, res, body) => {
      const write = res.write.bind(res) as (c: Buffer) => boolean;
      res.write = ((c: Buffer) => {
        sent += c.length;
        return write(c);
      }) as typeof res.write;
      hugeBody('text/xml', 100)(req, res, body);
    });
    const { err } = await timed(p.issue(issueRequest(roleConfig(w.role.arn))));
    expect(err).toMatchObject({ status: 502 });
    await new Promise((r) => setTimeout(r, 200));
    // The cap is 1 MiB; the sockets' buffers on both sides add a few MiB at most.
    expect(sent).toBeGreaterThan(0);
    expect(sent).toBeLessThan(20 * 1024 * 1024);
  });
});

describe('an AWS error that echoes what the broker sent', () => {
  const SESSION_TOKEN = 'FwoGZXIvYXdzEBYaDSessionTokenSecret+part/with=chars';
  /** Answers 403 with an STS error whose message repeats the request's session token, key id and signature. */
  const echoing = (req: IncomingMessage, res: import('node:http').ServerResponse) => {
    res.writeHead(403, { 'content-type': 'text/xml' });
    res.end(
      '<ErrorResponse><Error><Type>Sender</Type><Code>InvalidClientTokenId</Code>' +
        `<Message>bad token ${String(req.headers['x-amz-security-token'])} ` +
        `(url-encoded ${encodeURIComponent(String(req.headers['x-amz-security-token']))}) ` +
        `for ${String(req.headers.authorization)}</Message></Error><RequestId>r-1</RequestId></ErrorResponse>`,
    );
  };

  test('on session credentials: the token, the key id and the signature stay out of the error and its cause', async () => {
    const onSession = w.makeProvider({
      endpoint: front.url,
      requestTimeoutMs: TIMEOUT_MS,
      maxAttempts: 1,
      credentials: { accessKeyId: w.user.accessKeyId, secretAccessKey: w.user.secretAccessKey, sessionToken: SESSION_TOKEN },
    });
    front.on(action('AssumeRole'), echoing);
    const { err } = await timed(onSession.issue(issueRequest(roleConfig(w.role.arn))));
    const cause = err.cause as Error & Record<string, unknown>;
    const everything = JSON.stringify({
      m: err.message,
      cm: cause?.message,
      s: cause?.stack,
      c: cause,
      r: String((cause?.$response as { body?: unknown } | undefined)?.body ?? ''),
    });
    expect(everything).toContain('bad token [redacted]');
    expect(everything).not.toContain(SESSION_TOKEN);
    expect(everything).not.toContain(encodeURIComponent(SESSION_TOKEN));
    expect(everything).not.toContain(w.user.accessKeyId);
    expect(everything).not.toMatch(/Signature=[0-9a-f]{16}/);
  });
});
