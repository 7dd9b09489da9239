import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureBuilt, JIT, NODE20 } from '../helpers/cli.ts';
import { type FakeBroker, send, startFakeBroker } from '../helpers/fake-broker.ts';

/**
 * `jit audit export --output FILE` when the disk fills up (red team): RLIMIT_FSIZE (`ulimit -f`) makes a write past
 * 64 KiB fail with EFBIG, as a full disk fails it with ENOSPC. Pages of one 10 KB record each, answered 30 ms
 * apart: the write that fails fails while jit waits for the next page, not while it waits for 'drain'.
 * Before: the next write went to a destroyed stream, whose 'drain' never came; Node ended with exit 13 (an
 * unsettled top-level await), no message, and a hidden temporary file of audit records left beside FILE.
 */
let fake: FakeBroker;
let url: string;
let dir: string;

beforeAll(async () => {
  await ensureBuilt();
  dir = mkdtempSync(join(tmpdir(), 'jit-export-full-'));
  fake = await startFakeBroker((req, res) => {
    const page = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('cursor') ?? 0);
    const items = [{ seq: page + 1, time: '2026-01-01T00:00:00.000Z', actor: 'a', action: 'x', hash: `h${page}`, pad: 'x'.repeat(10_000) }];
    setTimeout(() => send(res, 200, JSON.stringify({ items, nextCursor: page < 20 ? String(page + 1) : null })), 30);
  });
  url = fake.url;
}, 120_000);
afterAll(async () => {
  await fake?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** jit on Node 20 with files limited to 64 KiB (`ulimit -f` counts 512- or 1024-byte blocks: 128 or 64). */
function limitedJit(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', 'ulimit -f 64 && exec "$0" "$@"', NODE20, JIT, ...args], {
      env: { PATH: process.env.PATH, JIT_BROKER_URL: url, JIT_TOKEN: 'a.b.c' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stderr }));
  });
}

test('a write that fails (the disk full) is said, exit 2, FILE as it was, and no temporary file is left', async () => {
  const sub = join(dir, 'full');
  mkdirSync(sub);
  const file = join(sub, 'audit.jsonl');
  writeFileSync(file, 'the last good export\n', { mode: 0o600 });
  const r = await limitedJit(['audit', 'export', '--output', file]);
  expect({ code: r.code, stderr: r.stderr }).toEqual({
    code: 2,
    stderr: expect.stringMatching(
      /nothing written to .*audit\.jsonl: the export did not finish\njit: cannot write .*audit\.jsonl \(EFBIG\)\n$/,
    ),
  });
  // Nothing claims records went anywhere.
  expect(r.stderr).not.toMatch(/exported/);
  expect(readFileSync(file, 'utf8')).toBe('the last good export\n');
  expect(readdirSync(sub)).toEqual(['audit.jsonl']);
}, 60_000);
