import { afterAll, beforeAll, expect, jest, test } from '@jest/globals';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { validateConfig } from '../../src/config/load.ts';
import { startTestBroker, type TestBroker, uniquePrefix, REDIS_URL } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { ensureBuilt, JIT, NODE20 } from '../helpers/cli.ts';

/**
 * The shell walk-throughs of README.md ("A credential in a minute") and docs/getting-started.md, run as a
 * newcomer pastes them into bash: every command as written, against a broker configured by config/broker.yaml
 * (its roles, orchestrators, approvers and policies; only Redis, the KEK and the dev trust keys are the test's).
 * `npx jit` runs the built CLI on the machine's Node 20 (what `npx` would find, minus npm's start-up), and
 * `jit dev token` signs with the test broker's trusted key in a JIT_DEV_DIR, as `npm start` would have written it.
 */
jest.setTimeout(90_000);

let t: TestBroker;
let devDir: string;
beforeAll(async () => {
  await ensureBuilt();
  const issuer = new TestIssuer();
  const { console: _console, ...shipped } = parseYaml(readFileSync('config/broker.yaml', 'utf8')) as Record<string, unknown>;
  const kek = join(mkdtempSync(join(tmpdir(), 'jit-walk-')), 'kek');
  writeFileSync(kek, Buffer.alloc(32, 7).toString('base64'));
  const config = validateConfig(
    {
      ...shipped,
      server: { port: 0, publicUrl: 'http://127.0.0.1:8080' },
      redis: { url: REDIS_URL, prefix: uniquePrefix('walkthrough') },
      secrets: { kek: { file: kek } },
      trust: [{ name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: issuer.bundle().keys } }],
      audit: { export: { file: join(mkdtempSync(join(tmpdir(), 'jit-walk-')), 'audit.jsonl') } },
    },
    {},
    resolve('config/broker.yaml'),
  );
  t = await startTestBroker('walkthrough', { issuer, loaded: config, prefix: config.redis.prefix });
  devDir = mkdtempSync(join(tmpdir(), 'jit-walk-dev-'));
  const jwk = { ...issuer.privateKey.export({ format: 'jwk' }), kid: issuer.kid, alg: 'ES256' };
  writeFileSync(join(devDir, 'dev-signer.private.jwk'), `${JSON.stringify(jwk)}\n`, { mode: 0o600 });
}, 120_000);
afterAll(async () => {
  await t?.close();
});

/** The ```sh blocks of a markdown text, in order. */
function shellBlocks(text: string): string[] {
  return [...text.matchAll(/^```sh\n([\s\S]*?)^```/gm)].map((m) => m[1]!);
}

/** Runs `script` in bash, stopping at the first failing command, with `npx jit` the built CLI. */
function bash(script: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const prelude = [
    'set -eo pipefail',
    `npx() { if [ "$1" = jit ]; then shift; ${JSON.stringify(NODE20)} ${JSON.stringify(JIT)} "$@"; else echo "npx $1: not in the walk-through" >&2; return 127; fi; }`,
    '',
  ].join('\n');
  // A HOME of its own: no ~/.curlrc or shell settings of whoever runs the tests change what the commands print.
  const env = { PATH: process.env.PATH!, HOME: mkdtempSync(join(tmpdir(), 'jit-walk-home-')), JIT_BROKER_URL: t.url, JIT_DEV_DIR: devDir };
  return new Promise((done) => {
    // The broker is only at JIT_BROKER_URL: the walk-throughs say to set it for a broker on another port, and a
    // URL they hard-code (the default port) is sent to a closed one, so a command that ignores it fails here.
    const text = prelude + script.replaceAll('http://127.0.0.1:8080', 'http://127.0.0.1:9');
    execFile('bash', ['-c', text], { env, cwd: process.cwd(), timeout: 80_000 }, (err, stdout, stderr) => {
      done({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

test("README's 'A credential in a minute' runs as written", async () => {
  const readme = readFileSync('README.md', 'utf8');
  const section = readme.slice(readme.indexOf('## A credential in a minute'));
  const [block] = shellBlocks(section);
  const r = await bash(block!);
  expect({ code: r.code, stderr: r.code ? r.stderr : '' }).toEqual({ code: 0, stderr: '' }); // stderr shown on failure
  expect(r.stdout).toContain('"access_token"'); // jit cred get: the broker's JSON
  expect(r.stdout).toMatch(/^\d{2,}$/m); // jit exec: the token's length
  expect(r.stdout).toMatch(/completed; \d+ lease\(s\) being revoked/); // jit task complete
});

test('docs/getting-started.md runs as written, the approver in a second terminal', async () => {
  const blocks = shellBlocks(readFileSync('docs/getting-started.md', 'utf8'));
  // Installing and starting: the test's broker stands in.
  const install = blocks.filter((b) => /npm start/.test(b));
  expect(install).toHaveLength(1);
  // Step 5 waits in one terminal for the approval given in another: the waiting command runs in the background,
  // and the approver's command gets the approval id it printed, as a person would copy it.
  const script = blocks
    .filter((b) => !install.includes(b))
    .map((b) => {
      if (b.includes('--wait')) {
        return `( ${b.trim()} ) > "$HOME/wait.out" 2> "$HOME/wait.err" & WAITER=$!
trap 'kill $WAITER 2>/dev/null || true' EXIT
for i in $(seq 600); do grep -q 'waiting for approval' "$HOME/wait.err" && break; sleep 0.1; done
APPROVAL_ID=$(grep -o 'waiting for approval [0-9a-f]*' "$HOME/wait.err" | cut -d' ' -f4)
`;
      }
      if (b.includes('<approvalId>')) return `${b.replaceAll('<approvalId>', '$APPROVAL_ID')}wait $WAITER; cat "$HOME/wait.out"\n`;
      return b;
    });
  expect(script.filter((b) => b.includes('APPROVAL_ID'))).toHaveLength(2);
  const r = await bash(script.join('\n'));
  expect({ code: r.code, stderr: r.code ? r.stderr : '' }).toEqual({ code: 0, stderr: '' });
  expect(r.stdout).toMatch(/^lease [0-9a-f]{32}: a \d+-character token; JIT_TOKEN is unset$/m); // step 3: jit exec
  // Each curl answer on a line of its own (they once ran together with what came next).
  expect(r.stdout).toMatch(/^\{"active":true,.*"scope":"tickets:read".*\}$/m); // step 4: introspection of a live token
  expect(r.stdout).toMatch(/^approval [0-9a-f]{32}: approved \(task t-[0-9a-f-]+, role prod-deploy\)$/m); // step 5
  expect(r.stdout).toContain('"role": "prod-deploy"'); // step 5: the waiting command's credential
  expect(r.stdout).toMatch(/^\{"active":false\}$/m); // step 6: the same token once the task ended
  expect(r.stdout).toMatch(/revoked .*task_completed/); // step 6: task show
  // The curl walk-through.
  expect(r.stdout).toMatch(/^\{"taskId":"t-curl-\d+",.*"status":"open".*\}$/m);
  expect(r.stdout).toMatch(/^\{"leaseId":.*"taskId":"t-curl-\d+".*\}$/m);
  expect(r.stdout).toMatch(/^\{"taskId":"t-curl-\d+","status":"completed","leases":1\}$/m);
});
