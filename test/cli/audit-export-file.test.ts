import { afterAll, beforeAll, expect, test } from '@jest/globals';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { ensureBuilt, JIT, jit, NODE20 } from '../helpers/cli.ts';
import { type FakeBroker, send, startFakeBroker } from '../helpers/fake-broker.ts';

/**
 * `jit audit export --output FILE` (red team): the file it writes is the
 * caller's alone (0600, also when it existed before), never a file a
 * symlink points to, and a file it cannot write is a usage error (exit 2)
 * said before anything is asked of the broker, not an unhandled 'error'
 * event's stack trace with exit 1 (which means "refused").
 */
let fake: FakeBroker;
let env: Record<string, string>;
let dir: string;
let calls = 0;
let hung = 0;

beforeAll(async () => {
  await ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), 'jit-export-'));
  fake = await startFakeBroker((req, res) => {
    calls += 1;
    const q = new URL(req.url ?? '/', 'http://x').searchParams;
    const record = (seq: number) => ({ seq, time: '2026-01-01T00:00:00.000Z', actor: 'a', action: 'x', hash: `h${seq}` });
    // `--action` picks what the second page is: `good` a last page, `bad` not a page, `down` a 503.
    const second = q.get('action');
    if (!q.get('cursor') || !second) send(res, 200, JSON.stringify({ items: [record(1)], nextCursor: second ? 'p2' : null }));
    else if (second === 'good') send(res, 200, JSON.stringify({ items: [record(2)], nextCursor: null }));
    else if (second === 'hang')
      hung += 1; // never answered: the test interrupts jit meanwhile
    else if (second === 'bad') send(res, 200, '{}');
    else
      send(
        res,
        503,
        '{"type":"about:blank","title":"Unavailable","status":503,"detail":"not ready","code":"not_ready"}',
        'application/problem+json',
      );
  });
  env = { JIT_BROKER_URL: fake.url, JIT_TOKEN: 'a.b.c' };
}, 120_000);
afterAll(async () => {
  await fake?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('a file that cannot be opened is exit 2 with one line, and the broker is not asked', async () => {
  calls = 0;
  const r = await jit(['audit', 'export', '--output', join(dir, 'missing', 'audit.jsonl')], env);
  // Before: exit 1 and "node:events ... throw er; // Unhandled 'error' event" with a stack, after the broker was asked.
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/^jit: cannot write .*audit\.jsonl \(ENOENT\)\n$/);
  expect(calls).toBe(0);
});

test('an existing file is made 0600 before records go in', async () => {
  const file = join(dir, 'existing.jsonl');
  writeFileSync(file, 'old\n');
  chmodSync(file, 0o644);
  const r = await jit(['audit', 'export', '--output', file], env);
  expect(r.code).toBe(0);
  expect(readFileSync(file, 'utf8')).toMatch(/^\{"seq":1/);
  // Before: 0644, every local user could read the audit records.
  expect((statSync(file).mode & 0o777).toString(8)).toBe('600');
});

test('a symlink at the path is refused, its target untouched', async () => {
  const target = join(dir, 'target');
  writeFileSync(target, 'keep\n');
  chmodSync(target, 0o644);
  const link = join(dir, 'link.jsonl');
  symlinkSync(target, link);
  const r = await jit(['audit', 'export', '--output', link], env);
  // Before: followed: the target was truncated and filled with audit records.
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/cannot write .*link\.jsonl \(ELOOP\)/);
  expect(readFileSync(target, 'utf8')).toBe('keep\n');
});

test.each(['bad', 'down'])(
  'a second page that fails (%s): exit 3, FILE as it was before (absent, or the last export), no temporary file left',
  async (second) => {
    const sub = join(dir, `partial-${second}`);
    mkdirSync(sub);
    const fresh = join(sub, 'fresh.jsonl');
    const kept = join(sub, 'kept.jsonl');
    writeFileSync(kept, 'the last good export\n', { mode: 0o600 });
    for (const file of [fresh, kept]) {
      const r = await jit(['audit', 'export', '--action', second, '--output', file], env);
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(new RegExp(`nothing written to .*${file.split('/').pop()}`));
      // Before: followed by "exported 1 record(s) to FILE", when nothing was.
      expect(r.stderr).not.toMatch(/exported/);
    }
    // Before: exit 3, but FILE held the first page's record alone: a partial export that looked whole
    // (and the last good export was gone).
    expect(existsSync(fresh)).toBe(false);
    expect(readFileSync(kept, 'utf8')).toBe('the last good export\n');
    expect(readdirSync(sub)).toEqual(['kept.jsonl']);
  },
);

test('an export of two pages replaces FILE whole, 0600, and leaves nothing else', async () => {
  const sub = join(dir, 'whole');
  mkdirSync(sub);
  const file = join(sub, 'audit.jsonl');
  writeFileSync(file, 'old\n');
  chmodSync(file, 0o644);
  const r = await jit(['audit', 'export', '--action', 'good', '--output', file], env);
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: expect.stringMatching(/exported 2 record\(s\)/) });
  expect(
    readFileSync(file, 'utf8')
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l).seq),
  ).toEqual([1, 2]);
  expect((statSync(file).mode & 0o777).toString(8)).toBe('600');
  expect(readdirSync(sub)).toEqual(['audit.jsonl']);
});

test('a file it may not write is exit 2 before the broker is asked, even where the directory would allow replacing it', async () => {
  if (process.getuid?.() === 0) return; // root writes any file
  const file = join(dir, 'readonly.jsonl');
  writeFileSync(file, 'keep\n');
  chmodSync(file, 0o400);
  calls = 0;
  const r = await jit(['audit', 'export', '--output', file], env);
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/cannot write .*readonly\.jsonl \(EACCES\)/);
  expect(calls).toBe(0);
  expect(readFileSync(file, 'utf8')).toBe('keep\n');
});

test('interrupted while reading: jit ends by the signal, FILE as it was, no temporary file left', async () => {
  const sub = join(dir, 'interrupted');
  mkdirSync(sub);
  const file = join(sub, 'audit.jsonl');
  writeFileSync(file, 'the last good export\n', { mode: 0o600 });
  hung = 0;
  const child = spawn(NODE20, [JIT, 'audit', 'export', '--action', 'hang', '--output', file], {
    env: { PATH: process.env.PATH, ...env },
    stdio: 'ignore',
  });
  const ended = new Promise<[number | null, string | null]>((r) => child.on('close', (code, signal) => r([code, signal])));
  // The first page is in the temporary file, the second one asked for.
  for (let i = 0; hung === 0 && i < 500; i++) await new Promise((r) => setTimeout(r, 20));
  expect(readdirSync(sub)).toHaveLength(2);
  child.kill('SIGINT');
  expect(await ended).toEqual([null, 'SIGINT']);
  expect(readFileSync(file, 'utf8')).toBe('the last good export\n');
  expect(readdirSync(sub)).toEqual(['audit.jsonl']);
}, 30_000);
