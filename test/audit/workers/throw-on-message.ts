// A record-check thread that throws on its first page (test/audit/record-checker.test.ts).
import { parentPort } from 'node:worker_threads';

parentPort?.on('message', () => {
  throw new Error('boom');
});
