import { illFormedField } from '../../src/http/well-formed.ts';

// Every body is checked; the field path names the first ill-formed string (value, or the object holding the key).
test('illFormedField names the ill-formed value or key, and passes well-formed bodies of any shape', () => {
  const cases: [unknown, string | undefined][] = [
    [{ taskId: 't', role: 'r', scopes: ['a', 'b'], ttlSeconds: 60 }, undefined],
    [{ purpose: 'deploy \ud83d\ude80', labels: { k: 'v' } }, undefined],
    [null, undefined],
    [42, undefined],
    ['\ud800', '(body)'],
    [{ tenant: 'acme\ud800' }, 'tenant'],
    [{ labels: { 'k\udc00': 'v' } }, 'labels'],
    [{ 'k\udc00': 'v' }, '(body)'],
    [{ labels: { ticket: '\udbff\udbff' } }, 'labels.ticket'],
    [{ scopes: ['ok', 'x\udfff'] }, 'scopes.1'],
    [[{ a: [1, null, true, '\ud800'] }], '0.a.3'],
    [{ deep: JSON.parse(`${'['.repeat(20_000)}"\\ud800"${']'.repeat(20_000)}`) }, `deep${'.0'.repeat(20_000)}`],
    [{ deep: JSON.parse(`${'['.repeat(20_000)}${']'.repeat(20_000)}`) }, undefined],
  ];
  for (const [body, field] of cases) expect(illFormedField(body)).toBe(field);
});
