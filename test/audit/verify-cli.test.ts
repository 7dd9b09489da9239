import { execFile } from 'node:child_process';
import { appendFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { jest } from '@jest/globals';
import { type AuditRecord, hashRecord } from '../../src/audit/record.ts';
import { REDIS_URL } from '../helpers/broker.ts';
import { type AuditFixture, auditFixture } from './fixture.ts';

const run = promisify(execFile);
// Each `npm run audit:verify` starts npm and node: seconds apiece on a loaded machine (a test running it three
// times exceeded jest's 20-s default at load 12), and a test here runs it up to three times.
jest.setTimeout(90_000);

let f: AuditFixture;
beforeEach(async () => {
  f = await auditFixture('audit-cli');
});
afterEach(async () => {
  await f.close();
});

/** A broker config for this fixture's prefix and export (with or without secrets.kek). */
function config(withKek: boolean): string {
  const kekFile = join(f.dir, 'kek');
  writeFileSync(kekFile, f.kek);
  const path = join(f.dir, 'broker.yaml');
  writeFileSync(
    path,
    [
      'server: { publicUrl: "http://127.0.0.1:8080" }',
      `redis: { url: "${REDIS_URL}", prefix: "${f.prefix}" }`,
      withKek ? `secrets: { kek: { file: "${kekFile}" } }` : '',
      `audit: { export: { file: "${f.file}" } }`,
      `policies: "${resolve('config/policies')}"`,
      'trust: [{ name: t, kind: spiffe, trustDomain: dev.local, audiences: [jit-broker], jwks: { uri: "https://example.invalid/jwks" } }]',
      'roles: { r: { provider: jwt, audience: "https://x.internal", maxTtlSeconds: 60 } }',
    ].join('\n'),
  );
  return path;
}

async function verifyCli(cfg: string, ...args: string[]): Promise<{ code: number; out: string }> {
  try {
    const { stdout } = await run(process.execPath, ['scripts/audit-verify.ts', ...args], { env: { ...process.env, BROKER_CONFIG: cfg } });
    return { code: 0, out: stdout };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, out: e.stdout + e.stderr };
  }
}

test('npm run audit:verify: exit 0 and a verdict per chain; exit 1 naming the broken record', async () => {
  await f.append(12);
  await f.exporter().exportNow();
  await f.append(3);
  const cfg = config(true);
  let res = await verifyCli(cfg);
  expect(res.code).toBe(0);
  expect(res.out).toContain('seals checked with the key derived from secrets.kek');
  expect(res.out).toMatch(/chain ops: intact, 15 records \(seq 1\.\.15; 12 from the export, 3 only in Redis\)/);
  expect(res.out).toMatch(/last seal: seq 12 at/);
  expect(res.out).toMatch(/3 record\(s\) after the last seal are unsealed/);

  // Someone rebuilds the stream with record 12 changed and its hash recomputed.
  const stream = f.keys.auditStream('ops');
  const all = await f.redis.xrange(stream, '-', '+');
  const m = f.redis.multi().del(stream);
  for (const [id, fields] of all) {
    const r = JSON.parse(fields[1]!) as AuditRecord;
    if (r.seq === 12) {
      r.decision = 'deny';
      const { hash: _h, ...rest } = r;
      r.hash = hashRecord(rest);
    }
    m.xadd(stream, id, 'r', JSON.stringify(r));
  }
  await m.exec();
  res = await verifyCli(cfg, '--json');
  expect(res.code).toBe(1);
  const json = JSON.parse(res.out);
  expect(json.ok).toBe(false);
  expect(json.chains.find((c: { chain: unknown }) => c.chain === 'ops')).toMatchObject({
    ok: false,
    records: 15,
    unsealed: 3,
    brokenAt: { seq: 12 },
    problem: expect.stringMatching(/differs from the exported record/),
  });
});

test('npm run audit:verify without secrets.kek says the KEK lives in Redis', async () => {
  await f.append(2);
  await f.exporter().exportNow();
  await f.redis.set(f.keys.secrets('kek'), f.kek);
  const res = await verifyCli(config(false));
  expect(res.code).toBe(0);
  expect(res.out).toContain('the KEK lives in Redis');
  expect(res.out).toMatch(/last seal: seq 2 at .* \(1 seals\)/);
});

test('npm run audit:verify -- --file with a path that does not exist refuses (exit 1), not "intact" (found by a newcomer)', async () => {
  const res = await verifyCli(config(true), '--file', join(f.dir, 'no-such-archive.jsonl'));
  expect(res.code).toBe(1);
  expect(res.out).toContain('no such export file');
  expect(res.out).not.toContain('every chain is intact');
});

test('npm run audit:verify -- --file with a file that is not this broker\'s export refuses (exit 1), not "intact" (found by a newcomer)', async () => {
  await f.append(3);
  await f.exporter().exportNow();
  const cfg = config(true);
  // What `jit audit export` writes: the API's records, one per line, without the export's header or chain wrapper.
  const apiLines = (await f.redis.xrange(f.keys.auditStream('ops'), '-', '+')).map(([, fields]) => fields[1]).join('\n');
  const jitExport = join(f.dir, 'jit-audit-export.jsonl');
  writeFileSync(jitExport, `${apiLines}\n`);
  let res = await verifyCli(cfg, '--file', jitExport);
  expect(res.code).toBe(1);
  expect(res.out).toContain('is not a broker audit export');
  expect(res.out).not.toContain('every chain is intact');

  // The export of another deployment (another redis.prefix): its lines are not this broker's, so nothing was checked.
  const foreign = join(f.dir, 'other.jsonl');
  writeFileSync(
    foreign,
    `${JSON.stringify({ export: 'jit-broker audit', version: 1, prefix: 'other', created: new Date().toISOString() })}\n`,
  );
  res = await verifyCli(cfg, '--file', foreign);
  expect(res.code).toBe(1);
  expect(res.out).toContain('redis.prefix "other"');
  expect(res.out).not.toContain('every chain is intact');

  // The broker's own export, named explicitly, still verifies.
  res = await verifyCli(cfg, '--file', f.file);
  expect(res.code).toBe(0);
  expect(res.out).toContain('every chain is intact');
});

test('npm run audit:verify prints what an export file holds escaped: a tampered file cannot repaint the verdict', async () => {
  // Red team: whoever can write the export file is whom verify is for, and it printed the file's own text (a
  // header's prefix) raw. A prefix of ESC sequences moved the cursor up over the BROKEN lines, rewrote them and
  // hid what followed (SGR 8); a C1 CSI (U+009B) or a bidi override did the same on terminals that act on them.
  await f.append(3);
  await f.exporter().exportNow();
  const cfg = config(true);
  const hostile = '\u001b[2A\u001b[2Kchain ops: intact\u001b[8m \u009b2K \u202eabc\r';
  const header = (prefix: string) =>
    `${JSON.stringify({ export: 'jit-broker audit', version: 1, prefix, created: new Date().toISOString() })}\n`;
  appendFileSync(f.file, header(hostile));
  const raw = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;
  for (const args of [[], ['--json']]) {
    const res = await verifyCli(cfg, ...args);
    expect(res.out).toContain('\\u001b[2A');
    expect(res.out).not.toMatch(raw);
  }
  // Named with --file, the refusal quotes the header too.
  const foreign = join(f.dir, 'foreign.jsonl');
  writeFileSync(foreign, header(hostile));
  const res = await verifyCli(cfg, '--file', foreign);
  expect(res.code).toBe(1);
  expect(res.out).toContain('\\u001b[2A');
  expect(res.out).not.toMatch(raw);
});

test('npm run audit:verify fails (exit 1, naming it) when sealing stopped and records followed the last seal; --max-seal-age moves the bound', async () => {
  await f.append(5);
  // The last seal was made 10 minutes ago; since then the export lock was hijacked and records followed.
  await f.exporter({ now: () => Date.now() - 600_000 }).exportNow();
  await f.append(2);
  const cfg = config(true);
  let res = await verifyCli(cfg);
  expect(res.code).toBe(1);
  expect(res.out).toMatch(/chain ops: BROKEN/);
  expect(res.out).toMatch(
    /the newest seal \(seq 5, .*\) is 6\d\d s old, more than the bound of 180 s, and 2 record\(s\) follow it: sealing has stopped/,
  );
  expect(res.out).not.toContain('every chain is intact');

  res = await verifyCli(cfg, '--max-seal-age', '3600', '--json');
  expect(res.code).toBe(0);
  const json = JSON.parse(res.out);
  expect(json).toMatchObject({ ok: true, maxSealAgeSeconds: 3600 });
  expect(json.chains.find((c: { chain: unknown }) => c.chain === 'ops')).toMatchObject({ ok: true, unsealed: 2 });
  expect(json.chains.find((c: { chain: unknown }) => c.chain === 'ops').sealAgeSeconds).toBeGreaterThanOrEqual(599);
  res = await verifyCli(cfg, '--max-seal-age', 'soon');
  expect(res.code).toBe(1);
  expect(res.out).toContain('--max-seal-age must be a whole number of seconds');
});

test('npm run audit:verify -- --help prints its usage (exit 0); an unknown flag is a usage line, not a stack trace (exit 1, nothing verified)', async () => {
  const cfg = config(true);
  const help = await verifyCli(cfg, '--help');
  expect(help.code).toBe(0);
  expect(help.out).toMatch(/^usage: npm run audit:verify/m);
  const bad = await verifyCli(cfg, '--jsn');
  expect(bad.code).toBe(1);
  expect(bad.out).toMatch(/audit:verify: Unknown option '--jsn'/);
  expect(bad.out).toMatch(/^usage: npm run audit:verify/m);
  expect(bad.out).not.toMatch(/ERR_PARSE_ARGS|at parseArgs|node:internal/);
  expect(bad.out).not.toContain('intact');
});
