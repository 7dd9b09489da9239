import { ensureBuilt, jit } from '../helpers/cli.ts';

/**
 * A broker URL of plain http to another host sends the workload identity and the credentials unencrypted: the CLI
 * says so on stderr (a mesh may encrypt the hop, so it does not refuse). Found in a review: it said nothing.
 */
beforeAll(ensureBuilt, 120_000);

const WARNING = /warning: http:\/\/broker\.invalid:1 is plain http to another host/;
const env = { JIT_TOKEN: 'x.y.z' };

test('plain http to another host: one warning on stderr, whatever the command then does', async () => {
  const r = await jit(['--broker', 'http://broker.invalid:1', 'lease', 'show', '0123456789abcdef0123456789abcdef'], env);
  expect(r.code).toBe(3); // the name does not resolve (RFC 2606 .invalid)
  expect(r.stderr).toMatch(WARNING);
  expect(r.stderr.match(/warning:/g)).toHaveLength(1);
  expect(r.stderr).not.toMatch(/JIT_PLAIN_HTTP/); // the client library's process warning is the CLI's own line here, not a second one
  const viaEnv = await jit(['--json', 'lease', 'show', '0123456789abcdef0123456789abcdef'], {
    ...env,
    JIT_BROKER_URL: 'http://broker.invalid:1',
  });
  expect(viaEnv.stderr).toMatch(WARNING);
  expect(() => JSON.parse(viaEnv.stdout)).not.toThrow(); // stdout stays the JSON answer alone
}, 30_000);

test('https, or plain http to this host, warns of nothing', async () => {
  for (const url of ['https://broker.invalid:1', 'http://127.0.0.1:1', 'http://localhost:1', 'http://[::1]:1']) {
    const r = await jit(['--broker', url, 'lease', 'show', '0123456789abcdef0123456789abcdef'], env);
    expect({ url, code: r.code, warned: /warning:/.test(r.stderr) }).toEqual({ url, code: 3, warned: false });
  }
}, 30_000);
