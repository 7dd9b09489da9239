import { readFileSync } from 'node:fs';
import { BrokerClient } from '../../src/client/broker-client.ts';

/**
 * docs/cli.md lists every method of `jit-broker/client`'s BrokerClient. Found by a newcomer: `taskLeases`, the
 * way past a task's first 100 leases, was missing from the list.
 */
test('every public BrokerClient method is named in docs/cli.md', () => {
  const source = readFileSync('src/client/broker-client.ts', 'utf8');
  const hidden = new Set([...source.matchAll(/^ {2}private (?:async )?(\w+)[<(]/gm)].map((m) => m[1]));
  const methods = Object.getOwnPropertyNames(BrokerClient.prototype).filter((m) => m !== 'constructor' && !hidden.has(m));
  expect(methods.length).toBeGreaterThan(20);
  const doc = readFileSync('docs/cli.md', 'utf8');
  expect(methods.filter((m) => !doc.includes(`\`${m}\``) && !doc.includes(`\`${m}(`))).toEqual([]);
});
