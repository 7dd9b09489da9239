import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { validateConfig } from '../../src/config/load.ts';
import { startAwsEmulator, type AwsEmulator, type EmulatedUser } from '../emulators/aws/index.ts';
import {
  AGENT,
  auditRecords,
  call,
  openAgentTask,
  startTestBroker,
  testRawConfig,
  uniquePrefix,
  type TestBroker,
} from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { capturingLogger } from '../helpers/log-capture.ts';
import { type MisbehavingUpstream, misbehavingUpstream } from '../helpers/misbehaving-upstream.ts';

/**
 * Red team: STS (or a proxy in front of it) failing the broker's GetCallerIdentity, which every credential of an
 * `iam-deny` role needs before its lease is recorded, with an answer that echoes secrets back:
 * - a proxy's own `Proxy-Authorization: Basic …` (never sent by the broker, so no exact match can catch it), and
 * - the request written as a presigned-style URL: the broker's session token in the query string, percent-encoded
 *   in lower case (`%2f`, which encodeURIComponent never writes), and a query signature (X-Amz-Signature) and
 *   X-Amz-Credential.
 * The caller's 502, the log and the audit log must carry none of them; and the 502 must be audited (before, a
 * failure with no lease yet left no record at all).
 */
const CONFIG_PATH = join(process.cwd(), 'config/test.yaml');
const issuer = new TestIssuer();
const SESSION_TOKEN = 'IQoJb3JpZ2luX2VjEBYaCXVzLWVhc3QtMSJGMEQCIGsessiontok+en/with=chars';
const PROXY_BASIC = Buffer.from('corp-proxy:Pr0xy-Passw0rd!').toString('base64');
const PRESIGNED_SIG = 'f'.repeat(8) + '0123456789abcdef'.repeat(3) + '9'.repeat(8);
const lowerEncoded = (s: string) => encodeURIComponent(s).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());

let emu: AwsEmulator;
let user: EmulatedUser;
let front: MisbehavingUpstream;
let t: TestBroker;
const capture = capturingLogger('info');

/** A 403 SignatureDoesNotMatch quoting what the proxy saw and the request as a presigned URL. */
function echoing(req: IncomingMessage, res: ServerResponse): void {
  const akid = /Credential=([^/]+)/.exec(String(req.headers.authorization))![1]!;
  const url =
    'https://sts.amazonaws.com/?Action=GetCallerIdentity&X-Amz-Algorithm=AWS4-HMAC-SHA256' +
    `&X-Amz-Credential=${akid}%2f20261203%2fus-east-1%2fsts%2faws4_request` +
    `&X-Amz-Security-Token=${lowerEncoded(String(req.headers['x-amz-security-token']))}` +
    `&X-Amz-Signature=${PRESIGNED_SIG}&X-Amz-SignedHeaders=host`;
  res.writeHead(403, { 'content-type': 'text/xml' });
  res.end(
    '<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code>' +
      `<Message>proxy got Proxy-Authorization: Basic ${PROXY_BASIC} for ${url.replaceAll('&', '&amp;')}</Message>` +
      '</Error><RequestId>r-echo</RequestId></ErrorResponse>',
  );
}

beforeAll(async () => {
  emu = await startAwsEmulator({ accountId: '111111111111' });
  user = emu.createUser('jit-broker');
  const role = emu.createRole('agent-echo', { maxSessionDuration: 3600, trust: [user.arn] });
  front = await misbehavingUpstream(emu.url);
  front.on((_req, body) => new URLSearchParams(body).get('Action') === 'GetCallerIdentity', echoing);
  const prefix = uniquePrefix('rt-aws-echo');
  const aws = {
    region: 'us-east-1',
    endpoint: front.url,
    credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey, sessionToken: SESSION_TOKEN },
    revocation: 'iam-deny',
    maxAttempts: 1,
    requestTimeoutMs: 2000,
  };
  const roles = { echo: { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 } };
  t = await startTestBroker('aws-echo', {
    prefix,
    issuer,
    loaded: validateConfig({ ...testRawConfig(issuer, prefix), providers: { aws }, roles }, {}, CONFIG_PATH),
    broker: { logger: capture.logger },
  });
});
afterAll(async () => {
  await t?.close();
  await front?.close();
  await emu?.stop();
});

/** Every form of every secret the echo carried. */
function secretsIn(text: string): string[] {
  const forms = [
    SESSION_TOKEN,
    encodeURIComponent(SESSION_TOKEN),
    lowerEncoded(SESSION_TOKEN),
    PROXY_BASIC,
    PRESIGNED_SIG,
    user.accessKeyId,
    user.secretAccessKey,
  ];
  return forms.filter((f) => text.includes(f));
}

test('GetCallerIdentity failing with an echo: the 502, the log and the audit record carry no secret; the failure is audited once a minute', async () => {
  const taskId = 't-echo';
  await openAgentTask(t, taskId, [{ role: 'echo', scopes: ['s3:GetObject'] }]);
  const ask = () => call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'echo' });
  const r = await ask();
  expect([r.status, r.body.code]).toEqual([502, 'upstream_auth_failed']);
  expect(secretsIn(JSON.stringify(r.body))).toEqual([]);

  // The log says what failed (the AWS message, scrubbed), with no secret.
  const logged = JSON.stringify(capture.lines);
  expect(logged).toContain('proxy got Proxy-Authorization');
  expect(secretsIn(logged)).toEqual([]);

  // Audited like a failed issuance, though no lease exists yet: no leaseId.
  const { redis, keys } = t.broker.deps;
  const fails = (await auditRecords(redis, keys)).filter((a) => a.action === 'credential.fail');
  expect(fails).toHaveLength(1);
  expect(fails[0]).toMatchObject({ decision: 'error', reason: 'upstream_auth_failed', taskId, role: 'echo' });
  expect(fails[0]!.leaseId).toBeUndefined();
  expect(secretsIn(JSON.stringify(fails[0]))).toEqual([]);

  // Repeats within the minute fold into one record (as repeated denials do): a caller retrying cannot grow the log.
  for (let i = 0; i < 3; i++) expect((await ask()).status).toBe(502);
  expect((await auditRecords(redis, keys)).filter((a) => a.action === 'credential.fail')).toHaveLength(1);
  await t.broker.deps.audit.flushFolds(true);
  const after = (await auditRecords(redis, keys)).filter((a) => a.action === 'credential.fail');
  expect(after.map((a) => a.count)).toEqual([undefined, 3]);
  expect(secretsIn(JSON.stringify(capture.lines))).toEqual([]);
}, 30_000);
