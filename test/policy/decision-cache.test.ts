import type { StatefulAuthorizationCall } from '@cedar-policy/cedar-wasm/nodejs';
import { DecisionCache } from '../../src/policy/decision-cache.ts';
import type { PolicyDecision } from '../../src/policy/types.ts';

/** A distinct Cedar call per name; only the serialised form matters to the cache. */
function call(name: string): StatefulAuthorizationCall {
  return {
    principal: { type: 'Agent', id: name },
    action: { type: 'Action', id: 'issue' },
    resource: { type: 'Role', id: 'r' },
    context: {},
  } as unknown as StatefulAuthorizationCall;
}

describe('DecisionCache', () => {
  let computed: string[];
  const decide = (name: string) => () => {
    computed.push(name);
    return { allowed: true, policies: [name], errors: [] } satisfies PolicyDecision;
  };
  beforeEach(() => {
    computed = [];
  });

  it('evicts the least recently used decision, not the oldest inserted', () => {
    const cache = new DecisionCache(2);
    cache.get(call('a'), decide('a'));
    cache.get(call('b'), decide('b'));
    cache.get(call('a'), decide('a')); // a is now the most recently used
    cache.get(call('c'), decide('c')); // evicts b
    cache.get(call('a'), decide('a'));
    cache.get(call('b'), decide('b'));
    expect(computed).toEqual(['a', 'b', 'c', 'b']);
  });

  it('hands out copies, so a caller cannot change a remembered decision', () => {
    const cache = new DecisionCache(4);
    const first = cache.get(call('a'), decide('a'));
    first.policies.push('tampered');
    expect(cache.get(call('a'), decide('a')).policies).toEqual(['a']);
  });

  it('with size 0 decides every time', () => {
    const cache = new DecisionCache(0);
    cache.get(call('a'), decide('a'));
    cache.get(call('a'), decide('a'));
    expect(computed).toEqual(['a', 'a']);
  });
});
