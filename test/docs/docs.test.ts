import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** The docs say what the code does, and the repository stands alone. */
const tracked = execFileSync('git', ['ls-files'], { encoding: 'utf8' })
  .split('\n')
  .filter((f) => f && existsSync(f));

test('the error codes in the README and docs/troubleshooting.md are generated from src/errors.ts and up to date', () => {
  const r = spawnSync(process.execPath, ['scripts/gen-docs.ts', '--check'], { encoding: 'utf8' });
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
});

test('nothing in the repository points outside it', () => {
  const outside = tracked.filter(
    (f) => /\.(md|ts|js|json|ya?ml|cedar|sh)$/.test(f) && /\.\.\/shared\/|\/work\/(shared|main)\b/.test(readFileSync(f, 'utf8')),
  );
  expect(outside).toEqual([]);
});

test('every relative link in the markdown resolves to a file of the repository', () => {
  const broken: string[] = [];
  for (const f of tracked.filter((x) => x.endsWith('.md'))) {
    for (const m of readFileSync(f, 'utf8').matchAll(/\]\(([^)\s#]+)(#[^)]*)?\)/g)) {
      const target = m[1]!;
      if (/^[a-z]+:/.test(target)) continue; // http:, https:, mailto:
      if (!existsSync(join(dirname(f), target))) broken.push(`${f}: ${target}`);
    }
  }
  expect(broken).toEqual([]);
});
