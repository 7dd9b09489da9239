import { afterEach, describe, expect, test } from '@jest/globals';
import { join } from 'node:path';
import { PolicyLoadError } from '../../src/policy/errors.ts';
import { loadPolicySet } from '../../src/policy/load.ts';
import { policyDir } from './fixtures.ts';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

async function dirWith(files: Record<string, string>): Promise<string> {
  const f = await policyDir(files);
  cleanups.push(f.cleanup);
  return f.dir;
}

async function refusal(files: Record<string, string>): Promise<PolicyLoadError> {
  const dir = await dirWith(files);
  const err = await loadPolicySet(dir).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PolicyLoadError);
  return err as PolicyLoadError;
}

describe('loadPolicySet', () => {
  test('ids come from @id or <file>:<index>, with the line each policy starts on; files sorted', async () => {
    const dir = await dirWith({
      'b.cedar':
        '// comment with ; and "quotes"\npermit (principal, action == Action::"revoke", resource);\n\n@id("named")\nforbid (principal, action == Action::"issue", resource == Role::"x");\npermit (principal, action == Action::"revoke", resource);\n',
      'a.cedar': 'permit (principal, action == Action::"rotate", resource);\n',
      'notes.txt': 'not a policy',
      '.hidden.cedar': 'this would not parse',
    });
    const set = await loadPolicySet(dir);
    expect(set.files).toEqual(['a.cedar', 'b.cedar']);
    expect(set.policies.map((p) => [p.id, p.file, p.line, p.effect])).toEqual([
      ['a.cedar:0', 'a.cedar', 1, 'permit'],
      ['b.cedar:0', 'b.cedar', 2, 'permit'],
      ['named', 'b.cedar', 4, 'forbid'],
      ['b.cedar:2', 'b.cedar', 6, 'permit'],
    ]);
    expect(set.policies[2]?.resource).toBe('Role::"x"');
  });

  test.each([
    [
      'a parse error',
      {
        'ok.cedar': 'permit (principal, action, resource);\n',
        'bad.cedar': 'permit (principal, action, resource);\n\npermit (principal, action, resource)\nwhen { context.ttlSeconds <= };\n',
      },
      'ERR_POLICY_PARSE',
      /bad\.cedar:4:30: unexpected token `}`/,
    ],
    [
      'an unknown attribute (typo)',
      { 'typo.cedar': 'permit (principal, action == Action::"issue", resource)\nwhen { context.task.tennant == "acme" };\n' },
      'ERR_POLICY_VALIDATION',
      /typo\.cedar:2:8: .*`typo\.cedar:0`.*task\.tennant.*did you mean `tenant`/,
    ],
    [
      'a type error',
      { 't.cedar': '@id("bad-type")\npermit (principal, action == Action::"issue", resource)\nwhen { context.ttlSeconds == "300" };\n' },
      'ERR_POLICY_VALIDATION',
      /t\.cedar:3:8: .*`bad-type`/,
    ],
    [
      'an unknown entity type',
      { 'e.cedar': 'permit (principal == User::"bob", action, resource);\n' },
      'ERR_POLICY_VALIDATION',
      /e\.cedar:1:\d+: .*User/,
    ],
    [
      'an unknown action',
      { 'a.cedar': 'permit (principal, action == Action::"delete", resource);\n' },
      'ERR_POLICY_VALIDATION',
      /a\.cedar:1:\d+: .*delete/,
    ],
    [
      'a claim used as a record',
      { 'c.cedar': 'permit (principal, action, resource) when { principal.claims has a && principal.claims.a.b == "x" };\n' },
      'ERR_POLICY_VALIDATION',
      /c\.cedar:1:\d+/,
    ],
    [
      'a duplicate @id',
      {
        'a.cedar': '@id("same")\npermit (principal, action, resource);\n',
        'b.cedar': '\n@id("same")\nforbid (principal, action, resource);\n',
      },
      'ERR_POLICY_DUPLICATE_ID',
      /b\.cedar:2:1: policy id "same" is already used at .*a\.cedar:1/,
    ],
    [
      'a template',
      { 't.cedar': 'permit (principal, action, resource);\npermit (principal == ?principal, action, resource);\n' },
      'ERR_POLICY_TEMPLATE',
      /t\.cedar:2:1: policy templates/,
    ],
  ])("refuses %s with file, line and Cedar's message", async (_name, files, code, message) => {
    const err = await refusal(files);
    expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
  });

  test('one mistake in a policy for every action is reported once, not per action', async () => {
    const err = await refusal({ 'x.cedar': 'permit (principal, action, resource) when { context.task.tennant == "x" };\n' });
    expect(err.issues).toHaveLength(1);
  });

  test('a missing directory is refused', async () => {
    const err = await loadPolicySet('/nonexistent/policies').then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((err as PolicyLoadError).code).toBe('ERR_POLICY_DIR');
    expect((err as Error).message).toContain('/nonexistent/policies');
  });

  test('any claim or label name is accepted; reading one without `has` is only a warning', async () => {
    const set = await loadPolicySet(
      await dirWith({
        'w.cedar':
          'permit (principal, action == Action::"issue", resource)\nwhen { principal.claims.department == "support" && context.task.labels["cost-center"] == "42" };\n' +
          'forbid (principal, action, resource) when { context.task.tenant == "evil" };\n',
      }),
    );
    expect(set.policies).toHaveLength(2);
    expect(set.warnings.join('\n')).toMatch(/w\.cedar:2:\d+: .*claims\.department/);
    expect(set.warnings.join('\n')).toMatch(/cost-center/);
    expect(set.warnings.join('\n')).toMatch(/w\.cedar:3:\d+: .*`task` in context for Action::"rotate"/);
  });

  test('the version changes with the text and is stable otherwise', async () => {
    const a = await loadPolicySet(await dirWith({ 'a.cedar': 'permit (principal, action, resource);\n' }));
    const b = await loadPolicySet(await dirWith({ 'a.cedar': 'permit (principal, action, resource);\n' }));
    const c = await loadPolicySet(await dirWith({ 'a.cedar': 'forbid (principal, action, resource);\n' }));
    expect(a.version).toBe(b.version);
    expect(a.version).not.toBe(c.version);
  });
});

describe('the shipped config/policies', () => {
  test('parse and validate against the schema without warnings', async () => {
    const set = await loadPolicySet(join(process.cwd(), 'config/policies'));
    expect(set.files).toEqual(['base.cedar', 'dev-assistant.cedar', 'support-agent.cedar']);
    expect(set.policies.length).toBeGreaterThanOrEqual(10);
    expect(set.warnings).toEqual([]);
  });
});
