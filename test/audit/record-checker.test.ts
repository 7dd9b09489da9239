import { writeFileSync } from 'node:fs';
import { jest } from '@jest/globals';
import { performance } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import pino from 'pino';
import { RecordChecker } from '../../src/audit/record-checker.ts';
import { GENESIS, hashRecord } from '../../src/audit/record.ts';
import type { Logger } from '../../src/logger.ts';
import { DIE_FLAG } from './workers/die-once.ts';

function capturingLogger(): { logger: Logger; warns: () => number } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  return { logger: pino({ level: 'warn' }, stream), warns: () => chunks.join('').split('\n').filter(Boolean).length };
}

function raws(n: number): string[] {
  const out: string[] = [];
  let prev = GENESIS;
  for (let seq = 1; seq <= n; seq++) {
    const base = { seq, prev, at: '2026-01-01T00:00:00.000Z', event: { type: 'x' } } as never;
    const hash = hashRecord(base);
    out.push(JSON.stringify({ ...(base as object), hash }));
    prev = hash;
  }
  return out;
}

for (const name of ['exit-on-message', 'throw-on-message']) {
  test(`a thread that dies mid-page (${name}): the page is checked on the loop, once logged`, async () => {
    const log = capturingLogger();
    const c = new RecordChecker(log.logger, new URL(`./workers/${name}.ts`, import.meta.url));
    const pages = await Promise.all([c.check(raws(5)), c.check(raws(3))]);
    expect(pages.map((p) => p.length)).toEqual([5, 3]);
    expect(c.checked).toEqual({ thread: 0, loop: 8 });
    await c.check(raws(2));
    expect(log.warns()).toBe(1);
    await c.close();
  });
}

test('a thread that died is tried again after retryMs: checks go back to a thread once one runs', async () => {
  const log = capturingLogger();
  // The checker's (monotonic) clock, moved by hand: "within retryMs" must not depend on how fast a loaded machine runs.
  let now = performance.now();
  const clock = jest.spyOn(performance, 'now').mockImplementation(() => now);
  try {
    const c = new RecordChecker(log.logger, new URL('./workers/die-once.ts', import.meta.url), { retryMs: 200 });
    writeFileSync(DIE_FLAG, ''); // the first thread dies on its first page (and removes the flag)
    expect((await c.check(raws(4))).every((r) => r?.hashOk)).toBe(true);
    expect(c.checked).toEqual({ thread: 0, loop: 4 });
    now += 199;
    await c.check(raws(2)); // within retryMs: still on the loop, no new warning
    expect(c.checked).toEqual({ thread: 0, loop: 6 });
    now += 1;
    expect((await c.check(raws(3))).every((r) => r?.hashOk)).toBe(true);
    expect(c.checked).toEqual({ thread: 3, loop: 6 });
    expect(log.warns()).toBe(1);
    await c.close();
  } finally {
    clock.mockRestore();
  }
});

// The wait before a new thread was dated with Date.now(): the wall clock stepped back an hour (NTP setting a
// fast clock right) kept every page on the event loop, in issuance's p99, for that hour more.
test('a thread that died is tried again after retryMs, the wall clock stepped back an hour meanwhile', async () => {
  const log = capturingLogger();
  const c = new RecordChecker(log.logger, new URL('./workers/die-once.ts', import.meta.url), { retryMs: 200 });
  const realNow = Date.now.bind(Date);
  try {
    writeFileSync(DIE_FLAG, '');
    await c.check(raws(4));
    expect(c.checked).toEqual({ thread: 0, loop: 4 });
    jest.spyOn(Date, 'now').mockImplementation(() => realNow() - 3_600_000);
    await new Promise((r) => setTimeout(r, 300)); // past retryMs
    expect((await c.check(raws(3))).every((r) => r?.hashOk)).toBe(true);
    expect(c.checked).toEqual({ thread: 3, loop: 4 });
  } finally {
    jest.restoreAllMocks();
    await c.close();
  }
});

test('close() while pages are in flight, many at once: every check resolves; a later check starts a new thread', async () => {
  const log = capturingLogger();
  const c = new RecordChecker(log.logger);
  const inFlight = Array.from({ length: 20 }, () => c.check(raws(50)));
  await c.close();
  const got = await Promise.all(inFlight);
  expect(got.every((p) => p.length === 50 && p.every((r) => r?.hashOk))).toBe(true);
  expect(c.checked.thread + c.checked.loop).toBe(1000);
  const again = await c.check(raws(10));
  expect(again.every((r) => r?.hashOk)).toBe(true);
  expect(c.checked.thread).toBeGreaterThanOrEqual(10);
  expect((c as unknown as { waiting: Map<number, unknown> }).waiting.size).toBe(0);
  await c.close();
  expect(log.warns()).toBe(0);
});

test('the thread never keeps the process alive (a checker not closed), from any working directory', async () => {
  const { spawnSync } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const script = fileURLToPath(new URL('./workers/unclosed-checker.ts', import.meta.url));
  // The timeout only stops a child that would never exit (a thread keeping it alive): generous, as a loaded
  // machine may take seconds to start node and a thread; what is judged is that it exits on its own, with 0.
  const r = spawnSync(process.execPath, [script], { cwd: '/', timeout: 60_000, encoding: 'utf8' });
  expect(r.signal).toBeNull(); // not killed by the timeout
  expect(r.status).toBe(0);
  expect(JSON.parse(r.stdout.trim())).toMatchObject({ checked: { thread: 1, loop: 0 } });
}, 90_000);
