import { execFileSync } from 'node:child_process';

/**
 * The broker process's runtime settings (src/runtime-settings.ts, the entry
 * point's first import): libuv's thread pool defaults to 2 threads, which on
 * two cores cut the event loop's wait to hand each signature over; an
 * operator's UV_THREADPOOL_SIZE wins. Checked in a fresh process, where the
 * pool has not started yet.
 */
/** Starts the pool in a fresh process after the settings and counts libuv's worker threads (Linux /proc). */
function poolSizeSeen(env: Record<string, string | undefined>): string {
  const code = [
    "await import('./src/runtime-settings.ts');",
    "const { randomBytes } = await import('node:crypto');",
    "const { readdirSync, readFileSync } = await import('node:fs');",
    'await new Promise((r) => randomBytes(8, r));',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: source of a child script, whose own template literal it is.
    "const names = readdirSync('/proc/self/task').map((t) => readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim());",
    "process.stdout.write(String(names.filter((n) => n === 'libuv-worker').length));",
  ].join('\n');
  return execFileSync(process.execPath, ['--input-type=module', '-e', code], { env: { ...process.env, ...env }, encoding: 'utf8' });
}

test('the thread pool defaults to 2 threads', () => {
  expect(poolSizeSeen({ UV_THREADPOOL_SIZE: undefined })).toBe('2');
});

test("an operator's UV_THREADPOOL_SIZE is kept", () => {
  expect(poolSizeSeen({ UV_THREADPOOL_SIZE: '3' })).toBe('3');
});
