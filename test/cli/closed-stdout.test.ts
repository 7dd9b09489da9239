import { beforeAll, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { ensureBuilt, JIT, NODE20, node20Version } from '../helpers/cli.ts';

/**
 * A reader that stops early (`jit audit export | head -1`, `jit audit tail | grep -m1 deny`) closes the
 * pipe. Node ignores SIGPIPE, so jit's next write failed with EPIPE, an 'error' event nobody handled: a
 * stack trace on stderr and exit 1, the code of a broker refusal (found by a newcomer piping an export
 * into head). It now stops quietly with 141, the status of a program stopped by SIGPIPE (`cat f | head`).
 */
beforeAll(async () => {
  expect(node20Version()).toMatch(/^v20\./);
  await ensureBuilt();
}, 120_000);

function runWithClosedStdout(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(NODE20, [JIT, ...args], { env: { PATH: process.env.PATH }, stdio: ['ignore', 'pipe', 'pipe'] });
    // The reader is gone before jit writes a byte.
    child.stdout.destroy();
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stderr }));
  });
}

it('stops quietly with exit 141 when its stdout is closed, not with an EPIPE stack trace and exit 1', async () => {
  const r = await runWithClosedStdout(['--help']);
  expect(r.stderr).not.toMatch(/EPIPE|Unhandled|at /);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(141);
});
