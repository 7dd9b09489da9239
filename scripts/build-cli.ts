/**
 * `npm run build:cli` (and `prepare`, so `npm install` leaves a working
 * `npx jit`): compiles src/client and src/cli to dist/ with
 * tsconfig.build.json and makes dist/cli/jit.js executable. Only those two
 * folders of dist/ are replaced: other builds write beside them.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';

for (const dir of ['dist/client', 'dist/cli']) rmSync(dir, { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
execFileSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { stdio: 'inherit' });
chmodSync('dist/cli/jit.js', 0o755);
