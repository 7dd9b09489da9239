import { canonicalJson } from '../../src/audit/record.ts';

/**
 * canonicalJson decides every audit hash: a record hashed by an older broker
 * must hash the same today. The reference is the original implementation.
 */
function reference(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(reference).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${reference((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

function random(depth: number, seed: { n: number }): unknown {
  const r = () => {
    seed.n = (seed.n * 1103515245 + 12345) % 2147483648;
    return seed.n / 2147483648;
  };
  const pick = Math.floor(r() * (depth > 3 ? 6 : 8));
  switch (pick) {
    case 0:
      return null;
    case 1:
      return r() < 0.5;
    case 2:
      return Math.floor(r() * 1e6) - 5e5;
    case 3:
      return `s${Math.floor(r() * 100)}"\\\u00e9\n`;
    case 4:
      return undefined;
    case 5:
      return r() * 10;
    case 6:
      return Array.from({ length: Math.floor(r() * 4) }, () => random(depth + 1, seed));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = Math.floor(r() * 5); i > 0; i--)
        o[['b', 'a', 'Z', 'é', '10', '2', 'k"q'][Math.floor(r() * 7)]!] = random(depth + 1, seed);
      return o;
    }
  }
}

test('matches the original canonical form on random values (audit hashes unchanged)', () => {
  const seed = { n: 42 };
  for (let i = 0; i < 5000; i++) {
    const v = random(0, seed);
    expect(canonicalJson(v)).toBe(reference(v));
  }
  const record = {
    action: 'credential.issue',
    actor: 'spiffe://x/agent',
    decision: 'allow',
    taskId: 't',
    detail: { ttlSeconds: 600, scopes: ['a', 'b'], z: undefined },
    seq: 3,
    prev: '0'.repeat(64),
  };
  expect(canonicalJson(record)).toBe(reference(record));
});

test('sorts key lists of every length as the original did (few keys in place, long lists by sort())', () => {
  const seed = { n: 7 };
  const r = () => {
    seed.n = (seed.n * 1103515245 + 12345) % 2147483648;
    return seed.n / 2147483648;
  };
  const names = ['a', 'B', 'b', 'aa', 'Z', '10', '2', '0', 'é', 'e\u0301', '\ud83d\ude80', 'k"q', '_', '~', ' '];
  for (const size of [0, 1, 2, 23, 24, 25, 60]) {
    for (let round = 0; round < 40; round++) {
      const o: Record<string, unknown> = {};
      for (let i = 0; i < size; i++)
        o[`${names[Math.floor(r() * names.length)]}${Math.floor(r() * (size + 1))}`] = i % 7 === 0 ? undefined : i;
      expect(canonicalJson(o)).toBe(reference(o));
      expect(canonicalJson({ nested: o, list: [o] })).toBe(reference({ nested: o, list: [o] }));
    }
  }
});
