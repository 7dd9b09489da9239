import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { validateConfig } from '../../src/config/load.ts';

/**
 * Every broker config example in the docs is one the broker accepts: users copy them. Found by a newcomer:
 * docs/providers/vault.md showed `token.noDefaultPolicy`, a key renamed to `defaultPolicy` long before, so the
 * example stopped startup with "unknown key". Each ```yaml block replaces its top-level sections of
 * config/broker.yaml and must validate; a block that starts with a comment naming another file
 * (`# docker-compose.yml`) is not a broker config.
 */
const docs = execFileSync('git', ['ls-files', 'README.md', 'docs/*.md', 'docs/**/*.md'], { encoding: 'utf8' }).split('\n').filter(Boolean);
const base = parseYaml(readFileSync('config/broker.yaml', 'utf8')) as Record<string, unknown>;

const examples = docs.flatMap((file) => {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/^```ya?ml\n([\s\S]*?)^```/gm)].map((m) => ({
    where: `${file}:${text.slice(0, m.index).split('\n').length}`,
    yaml: m[1]!,
  }));
});

test('the docs hold config examples (the extraction finds them)', () => {
  expect(examples.length).toBeGreaterThanOrEqual(8);
});

/** `# docker-compose.yml` as a block's first line: that file, not the broker's config. */
const otherFile = (yaml: string) => /^#\s*(?!broker\.yaml)[\w.-]+\.ya?ml\s*$/.test(yaml.split('\n')[0]!);

test.each(examples.filter((e) => !otherFile(e.yaml)))('the config example at $where is accepted', ({ yaml }) => {
  const snippet = parseYaml(yaml) as Record<string, unknown>;
  // Every ${NAME} it names is set, as the docs tell the operator to.
  const env = Object.fromEntries([...yaml.matchAll(/\$\{(\w+)\}/g)].map((m) => [m[1]!, 'example-value']));
  expect(() => validateConfig({ ...base, ...snippet }, env, resolve('config/broker.yaml'))).not.toThrow();
});
