// Worker thread entry of RecordChecker (record-checker.ts): checks pages of audit stream entries.
import { parentPort } from 'node:worker_threads';
import { checkRecords } from './record-check.ts';

parentPort?.on('message', (msg: { id: number; raws: string[] }) => {
  parentPort?.postMessage({ id: msg.id, checked: checkRecords(msg.raws) });
});
