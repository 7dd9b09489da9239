import { execFileSync, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

/**
 * The machine's own Node 20: the CLI must run on it (AWS SDKs exec
 * `credential_process` with whatever node is on PATH), not on the node@24
 * dev dependency that runs the broker and jest.
 */
export const NODE20 = process.env.JIT_TEST_NODE20 ?? '/usr/bin/node';
export const JIT = resolve('dist/cli/jit.js');
/** The node@24 dev dependency, which runs the TypeScript in scripts/ and docs/examples/ (type stripping). */
export const NODE24 = existsSync('node_modules/.bin/node') ? resolve('node_modules/.bin/node') : process.execPath;

/** The version of NODE20, checked to be 20.x (a test that thinks it runs Node 20 but does not proves nothing). */
export function node20Version(): string {
  const v = execFileSync(NODE20, ['--version'], { encoding: 'utf8' }).trim();
  if (!/^v20\./.test(v)) throw new Error(`${NODE20} is ${v}, not Node 20`);
  return v;
}

function newest(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

/**
 * Builds dist/ (npm run build:cli) when it is missing or older than
 * src/client or src/cli, so the tests never run a stale CLI. Test files run
 * in parallel: a lock file lets one build while the others wait.
 */
export async function ensureBuilt(): Promise<void> {
  const outputs = [JIT, resolve('dist/client/index.js')];
  const stale = () =>
    !outputs.every((f) => existsSync(f)) ||
    Math.max(newest('src/client'), newest('src/cli'), statSync('tsconfig.build.json').mtimeMs) >
      Math.min(...outputs.map((f) => statSync(f).mtimeMs));
  const lock = resolve('.build-cli.lock');
  while (stale()) {
    let fd: number | undefined;
    try {
      fd = openSync(lock, 'wx');
    } catch {
      // Another test file is building; a lock older than 5 minutes was left by a crashed run.
      if (existsSync(lock) && Date.now() - statSync(lock).mtimeMs > 300_000) rmSync(lock, { force: true });
      await new Promise((r) => setTimeout(r, 200));
      continue;
    }
    try {
      if (stale()) execFileSync(NODE24, ['scripts/build-cli.ts'], { stdio: 'pipe' });
    } finally {
      closeSync(fd);
      rmSync(lock, { force: true });
    }
  }
}

export interface JitResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs the compiled CLI on Node 20 with exactly `env` (plus PATH), without
 * blocking this process: the broker under test answers from it.
 */
export function jit(args: string[], env: Record<string, string | undefined> = {}, opts: { cwd?: string } = {}): Promise<JitResult> {
  return runCollect(NODE20, [JIT, ...args], env, opts);
}

/**
 * Runs `file` with exactly `env` (plus PATH), without blocking this process, and collects what it wrote.
 * `killMs`: killed (SIGKILL) if still running then.
 */
export function runCollect(
  file: string,
  args: string[],
  env: Record<string, string | undefined> = {},
  opts: { cwd?: string; killMs?: number } = {},
): Promise<JitResult> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(file, args, {
      env: { PATH: process.env.PATH, ...env } as NodeJS.ProcessEnv,
      cwd: opts.cwd ?? process.cwd(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const kill = opts.killMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), opts.killMs);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.on('error', (err) => {
      clearTimeout(kill);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(kill);
      resolveRun({ code, signal, stdout, stderr });
    });
  });
}
