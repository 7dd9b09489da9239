import { makeRoom } from '../../src/http/bounded-map.ts';

/**
 * The in-memory rate-limit maps (blocked callers, insurance counts) are kept to 100,000 entries. When full with
 * live entries, each new caller used to rescan the whole map for ones that were over: ~3 ms of event loop per new
 * caller at 100,000, which an attacker with many identities or addresses could keep paying. Now a bounded look at
 * the oldest entries, which end first.
 */
const MAX = 10_000;

test('a full map of live entries takes a new one after looking at a few of its oldest, and forgets the oldest', () => {
  const m = new Map<string, number>();
  for (let i = 0; i < MAX; i++) m.set(`k${i}`, i);
  let looked = 0;
  const gone = () => {
    looked++;
    return false;
  };
  for (let i = 0; i < 1000; i++) {
    makeRoom(m, MAX, gone);
    m.set(`new${i}`, MAX + i);
    expect(m.size).toBe(MAX);
  }
  // Before: every insertion looked at all 10,000 (10,000,000 in all).
  expect(looked).toBeLessThanOrEqual(1000 * 32);
  expect(m.has('k0')).toBe(false);
  expect(m.has('k999')).toBe(false);
  expect(m.has('k1000')).toBe(true);
  expect(m.has('new999')).toBe(true);
});

test('entries that are over leave before any live one is forgotten', () => {
  const m = new Map<string, { ends: number }>();
  // The ten oldest are over.
  for (let i = 0; i < MAX; i++) m.set(`k${i}`, { ends: i < 10 ? 0 : 1 });
  makeRoom(m, MAX, (v) => v.ends === 0);
  expect(m.size).toBe(MAX - 10);
  for (let i = 10; i < MAX; i++) expect(m.has(`k${i}`)).toBe(true);
});

test('a map below its bound is left alone', () => {
  const m = new Map([['a', 0]]);
  makeRoom(m, 2, () => true);
  expect([...m.keys()]).toEqual(['a']);
});
