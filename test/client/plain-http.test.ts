import { afterEach, beforeEach, expect, it, jest } from '@jest/globals';
import { BrokerClient } from '../../src/client/index.ts';

/**
 * A client pointed at another host over plain http says so, once per host (a Node process warning): the identity
 * token goes out and the credentials come back unencrypted. Loopback and https say nothing.
 */
// Recorded where they are made: jest's sandboxed `process` does not see the real one's 'warning' events.
let seen: { code: unknown; message: string }[] = [];
beforeEach(() => {
  seen = [];
  jest.spyOn(process, 'emitWarning').mockImplementation(((message: string, opts?: { code?: string }) => {
    seen.push({ code: opts?.code, message });
  }) as typeof process.emitWarning);
});
afterEach(() => {
  jest.restoreAllMocks();
});

it('warns once per host about plain http to another host, with code JIT_PLAIN_HTTP', () => {
  new BrokerClient({ url: 'http://10.9.8.7:8080', token: 'x' });
  new BrokerClient({ url: 'http://10.9.8.7:8080/', token: 'x' });
  new BrokerClient({ url: 'http://broker.internal', token: 'x' });
  expect(seen.map((w) => [w.code, w.message])).toEqual([
    ['JIT_PLAIN_HTTP', expect.stringContaining('http://10.9.8.7:8080 is plain http to another host')],
    ['JIT_PLAIN_HTTP', expect.stringContaining('http://broker.internal is plain http')],
  ]);
});

it('says nothing for loopback or https', () => {
  for (const url of ['http://127.0.0.1:8080', 'http://localhost:9', 'http://[::1]:8080', 'https://broker.example.com'])
    new BrokerClient({ url, token: 'x' });
  expect(seen).toEqual([]);
});
