import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureBuilt, jit } from '../helpers/cli.ts';

/**
 * `jit audit export --output FILE` (red team): the file it writes is the
 * caller's alone (0600, also when it existed before), never a file a
 * symlink points to, and a file it cannot write is a usage error (exit 2)
 * said before anything is asked of the broker, not an unhandled 'error'
 * event's stack trace with exit 1 (which means "refused").
 */
let server: Server;
let env: Record<string, string>;
let dir: string;
let calls = 0;

beforeAll(async () => {
  await ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), 'jit-export-'));
  server = createServer((_req, res) => {
    calls += 1;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({ items: [{ seq: 1, time: '2026-01-01T00:00:00.000Z', actor: 'a', action: 'x', hash: 'h' }], nextCursor: null }),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  env = { JIT_BROKER_URL: `http://127.0.0.1:${(server.address() as { port: number }).port}`, JIT_TOKEN: 'a.b.c' };
}, 120_000);
afterAll(async () => {
  await new Promise((r) => server.close(r));
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
