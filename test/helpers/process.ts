import { type ChildProcess, spawn } from 'node:child_process';

/** A broker started as its own process (`node src/main.ts`), so a test can SIGKILL it. */
export interface BrokerProcess {
  child: ChildProcess;
  /** Base URL once it listens (API processes only). */
  url: string;
  /** Everything it printed, for a failing test's message. */
  output(): string;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * How long a broker process may take to say it is up (a test that starts one allows for this in its own timeout).
 * A pure upper bound: only a process that never starts meets it. On a 2-core machine running the suite beside
 * other work (load 16), a start took over 60 s.
 */
export const START_TIMEOUT_MS = 120_000;

/**
 * Starts `src/main.ts` with `BROKER_CONFIG=configFile` on the project's Node
 * (the one running jest) and waits until it logs that it is up.
 */
export async function startBrokerProcess(
  configFile: string,
  opts: { args?: string[]; env?: Record<string, string>; timeoutMs?: number; cwd?: string } = {},
): Promise<BrokerProcess> {
  // `cwd`: another checkout of the broker (an older release, test/ops/upgrade.test.ts) runs its own src/main.ts.
  const child = spawn(process.execPath, ['src/main.ts', ...(opts.args ?? [])], {
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
    env: { ...process.env, BROKER_CONFIG: configFile, LOG_LEVEL: 'info', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const api = !opts.args?.includes('--worker');
  const url = await new Promise<string>((resolve, reject) => {
    // A process that did not start in time is killed: left running, it outlived the test run (an orphan
    // `src/main.ts` holding Redis connections and, for an API, a port). Generous: only a process that never
    // starts should meet it, and on a loaded 2-core machine (the whole suite beside it) a start took over 20 s.
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`broker process did not start within ${opts.timeoutMs ?? START_TIMEOUT_MS} ms:\n${out}`));
    }, opts.timeoutMs ?? START_TIMEOUT_MS);
    const onData = (d: Buffer) => {
      out += d.toString();
      for (const line of out.split('\n')) {
        if (api && line.includes('broker API listening')) {
          clearTimeout(timer);
          resolve(JSON.parse(line).url as string);
        } else if (!api && line.includes('revocation worker running')) {
          clearTimeout(timer);
          resolve('');
        }
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`broker process exited with ${code}:\n${out}`));
    });
  });
  child.removeAllListeners('exit');
  return {
    child,
    url,
    output: () => out,
    kill: (signal = 'SIGKILL') =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill(signal);
      }),
  };
}
