import { copyFileSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPolicySet } from '../../src/policy/load.ts';
import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team (NFC normalisation): tenants, purposes, label values and the string values of `principal.claims`
 * reach Cedar in NFC, but a policy's own literals were taken as written. A forbid written with a decomposed
 * "blocké" (as text pasted from a macOS file name often is) then matched no task in either form: before the
 * normalisation it at least stopped the decomposed form, after it nothing, silently. A policy set with a
 * literal that is not NFC is now refused, naming the file and line.
 */
const NFD = 'blocke\u0301';
const NFC = NFD.normalize('NFC');
const AGENT_ID = `spiffe://dev.local${AGENT}`;

function policyDir(extra: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'jit-nfc-literals-'));
  for (const f of readdirSync('config/policies').filter((f) => f.endsWith('.cedar')))
    copyFileSync(join('config/policies', f), join(dir, f));
  for (const [name, text] of Object.entries(extra)) writeFileSync(join(dir, name), text);
  return dir;
}

test('a forbid whose literal is not NFC is refused at startup, not silently never applied (found by red team)', async () => {
  const policies = policyDir({
    'blocked.cedar': `// keeps tenant blocké out\nforbid (principal, action == Action::"openTask", resource)\n  when { context.task.tenant == "${NFD}" };\n`,
  });
  let t: TestBroker | undefined;
  try {
    const started = await startTestBroker('nfc-literals', { config: { policies } }).then(
      (b) => {
        t = b;
        return b;
      },
      (err: Error) => err,
    );
    if (!(started instanceof Error)) {
      // Before: the broker started and the forbid stopped neither form (201 for both).
      const statuses = [];
      for (const [id, tenant] of [
        ['nfc-lit-d', NFD],
        ['nfc-lit-c', NFC],
      ] as const) {
        const r = await call(started.url, 'POST', '/v1/tasks', started.as(ORCH), {
          taskId: id,
          agent: AGENT_ID,
          tenant,
          purpose: 'p',
          ttlSeconds: 600,
          grants: [{ role: 'demo-api' }],
        });
        statuses.push(r.status);
      }
      expect({ started: true, statuses }).toEqual({ started: false, statuses: [403, 403] });
    }
    expect((started as Error).message).toMatch(/blocked\.cedar:3:.*not in Unicode NFC/);
  } finally {
    await t?.close();
    rmSync(policies, { recursive: true, force: true });
  }
});

test('literals are checked where they meet normalised text; entity ids, comments and NFC text are not refused', async () => {
  const refused = [
    `permit (principal, action, resource) when { principal.claims.team like "*${NFD}*" };`,
    `forbid (principal, action, resource) when { context.task.labels has team && context.task.labels.team in ["x", "${NFD}"] };`,
    `forbid (principal, action, resource) when { context.task.purpose == "${NFD}" };`,
  ];
  for (const text of refused) {
    const dir = policyDir({ 'x.cedar': text });
    try {
      await expect(loadPolicySet(dir)).rejects.toMatchObject({ code: 'ERR_POLICY_NOT_NFC' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const accepted = `// ${NFD} in a comment\nforbid (principal == Workload::"https://issuer#jos${'e\u0301'}", action, resource) when { context.task.tenant == "${NFC}" };`;
  const dir = policyDir({ 'x.cedar': accepted });
  try {
    expect((await loadPolicySet(dir)).policies.length).toBeGreaterThan(0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
