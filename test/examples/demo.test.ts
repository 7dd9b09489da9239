import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { NODE24 } from '../helpers/cli.ts';

/** `npm run demo` (scripts/demo.ts, built on jit-broker/client) against a real broker, with a dev trust domain in JIT_DEV_DIR. */
let t: TestBroker;
let devDir: string;

beforeAll(async () => {
  t = await startTestBroker('demo');
  devDir = mkdtempSync(join(tmpdir(), 'jit-demo-'));
  const jwk = { ...t.issuer.privateKey.export({ format: 'jwk' }), kid: t.issuer.kid, alg: 'ES256' };
  writeFileSync(join(devDir, 'dev-signer.private.jwk'), JSON.stringify(jwk));
}, 60_000);
afterAll(async () => {
  await t?.close();
});

it('plays the whole flow and exits 0: the token is accepted, then rejected once the task completes', async () => {
  const { stdout } = await promisify(execFile)(NODE24, ['scripts/demo.ts'], {
    env: { PATH: process.env.PATH, JIT_BROKER_URL: t.url, JIT_DEV_DIR: devDir },
  });
  expect(stdout).toMatch(/introspection active=true → request ACCEPTED/);
  expect(stdout).toMatch(/introspection active=false → request REJECTED/);
  expect(stdout).toMatch(/status=revoked reason=task_completed/);
}, 30_000);
