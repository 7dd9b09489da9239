import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

interface Found {
  root: string | undefined;
  version: string;
}

/** The jit-broker package this CLI was loaded from (the checkout, when run from one), found by walking up. */
function find(): Found {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg)) {
      try {
        const json = JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string; version?: string };
        if (json.name === 'jit-broker') return { root: dir, version: json.version ?? 'unknown' };
      } catch {
        /* not ours: keep walking */
      }
    }
    const up = dirname(dir);
    if (up === dir) return { root: undefined, version: 'unknown' };
    dir = up;
  }
}

let cached: Found | undefined;
const found = (): Found => {
  cached ??= find();
  return cached;
};

export const packageRoot = (): string | undefined => found().root;
export const packageVersion = (): string => found().version;
