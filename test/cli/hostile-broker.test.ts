import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { ensureBuilt, JIT, NODE20 } from '../helpers/cli.ts';
import { type FakeBroker, send, startFakeBroker } from '../helpers/fake-broker.ts';

/**
 * A broker URL that answers something hostile (red team): the CLI must end
 * on its own, with exit code 3 (the broker failed), not hold whatever a
 * server sends in memory until the machine runs out.
 */
let fake: FakeBroker;
let url: string;
const MiB = Buffer.alloc(1 << 20, 'a');
const revoked: string[] = [];
const NOT_A_CREDENTIAL = {
  null: 'null',
  list: '[]',
  text: '"AKIA"',
  empty: '{}',
  'no-credentials': '{"leaseId":"l-1","taskId":"t","role":"r","provider":"aws","expiresAt":"2030-01-01T00:00:00Z"}',
  'credentials-text': '{"leaseId":"l-2","taskId":"t","role":"r","provider":"aws","expiresAt":"2030-01-01T00:00:00Z","credentials":"x"}',
};
/** A well-formed credential whose secret no environment variable can hold (a NUL byte). */
const NUL_SECRET = JSON.stringify({
  leaseId: 'l-nul',
  taskId: 't',
  role: 'orders-db',
  provider: 'vault',
  expiresAt: '2030-01-01T00:00:00Z',
  revocable: true,
  credentials: { username: 'u', password: 'hunter2\u0000tail', lease_id: 'database/creds/x/1' },
});

beforeAll(async () => {
  await ensureBuilt();
  fake = await startFakeBroker((req, res) => {
    if (req.url === '/v1/credentials') {
      // Something that is not a credential, chosen by the task id asked for.
      let body = '';
      req.on('data', (d: Buffer) => {
        body += d.toString();
      });
      req.on('end', () => {
        const taskId = JSON.parse(body).taskId as keyof typeof NOT_A_CREDENTIAL;
        const jwt = { leaseId: 'l-jwt', taskId, role: 'r', provider: 'jwt', expiresAt: '2030-01-01T00:00:00Z', revocable: true };
        const aws = { leaseId: 'l-aws', taskId, role: 'r', provider: 'aws', expiresAt: '2030-01-01T00:00:00Z', revocable: true };
        if (taskId === ('jwt-cred' as string))
          send(
            res,
            201,
            JSON.stringify({ ...jwt, credentials: { access_token: 'at.x.y', token_type: 'Bearer', expires_in: 60, scope: '' } }),
          );
        else if (taskId === ('aws-cred' as string))
          send(
            res,
            201,
            JSON.stringify({
              ...aws,
              credentials: { AccessKeyId: 'ASIAX', SecretAccessKey: 's', SessionToken: 't', Expiration: '2030-01-01T00:00:00Z' },
            }),
          );
        else send(res, 201, taskId === ('nul-secret' as string) ? NUL_SECRET : NOT_A_CREDENTIAL[taskId]);
      });
      return;
    }
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path === '/v1/tasks' || req.url?.startsWith('/v1/audit?action=loop')) {
      // A page that always names the same next page: a broken broker, or a hostile one filling the disk.
      const item = path === '/v1/tasks' ? { taskId: 't', agent: 'a', status: 'open' } : { seq: 1, hash: 'h', time: 't' };
      return send(res, 200, JSON.stringify({ items: [item], nextCursor: 'again' }));
    }
    if (req.url?.startsWith('/v1/audit')) {
      const reason = 'ok\u009b2J\u202ekcatta\u2028forged';
      const record = {
        seq: 1,
        time: new Date().toISOString(),
        actor: 'a',
        action: 'approval.decide',
        decision: 'allow',
        reason,
        hash: 'h',
      };
      return send(res, 200, JSON.stringify({ items: [record], nextCursor: null }));
    }
    if (req.method === 'DELETE') {
      revoked.push(req.url ?? '');
      return send(res, 202, JSON.stringify({ leaseId: (req.url ?? '').split('/').pop(), status: 'revoking' }));
    }
    const status = req.url?.startsWith('/v1/tasks/refused') ? 404 : 200;
    // An endless body, as fast as the client takes it.
    res.writeHead(status, { 'content-type': 'application/json' });
    const pump = () => {
      while (!res.destroyed && res.write(MiB)) {}
    };
    res.on('drain', pump);
    req.on('close', () => res.destroy());
    pump();
  });
  url = fake.url;
}, 120_000);
afterAll(() => fake?.close());

/** Runs jit on Node 20, killed after `killMs`; how it ended, how long it took, and its peak memory (ps). */
function run(args: string[], killMs: number): Promise<{ code: number | null; signal: string | null; ms: number; stderr: string }> {
  return new Promise((resolve) => {
    const started = performance.now();
    const child = spawn(NODE20, ['--max-old-space-size=4096', JIT, ...args], {
      env: { PATH: process.env.PATH, JIT_BROKER_URL: url, JIT_TOKEN: 'a.b.c' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const kill = setTimeout(() => child.kill('SIGKILL'), killMs);
    child.on('close', (code, signal) => {
      clearTimeout(kill);
      resolve({ code, signal, ms: performance.now() - started, stderr: stderr.slice(0, 2000) });
    });
  });
}

test.each([
  ['an answer', 'ok'],
  ['a refusal', 'refused'],
])(
  'an endless body in %s ends the CLI with exit 3 within moments, not at the machine’s memory limit',
  async (_what, id) => {
    const r = await run(['task', 'show', id], 25_000);
    // Before: still reading (gigabytes held) when killed at 25 s; the 15-s request timeout did not stop it.
    expect({ code: r.code, signal: r.signal }).toEqual({ code: 3, signal: null });
    expect(r.ms).toBeLessThan(15_000);
    expect(r.stderr).toMatch(/more than \d+ MiB/);
    expect(r.stderr.length).toBeLessThan(1000); // no echo of the body
  },
  60_000,
);

test.each(Object.keys(NOT_A_CREDENTIAL))(
  'credential_process: a 201 that is not a credential (%s) is exit 3 (the broker failed), not 2 (bad usage)',
  async (taskId) => {
    const r = await run(['cred', 'get', '--task', taskId, '--role', 'r', '--format', 'aws-process'], 20_000);
    // Before: exit 2, "Cannot read properties of undefined (reading 'AccessKeyId')" and the command's usage line.
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 3, stderr: expect.stringMatching(/not a credential/) });
    expect(r.stderr).not.toMatch(/usage:|Cannot read/);
  },
  30_000,
);

test('a malformed credential that names a lease: the lease is given back', async () => {
  revoked.length = 0;
  const r = await run(['cred', 'get', '--task', 'no-credentials', '--role', 'r', '--format', 'aws-process'], 20_000);
  expect(r.code).toBe(3);
  // A lease id was named: whatever it was, it is revoked rather than left to its TTL.
  expect(revoked).toEqual(['/v1/leases/l-1']);
});

test.each([
  ['a user name and password', 'http://ops:s3cret@127.0.0.1:9'],
  ['a query', 'http://127.0.0.1:9/?token=s3cret'],
  ['a fragment', 'http://127.0.0.1:9/#s3cret'],
])('a broker URL with %s is refused as bad usage (exit 2) without echoing the secret', async (_what, brokerUrl) => {
  const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
    const child = spawn(NODE20, [JIT, '--json', '--broker', brokerUrl, 'task', 'show', 'x'], {
      env: { PATH: process.env.PATH, JIT_TOKEN: 'a.b.c' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.on('close', (code) => resolve({ code, out }));
  });
  // Before: exit 3, "cannot reach the broker at http://ops:s3cret@127.0.0.1:9: ..." on stderr and in the --json body
  // (fetch refuses such a URL, so it never worked), or the query glued to every path ("...?token=s3cret/v1/tasks/x").
  expect(r.code).toBe(2);
  expect(r.out).toMatch(/broker_url|broker URL/);
  expect(r.out).not.toContain('s3cret');
});

test('audit tail --json escapes C1, bidi and line-separator characters as every other --json output does', async () => {
  const out = await new Promise<string>((resolve) => {
    const child = spawn(NODE20, [JIT, 'audit', 'tail', '--json', '--since', '1h', '--interval', '1'], {
      env: { PATH: process.env.PATH, JIT_BROKER_URL: url, JIT_TOKEN: 'a.b.c' },
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    let stdout = '';
    const kill = setTimeout(() => child.kill('SIGKILL'), 15_000);
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (stdout.includes('\n')) child.kill('SIGTERM');
    });
    child.on('close', () => {
      clearTimeout(kill);
      resolve(stdout);
    });
  });
  expect(out).toContain('approval.decide');
  // Before: U+009B (CSI), U+202E and U+2028 went to the terminal raw (JSON.stringify escapes C0 controls only).
  for (const c of ['\u009b', '\u202e', '\u2028']) expect([c, out.includes(c)]).toEqual([c, false]);
  // Still the same JSON value.
  expect(JSON.parse(out.split('\n')[0]!).reason).toBe('ok\u009b2J\u202ekcatta\u2028forged');
}, 30_000);

test.each([
  ['task list --all', ['task', 'list', '--all']],
  ['audit export', ['audit', 'export', '--action', 'loop']],
])(
  '%s: a page that names the same next page again ends with exit 3, not a loop without end',
  async (_what, args) => {
    const r = await run(args, 10_000);
    // Before: killed at 10 s, still asking for the same page (export: writing the same record to stdout for ever).
    expect({ code: r.code, signal: r.signal }).toEqual({ code: 3, signal: null });
    expect(r.stderr).toMatch(/same (page )?cursor/);
  },
  30_000,
);

test('jit exec: a credential the command cannot be started with is revoked, and its secret is not printed', async () => {
  revoked.length = 0;
  const r = await run(['exec', '--task', 'nul-secret', '--role', 'orders-db', '--', 'true'], 10_000);
  // Before: exit 3 "unexpected error: The property 'options.env['JIT_SECRET_PASSWORD']' must be a string without
  // null bytes. Received 'hunter2\x00tail'" (the password on stderr), and no DELETE: the lease lived on to its TTL.
  expect(r.code).toBe(126);
  expect(r.stderr).not.toMatch(/hunter2/);
  expect(r.stderr).toMatch(/cannot run true/);
  expect(revoked).toEqual(['/v1/leases/l-nul']);
}, 30_000);

test('audit export to stdout escapes them as tail --json does (the same JSON values)', async () => {
  const out = await new Promise<string>((resolve) => {
    const child = spawn(NODE20, [JIT, 'audit', 'export'], {
      env: { PATH: process.env.PATH, JIT_BROKER_URL: url, JIT_TOKEN: 'a.b.c' },
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.on('close', () => resolve(stdout));
  });
  expect(out).toContain('approval.decide');
  // Before: U+009B, U+202E and U+2028 reached the terminal raw.
  for (const c of ['\u009b', '\u202e', '\u2028']) expect([c, out.includes(c)]).toEqual([c, false]);
  expect(JSON.parse(out.split('\n')[0]!).reason).toBe('ok\u009b2J\u202ekcatta\u2028forged');
}, 30_000);

test.each([
  ['a jwt credential, the container endpoint being the broker', 'jwt-cred', 'BROKER'],
  ['an AWS credential, whatever the container endpoint', 'aws-cred', 'http://169.254.170.23/v1/credentials'],
])(
  'jit exec with %s: the command gets no AWS container identity (the JWT that mints more)',
  async (_what, taskId, uri) => {
    const identity = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2ln';
    const out = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
      const child = spawn(NODE20, [JIT, 'exec', '--task', taskId, '--role', 'r', '--', 'env'], {
        env: {
          PATH: process.env.PATH,
          JIT_BROKER_URL: url,
          JIT_TOKEN: identity,
          // The agent's set-up for the SDK's container provider (docs/providers/aws.md): its own identity.
          AWS_CONTAINER_CREDENTIALS_FULL_URI: uri === 'BROKER' ? `${url}/v1/aws/container-credentials/${taskId}/other-role` : uri,
          AWS_CONTAINER_AUTHORIZATION_TOKEN: `Bearer ${identity}`,
          AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: '/var/run/secrets/jwt',
        },
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      let stdout = '';
      child.stdout.on('data', (d: Buffer) => {
        stdout += d.toString();
      });
      child.on('close', (code) => resolve({ code, stdout }));
    });
    expect(out.code).toBe(0);
    expect(out.stdout).toMatch(/^JIT_LEASE_ID=/m);
    // Before: all three were passed on, so the command could mint credentials for any role of the task through the
    // broker's container endpoint (or read the identity itself), which jit exec removes JIT_TOKEN to prevent.
    expect(out.stdout).not.toContain(identity);
    expect(out.stdout).not.toMatch(/^AWS_CONTAINER_/m);
  },
  30_000,
);
