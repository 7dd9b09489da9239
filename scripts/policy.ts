/**
 * Policy tool for operators, no broker needed.
 *
 *   node scripts/policy.ts check [dir]
 *       Parses and validates every *.cedar file of the policy directory.
 *       Prints the policy count and version, or file:line:column: message. Exit 1 if refused.
 *   node scripts/policy.ts explain <request.json> [dir]
 *       Evaluates one PolicyRequest (see docs/policy.md) and prints allow/deny
 *       and which policies decided, with file and line. Exit 0 on allow, 2 on deny.
 *
 * [dir] defaults to the `policies` key of $BROKER_CONFIG (default
 * config/broker.yaml) when it is a plain path, else config/policies.
 */
import { existsSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { createCedarEngine } from '../src/policy/cedar-engine.ts';
import { PolicyLoadError } from '../src/policy/errors.ts';
import { loadPolicySet } from '../src/policy/load.ts';
import { policyRequestSchema } from '../src/policy/request-schema.ts';

const USAGE = 'usage: npm run -s policy -- check [dir]\n       npm run -s policy -- explain <request.json> [dir]';

function defaultDir(): string {
  const file = process.env.BROKER_CONFIG ?? 'config/broker.yaml';
  if (existsSync(file)) {
    try {
      const policies = (parseYaml(readFileSync(file, 'utf8')) as { policies?: unknown } | null)?.policies;
      if (typeof policies === 'string' && !policies.includes('${')) return policies;
    } catch {
      // An unreadable config is the broker's problem to report; fall back.
    }
  }
  return 'config/policies';
}

async function check(dir: string): Promise<number> {
  const set = await loadPolicySet(dir);
  for (const w of set.warnings) console.error(`warning: ${w}`);
  console.log(`${dir}: ${set.policies.length} policies in ${set.files.length} files, version ${set.version}`);
  return 0;
}

async function explain(requestFile: string, dir: string): Promise<number> {
  const parsed = policyRequestSchema.safeParse(JSON.parse(await readFile(requestFile, 'utf8')));
  if (!parsed.success) {
    console.error(`${requestFile}: not a policy request:`);
    for (const i of parsed.error.issues) console.error(`  ${i.path.join('.') || '(root)'}: ${i.message}`);
    return 1;
  }
  const engine = await createCedarEngine({ dir, cacheSize: 0 });
  try {
    const d = engine.authorize(parsed.data);
    console.log(d.allowed ? 'ALLOW' : 'DENY');
    if (d.policies.length === 0) console.log('  no permit applies (deny by default)');
    // Cedar names the deciding policies in no set order (a hash set's): list them by file and line, so the
    // same request explains the same way every time and as docs/policy.md shows it.
    const place = (id: string) => {
      const p = engine.policy(id);
      return p ? `${p.file}\0${String(p.line).padStart(9, '0')}` : `\uffff${id}`;
    };
    for (const id of [...d.policies].sort((a, b) => (place(a) < place(b) ? -1 : place(a) > place(b) ? 1 : 0))) {
      const p = engine.policy(id);
      console.log(`  ${p?.effect ?? 'policy'} ${id}${p ? ` (${join(dir, p.file)}:${p.line})` : ''}`);
    }
    for (const e of d.errors) console.log(`  error: ${e}`);
    return d.allowed ? 0 : 2;
  } finally {
    await engine.close();
  }
}

async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  if (command === 'check' && args.length <= 1) return check(args[0] ?? defaultDir());
  if (command === 'explain' && args.length >= 1 && args.length <= 2) return explain(args[0] as string, args[1] ?? defaultDir());
  console.error(USAGE);
  return 64;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  console.error(err instanceof PolicyLoadError ? err.message : `error: ${(err as Error).message}`);
  process.exitCode = 1;
}
