// A record-check thread that dies on its first page (test/audit/record-checker.test.ts).
import { parentPort } from 'node:worker_threads';

parentPort?.on('message', () => process.exit(3));
