import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { accessSync, constants, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ORCH, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { JIT, NODE20, ensureBuilt, node20Version } from '../helpers/cli.ts';

/**
 * What makes `jit` and `jit-broker/client` installable on their own: no
 * import of the server, a Node 20 build, the package.json wiring.
 */
const files = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)]));
const imports = (file: string) =>
  [
    ...readFileSync(file, 'utf8').matchAll(/(?:^|\n)\s*(?:import|export)[^'"]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g),
  ].map((m) => (m[1] ?? m[2])!);

let t: TestBroker;
beforeAll(async () => {
  await ensureBuilt();
  t = await startTestBroker('boundaries');
}, 120_000);
afterAll(async () => {
  await t?.close();
});

describe('src/client and src/cli', () => {
  it('import only each other, node: builtins and jose (no express, cedar, ioredis, bullmq, no server module)', () => {
    const offenders: string[] = [];
    for (const file of [...files('src/client'), ...files('src/cli')]) {
      for (const spec of imports(file)) {
        const ok =
          spec.startsWith('node:') ||
          spec === 'jose' ||
          (spec.startsWith('.') &&
            /^src\/(client|cli)\//.test(join(file, '..', spec)) &&
            !(file.startsWith('src/client') && join(file, '..', spec).startsWith('src/cli/')));
        if (!ok) offenders.push(`${file} imports ${spec}`);
      }
    }
    expect(offenders).toEqual([]);
  });

  it('compile to dist/client and dist/cli only, with .js imports', () => {
    expect(
      readdirSync('dist')
        .filter((d) => d === 'client' || d === 'cli')
        .sort(),
    ).toEqual(['cli', 'client']);
    for (const file of [...files('dist/client'), ...files('dist/cli')].filter((f) => f.endsWith('.js')))
      for (const spec of imports(file)) expect(spec.startsWith('.') ? spec.endsWith('.js') : true).toBe(true);
    expect(files('dist/client').some((f) => f.endsWith('index.d.ts'))).toBe(true);
  });
});

describe('package.json', () => {
  const pkg = JSON.parse(readFileSync('package.json', 'utf8'));

  it('declares the jit bin: compiled, executable, with a node shebang', () => {
    expect(pkg.bin).toEqual({ jit: 'dist/cli/jit.js' });
    expect(readFileSync(JIT, 'utf8').startsWith('#!/usr/bin/env node\n')).toBe(true);
    accessSync(JIT, constants.X_OK);
    expect(statSync(JIT).isFile()).toBe(true);
  });

  it('does not refuse Node 20 in engines, and builds on install', () => {
    expect(pkg.engines.node).toBe('>=20');
    expect(pkg.scripts.prepare).toMatch(/npm run build/);
    expect(pkg.scripts.build).toMatch(/build:cli/);
  });

  it('exports ./client, importable by name on Node 20', async () => {
    expect(node20Version()).toMatch(/^v20\./);
    const script = `import { BrokerClient, fromBroker, BrokerResponseError } from 'jit-broker/client';
const c = new BrokerClient({ url: process.env.URL, token: process.env.TOKEN });
const h = await c.health();
const err = await c.getTask('nope').catch((e) => e);
console.log(JSON.stringify({ h, fromBroker: typeof fromBroker, err: err instanceof BrokerResponseError ? err.code : String(err) }));`;
    const { stdout } = await promisify(execFile)(NODE20, ['--input-type=module', '-e', script], {
      env: { PATH: process.env.PATH, URL: t.url, TOKEN: t.issuer.svid(ORCH) },
    });
    expect(JSON.parse(stdout)).toEqual({ h: { status: 'ok' }, fromBroker: 'function', err: 'task_not_found' });
  });
});
