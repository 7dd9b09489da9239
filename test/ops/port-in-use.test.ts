import { afterAll, expect, jest, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { dropPrefix, testConfigFile, uniquePrefix } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { START_TIMEOUT_MS } from '../helpers/process.ts';

// The process is waited on for as long as a start may take on a loaded machine.
jest.setTimeout(START_TIMEOUT_MS + 10_000);

/**
 * Found walking the README as a newcomer: a second `npm start` while the first still runs (or anything else on
 * 8080) ended with only `startup failed: listen EADDRINUSE: address already in use 127.0.0.1:8080`, which says
 * nothing of what to do. It now says another process listens there and how to start this one elsewhere.
 */
const prefix = uniquePrefix('port-in-use');
let taken: Server | undefined;
afterAll(async () => {
  await new Promise((r) => (taken ? taken.close(r) : r(undefined)));
  await dropPrefix(prefix);
});

test('a port already taken: exit 1, naming the port, PORT and server.port', async () => {
  taken = createServer();
  await new Promise<void>((r) => taken!.listen(0, '127.0.0.1', r));
  const port = (taken.address() as { port: number }).port;
  const file = testConfigFile(new TestIssuer(), prefix, { redis: { url: 'redis://127.0.0.1:6379', prefix } });
  const child = spawn(process.execPath, ['src/main.ts'], {
    env: { ...process.env, BROKER_CONFIG: file, PORT: String(port), LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const code = await new Promise<number | null | 'still running'>((resolve) => {
    const timer = setTimeout(() => resolve('still running'), START_TIMEOUT_MS);
    child.on('exit', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  if (code === 'still running') child.kill('SIGKILL');
  expect(code).toBe(1);
  expect(err).toContain(`startup failed: listen EADDRINUSE: address already in use 127.0.0.1:${port}`);
  expect(err).toContain(`another process already listens on 127.0.0.1:${port} (a broker started earlier?)`);
  expect(err).toMatch(/PORT=\d+ npm start/);
  expect(err).toContain('server.port');
});
