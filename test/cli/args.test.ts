import { describe, expect, it } from '@jest/globals';
import { parseDuration, parseGrant, parseGrantJson, parseLabels, UsageError } from '../../src/cli/args.ts';
import { devSpiffeId } from '../../src/cli/dev-identity.ts';

describe('--grant role[:scope,scope][@maxTtl]', () => {
  it.each([
    ['tickets-api', { role: 'tickets-api' }],
    ['tickets-api:', { role: 'tickets-api', scopes: [] }],
    ['tickets-api:tickets:read', { role: 'tickets-api', scopes: ['tickets:read'] }],
    ['tickets-api:tickets:read,tickets:write', { role: 'tickets-api', scopes: ['tickets:read', 'tickets:write'] }],
    ['tickets-api@300', { role: 'tickets-api', maxTtlSeconds: 300 }],
    ['tickets-api:@5m', { role: 'tickets-api', scopes: [], maxTtlSeconds: 300 }],
    ['reports:s3:GetObject,s3:ListBucket@1h', { role: 'reports', scopes: ['s3:GetObject', 's3:ListBucket'], maxTtlSeconds: 3600 }],
    // An @ that is not followed by a duration belongs to the scope.
    ['mail:send@example.org', { role: 'mail', scopes: ['send@example.org'] }],
  ])('%s', (spec, grant) => {
    expect(parseGrant(spec)).toStrictEqual(grant);
  });

  it.each([[''], [':x'], ['bad role'], ['r:a,,b'], ['r:a,'], ['r@0']])('%j is bad usage', (spec) => {
    expect(() => parseGrant(spec)).toThrow(UsageError);
  });
});

describe('--grant-json', () => {
  it('takes one object or an array, sent as written', () => {
    expect(parseGrantJson('{"role":"a","scopes":[]}')).toEqual([{ role: 'a', scopes: [] }]);
    expect(parseGrantJson('[{"role":"a"},{"role":"b","maxTtlSeconds":60}]')).toEqual([{ role: 'a' }, { role: 'b', maxTtlSeconds: 60 }]);
  });
  it.each([['{'], ['[]x'], ['"a"'], ['{"scopes":[]}'], ['[1]']])('%j is bad usage', (text) => {
    expect(() => parseGrantJson(text)).toThrow(UsageError);
  });
});

describe('durations and labels', () => {
  it.each([
    ['90', 90],
    ['90s', 90],
    ['15m', 900],
    ['2h', 7200],
    ['1d', 86_400],
  ])('%s = %i s', (v, s) => {
    expect(parseDuration(v)).toBe(s);
  });
  it.each([['0'], ['-5'], ['1.5'], ['5w'], [''], ['m']])('%j is not a duration', (v) => {
    expect(parseDuration(v)).toBeUndefined();
  });
  it('labels split at the first =', () => {
    expect(parseLabels(['ticket=4711', 'q=a=b', 'empty='])).toEqual({ ticket: '4711', q: 'a=b', empty: '' });
    expect(parseLabels([])).toBeUndefined();
    expect(() => parseLabels(['=x'])).toThrow(UsageError);
    expect(() => parseLabels(['novalue'])).toThrow(UsageError);
  });
  it('a label key given twice is bad usage naming the key, not the last value kept silently', () => {
    expect(() => parseLabels(['a=b', 'team=blue', 'a=c'])).toThrow(new UsageError('--label key "a" is given twice'));
    // Also with the same value, and for keys an object literal would treat apart.
    expect(() => parseLabels(['a=b', 'a=b'])).toThrow(new UsageError('--label key "a" is given twice'));
    expect(() => parseLabels(['__proto__=x', '__proto__=y'])).toThrow(new UsageError('--label key "__proto__" is given twice'));
    expect(parseLabels(['a=b', 'A=c'])).toEqual({ a: 'b', A: 'c' });
  });
});

describe('jit dev token --sub', () => {
  it.each([
    ['/agent/support', 'spiffe://dev.local/agent/support'],
    ['agent/support', 'spiffe://dev.local/agent/support'],
    ['spiffe://dev.local/orchestrator/ci', 'spiffe://dev.local/orchestrator/ci'],
  ])('%s → %s', (sub, id) => {
    expect(devSpiffeId(sub)).toBe(id);
  });
  it.each([['spiffe://example.org/agent/x'], ['spiffe://dev.local'], ['/'], [''], ['/agent//x'], ['/agent/../ops'], ['/agent/a b']])(
    '%j is refused',
    (sub) => {
      expect(() => devSpiffeId(sub)).toThrow(UsageError);
    },
  );
});
