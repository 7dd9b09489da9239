import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { policyDir } from './fixtures.ts';

// The CLI runs under the project's Node 24 (type stripping), as operators run it.
const NODE = join(process.cwd(), 'node_modules/.bin/node');
const CLI = join(process.cwd(), 'scripts/policy.ts');

function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(NODE, [CLI, ...args], { cwd: process.cwd(), env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

let bad: Awaited<ReturnType<typeof policyDir>>;
beforeAll(async () => {
  bad = await policyDir({
    'good.cedar': 'permit (principal, action, resource);\n',
    'broken.cedar': '// one\n// two\npermit (principal, action, resource) when { context.x == };\n',
  });
});
afterAll(() => bad.cleanup());

describe('scripts/policy.ts', () => {
  test('check: the shipped directory', async () => {
    const r = await run(['check', 'config/policies']);
    expect(r).toEqual({
      code: 0,
      stdout: expect.stringMatching(/^config\/policies: 13 policies in 3 files, version [0-9a-f]{64}\n$/),
      stderr: '',
    });
  });

  test('check: defaults to the policies key of BROKER_CONFIG', async () => {
    const cfg = join(bad.dir, 'broker.yaml');
    await writeFile(cfg, `policies: ${bad.dir}\n`);
    const r = await run(['check'], { BROKER_CONFIG: cfg });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${bad.dir}/broken.cedar:3:`);
  });

  test("check: a broken file prints file:line and Cedar's message, exit 1", async () => {
    const r = await run(['check', bad.dir]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(new RegExp(`^${bad.dir}/broken\\.cedar:3:\\d+: unexpected token`));
  });

  test('explain: allow, with the deciding policies and where they are', async () => {
    const r = await run(['explain', 'config/policies/examples/support-issue.json', 'config/policies']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^ALLOW\n/);
    expect(r.stdout).toContain('permit support-read-tickets (config/policies/support-agent.cedar:10)');
  });

  test('explain: deny by a forbid, exit 2', async () => {
    const r = await run(['explain', 'config/policies/examples/prod-deploy-unapproved.json', 'config/policies']);
    expect(r.code).toBe(2);
    expect(r.stdout).toMatch(/^DENY\n {2}forbid prod-deploy-needs-approval \(config\/policies\/dev-assistant\.cedar:\d+\)/);
  });

  test('explain: prints what docs/policy.md shows, in file and line order', async () => {
    // Found by a newcomer: Cedar names the deciding policies in a hash set's order, so the first example printed
    // support-agent.cedar:10 before base.cedar:35, the other way round from the docs.
    const doc = readFileSync('docs/policy.md', 'utf8');
    const examples = [...doc.matchAll(/^\$ npm run -s policy -- (explain \S+)\n((?:(?!\$ |```).*\n)+)/gm)];
    expect(examples.length).toBe(2);
    for (const [, command, shown] of examples) {
      const r = await run(command!.split(' '));
      expect(r.stdout).toBe(shown);
    }
  });

  test('explain: a malformed request names the field', async () => {
    const req = join(bad.dir, 'req.json');
    await writeFile(
      req,
      JSON.stringify({ principal: { id: 'x', trust: 't', kind: 'nope' }, action: 'issue', resource: { type: 'Role', id: 'r' } }),
    );
    const r = await run(['explain', req, 'config/policies']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('principal.kind');
  });

  test('usage', async () => {
    const r = await run([]);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain('usage:');
  });
});
