import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { ensureBuilt, JIT, NODE20 } from '../helpers/cli.ts';
import { type FakeBroker, startFakeBroker, send as answer } from '../helpers/fake-broker.ts';

/**
 * What the CLI makes of answers a real broker may send but the happy path never shows (a secret holding
 * any character a shell can hold) and of answers no broker should send (`[]`, `{}`): found by a red team.
 */
let fake: FakeBroker;
let url: string;
const revoked: string[] = [];

/** A Vault password with what a secret may hold: NBSP, newlines, ESC, quotes, C1, U+2028, shell syntax. */
const ODD = 'p\u00a0w\nline2\u001b[31m it\'s "q" \\ $(echo no) `echo no` $HOME\r\t\u007f\u009b\u2028é😀\n';
const credential = (leaseId: string, password: string) =>
  JSON.stringify({
    leaseId,
    taskId: 't',
    role: 'orders-db',
    provider: 'vault',
    expiresAt: '2030-01-01T00:00:00Z',
    revocable: true,
    credentials: { username: "o'brien", password, lease_id: 'database/creds/x/1', lease_duration: 60 },
  });
/** Not a lease, not evidence: what a wrong URL, a proxy or a broken broker may answer with 200. */
const GARBAGE: Record<string, string> = {
  list: '[]',
  empty: '{}',
  null: 'null',
  text: '"x"',
  'no-chain': '{"task":{},"audit":{"items":[]}}',
};
/** One item of each list, as the broker answers it. */
const TASK = { taskId: 't-1', agent: 'spiffe://x/a', tenant: 'x', status: 'open', expiresAt: '2030-01-01T00:00:00Z', grants: [] };
const APPROVAL = {
  approvalId: 'a-1',
  taskId: 't-1',
  role: 'r',
  scopes: [],
  agent: 'a',
  status: 'pending',
  requestedAt: '2030-01-01T00:00:00Z',
};
const ITEMS: Record<string, unknown[]> = {
  '/v1/tasks': [TASK],
  '/v1/approvals': [APPROVAL],
  '/v1/audit': [],
  '/v1/admin/quarantine': [{ agent: 'spiffe://x/*', reason: 'r', since: '2030-01-01T00:00:00Z', by: 'admin' }],
  '/v1/tasks/t-1/leases': [{ leaseId: 'l-1', role: 'r', status: 'active', expiresAt: '2030-01-01T00:00:00Z' }],
};
/** What `GET /v1/admin/audit/seals` answers (a test sets it). */
let seals = '{"maxSealAgeSeconds":300,"chains":[]}';
/** Evidence of task `chain` (the id asked for: the client checks the answer is about it), its chain that word. */
const evidence = (chain: string) =>
  JSON.stringify({ task: { taskId: chain }, tree: [], leases: [], audit: { items: [], nextCursor: null }, chain });

beforeAll(async () => {
  await ensureBuilt();
  fake = await startFakeBroker((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const send = (status: number, body: string) => answer(res, status, body);
    if (req.method === 'DELETE') {
      revoked.push(path);
      return send(202, JSON.stringify({ leaseId: path.split('/').pop(), status: 'revoking' }));
    }
    if (path === '/v1/credentials') {
      let body = '';
      req.on('data', (d: Buffer) => {
        body += d.toString();
      });
      req.on('end', () => {
        const taskId = JSON.parse(body).taskId as string;
        send(201, taskId === 'nul' ? credential('l-nul', 'hunter2\u0000tail') : credential('l-odd', ODD));
      });
      return;
    }
    const lease = /^\/v1\/leases\/([^/]+)$/.exec(path)?.[1];
    if (lease)
      return send(
        200,
        GARBAGE[lease] ?? JSON.stringify({ leaseId: lease, role: 'r', status: 'active', expiresAt: '2030-01-01T00:00:00Z' }),
      );
    const task = /^\/v1\/tasks\/([^/]+)\/evidence$/.exec(path)?.[1];
    if (task) return send(200, GARBAGE[task] ?? evidence(task));
    // A list page: `--cursor` names the garbage to answer; `then-<garbage>` a real page whose next page is that.
    const items = ITEMS[path];
    if (items) {
      const cursor = new URL(req.url ?? '/', 'http://x').searchParams.get('cursor') ?? '';
      const then = /^then-(.+)$/.exec(cursor)?.[1] ?? null;
      return send(200, GARBAGE[cursor] ?? JSON.stringify({ items, nextCursor: then }));
    }
    if (path === '/v1/admin/audit/seals') return send(200, seals);
    const shown = /^\/v1\/(tasks|approvals)\/([^/]+)$/.exec(path);
    if (shown)
      return send(200, GARBAGE[shown[2]!] ?? JSON.stringify(shown[1] === 'tasks' ? { ...TASK, taskId: shown[2], leases: [] } : APPROVAL));
    send(404, '{"type":"about:blank","title":"Not Found","status":404,"detail":"no such route","code":"not_found"}');
  });
  url = fake.url;
}, 120_000);
afterAll(() => fake?.close());

const ENV = () => ({ PATH: process.env.PATH, JIT_BROKER_URL: url, JIT_TOKEN: 'a.b.c', NODE20, JIT });

/** Runs `file args` with the broker's env; stdout as bytes. */
function run(file: string, args: string[]): Promise<{ code: number | null; stdout: Buffer; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(file, args, { env: ENV(), stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const kill = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('close', (code) => {
      clearTimeout(kill);
      resolve({ code, stdout: Buffer.concat(out), stderr });
    });
  });
}
const jit = (args: string[]) => run(NODE20, [JIT, ...args]);
/**
 * Several runs at once (the fake broker answers each request alone, from its path and query), results in the
 * order asked: a case's runs need not wait on each other's Node start-up.
 */
const jitAll = (runs: string[][]) => Promise.all(runs.map(jit));

test.each(['bash', 'sh'])(
  'cred get --format env, eval’d by %s: every variable holds exactly the bytes of the secret',
  async (shell) => {
    const r = await run(shell, [
      '-c',
      'eval "$("$NODE20" "$JIT" cred get --task t --role orders-db --format env)" && printf "%s\\0%s" "$JIT_SECRET_PASSWORD" "$JIT_SECRET_USERNAME"',
    ]);
    // Before: NBSP, ESC, DEL, C1, U+2028 and CR came back as the literal text \u00a0, \u001b, ... (and the
    // newline split the export line), so the exported password was not the password.
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(r.stdout.toString('hex')).toBe(Buffer.from(`${ODD}\u0000o'brien`).toString('hex'));
  },
  30_000,
);

test('cred get --format env on a terminal: nothing raw reaches it, and bash reads back the same bytes', async () => {
  // script(1) gives the CLI a pseudo-terminal as stdout.
  const r = await run('script', ['-qec', '"$NODE20" "$JIT" cred get --task t --role orders-db --format env', '/dev/null']);
  expect(r.code).toBe(0);
  // The terminal's line discipline writes each \n as \r\n; the CLI itself writes no raw CR.
  const shown = r.stdout.toString().replaceAll('\r\n', '\n');
  for (const c of ['\u001b', '\r', '\u007f', '\u009b', '\u00a0', '\u2028'])
    expect([c.codePointAt(0), shown.includes(c)]).toEqual([c.codePointAt(0), false]);
  expect(shown.trimEnd().split('\n').length).toBe(7); // one export line per variable, none split
  // What a person copies from the terminal into bash is still the secret.
  const back = await run('bash', ['-c', `${shown}\nprintf %s "$JIT_SECRET_PASSWORD"`]);
  expect(back.stdout.toString('hex')).toBe(Buffer.from(ODD).toString('hex'));
}, 30_000);

test('cred get --format env with a NUL byte in a secret: exit 2, nothing printed, the lease given back, the secret not echoed', async () => {
  revoked.length = 0;
  const r = await jit(['cred', 'get', '--task', 'nul', '--role', 'orders-db', '--format', 'env']);
  // Before: exit 0 and `export JIT_SECRET_PASSWORD='hunter2\u0000tail'` (a password that is not the password).
  expect(r.code).toBe(2);
  expect(r.stdout.length).toBe(0);
  expect(r.stderr).toMatch(/JIT_SECRET_PASSWORD holds a NUL byte/);
  expect(r.stderr).not.toMatch(/hunter2|usage:/);
  expect(revoked).toEqual(['/v1/leases/l-nul']);
}, 30_000);

test.each(Object.keys(GARBAGE))(
  'lease show on a 200 that is not a lease (%s): exit 3 bad_response',
  async (id) => {
    const r = await jit(['lease', 'show', id, '--json']);
    // Before ([] and {}): exit 0 and nothing printed, as if the lease existed with no field set.
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 3, stderr: expect.stringMatching(/not a lease/) });
    expect(JSON.parse(r.stdout.toString()).code).toBe('bad_response');
  },
  30_000,
);

test('lease show on a lease still prints it', async () => {
  const r = await jit(['lease', 'show', 'l-1']);
  expect(r.code).toBe(0);
  expect(r.stdout.toString()).toMatch(/^status +active$/m);
}, 30_000);
// `maybe`: evidence as the broker sends it, but with a chain that is neither intact nor broken.
test.each([...Object.keys(GARBAGE), 'maybe'])(
  'audit verify --task on a 200 that is not evidence (%s): exit 3 bad_response, not "broken"',
  async (id) => {
    const r = await jit(['audit', 'verify', '--task', id, '--json']);
    // Before: exit 1 and `{"chain":"broken"}`: an operator told the records were tampered with, when the broker
    // (or whatever answered) is what failed.
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 3, stderr: expect.stringMatching(/not task evidence/) });
    expect(JSON.parse(r.stdout.toString()).code).toBe('bad_response');
  },
  30_000,
);

test.each([
  ['intact', 0],
  ['broken', 1],
])(
  'audit verify --task on evidence whose chain is %s exits %i',
  async (chain, code) => {
    const r = await jit(['audit', 'verify', '--task', chain]);
    expect(r.code).toBe(code);
    expect(r.stdout.toString()).toContain(`audit chain ${chain}`);
  },
  30_000,
);

test.each(Object.keys(GARBAGE))(
  'task show and approvals show on a 200 that is not one (%s): exit 3 bad_response',
  async (id) => {
    const cases = [
      [['task', 'show', id], /not a task/],
      [['approvals', 'show', id], /not an approval/],
    ] as const;
    const results = await jitAll(cases.map(([args]) => [...args, '--json']));
    for (const [i, [args, what]] of cases.entries()) {
      const r = results[i]!;
      // Before ([] and {}): exit 0 and an empty table (`{}` as JSON), as if the task or approval existed.
      expect({ args, code: r.code, stderr: r.stderr }).toEqual({ args, code: 3, stderr: expect.stringMatching(what) });
      expect(JSON.parse(r.stdout.toString()).code).toBe('bad_response');
    }
  },
  60_000,
);

test('task show and approvals show on real answers still print them', async () => {
  const [t, a] = await jitAll([
    ['task', 'show', 't-9'],
    ['approvals', 'show', 'a-1', '--json'],
  ]);
  expect({ code: t!.code, stderr: t!.stderr }).toEqual({ code: 0, stderr: '' });
  expect(t!.stdout.toString()).toMatch(/t-9/);
  expect({ code: a!.code, stderr: a!.stderr }).toEqual({ code: 0, stderr: '' });
  expect(JSON.parse(a!.stdout.toString())).toMatchObject({ approvalId: 'a-1', status: 'pending' });
}, 30_000);

/** Every list command, each reading the page `--cursor` names. */
const LISTS = [
  ['task', 'list'],
  ['task', 'leases', 't-1'],
  ['approvals', 'list'],
  ['audit', 'query'],
  ['admin', 'quarantine', '--list'],
];
test.each(Object.keys(GARBAGE).flatMap((g) => [g, `then-${g}`]))(
  'every list, --all, on a page that is not a page (%s): exit 3 bad_response',
  async (cursor) => {
    // One page, and with --all every page (a garbage page after a real one with `then-`).
    const runs = LISTS.flatMap((list) => [...(cursor.startsWith('then-') ? [] : [list]), [...list, '--all']]);
    const results = await jitAll(runs.map((list) => [...list, '--cursor', cursor, '--json']));
    for (const [i, list] of runs.entries()) {
      const r = results[i]!;
      // Before: one page of `[]` or `{}` was exit 0 and an empty list, as if there were nothing to list; with --all
      // (and on null) a TypeError, "unexpected error".
      expect({ list, code: r.code, stderr: r.stderr }).toEqual({ list, code: 3, stderr: expect.stringMatching(/not a page of a list/) });
      expect(JSON.parse(r.stdout.toString()).code).toBe('bad_response');
    }
  },
  120_000,
);

test('every list on real pages still lists their items', async () => {
  const results = await jitAll(LISTS.map((list) => [...list, '--all', '--cursor', 'then-p2', '--json']));
  for (const [i, list] of LISTS.entries()) {
    const r = results[i]!;
    expect({ list, code: r.code, stderr: r.stderr }).toEqual({ list, code: 0, stderr: '' });
    const path = `/v1/${list[0] === 'admin' ? 'admin/quarantine' : list[0] === 'task' ? (list[2] ? 'tasks/t-1/leases' : 'tasks') : list[0]}`;
    // Two pages, each with the route's items.
    expect({ list, items: JSON.parse(r.stdout.toString()).items }).toEqual({ list, items: [...ITEMS[path]!, ...ITEMS[path]!] });
  }
}, 60_000);

test.each([...Object.keys(GARBAGE), 'no-chains'])(
  'audit verify on seals that are not seals (%s): exit 3 bad_response',
  async (id) => {
    seals = GARBAGE[id] ?? '{"maxSealAgeSeconds":300}';
    try {
      const r = await jit(['audit', 'verify', '--json']);
      // Before: a TypeError (`seals.chains` undefined) instead of the broker failing.
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 3, stderr: expect.stringMatching(/not audit seals/) });
    } finally {
      seals = '{"maxSealAgeSeconds":300,"chains":[]}';
    }
  },
  30_000,
);

test('audit verify on real seals and an empty log: exit 0', async () => {
  const r = await jit(['audit', 'verify']);
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: expect.not.stringMatching(/not audit seals|TypeError/) });
}, 30_000);
