// Checks one page and ends without close(): the process must still exit (test/audit/record-checker.test.ts).
import { RecordChecker } from '../../../src/audit/record-checker.ts';

const c = new RecordChecker({ warn() {}, error() {}, info() {}, debug() {} } as never);
const out = await c.check(['{"seq":1,"prev":"x","hash":"y"}']);
console.log(JSON.stringify({ out, checked: c.checked }));
