// While the flag file exists, a record-check thread that removes it and dies on its first page; otherwise
// the real record-check thread (test/audit/record-checker.test.ts: a thread that died is tried again later).
import { existsSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parentPort } from 'node:worker_threads';

// Per process (a thread has its parent's pid): two runs of the test at once must not take each other's flag.
export const DIE_FLAG = join(tmpdir(), `jit-record-check-die-once-${process.pid}`);

if (existsSync(DIE_FLAG))
  parentPort?.on('message', () => {
    unlinkSync(DIE_FLAG);
    process.exit(3);
  });
else if (parentPort) await import('../../../src/audit/record-check-worker.ts');
