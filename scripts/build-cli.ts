/**
 * `npm run build:cli` (and `prepare`, so `npm install` leaves a working
 * `npx jit`): compiles src/client and src/cli with tsconfig.build.json and
 * puts them in dist/client and dist/cli, jit.js executable. Only those two
 * folders of dist/ are replaced (other builds write beside them), each by a
 * rename, so a `jit` running meanwhile never sees a half-written tree.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const tmp = join('dist', `.build-${process.pid}`);
rmSync(tmp, { recursive: true, force: true });
mkdirSync('dist', { recursive: true });
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
try {
  execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json', '--outDir', tmp], { stdio: 'inherit' });
  chmodSync(join(tmp, 'cli', 'jit.js'), 0o755);
  for (const dir of ['client', 'cli']) {
    const target = join('dist', dir);
    const old = join('dist', `.old-${process.pid}-${dir}`);
    if (existsSync(target)) renameSync(target, old);
    renameSync(join(tmp, dir), target);
    rmSync(old, { recursive: true, force: true });
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
