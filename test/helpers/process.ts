import { type ChildProcess, spawn } from 'node:child_process';
import type { BrokerOptions } from '../../src/broker.ts';
import { loadConfig } from '../../src/config/load.ts';
import { dropPrefix, startTestBroker, type TestBroker, uniquePrefix } from './broker.ts';
import { TestIssuer } from './identity.ts';

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

/**
 * What the tests that run brokers as processes (to SIGKILL them, skew their clocks, run an older release) share:
 * one identity issuer, the Redis prefixes they make, the processes they start and the in-process brokers that take
 * over from them. Its afterAll stops all of them whether or not the test got that far: processes first (a process
 * left running outlives the run), then brokers, then what `onCleanup` was given (emulators, temporary trees), in
 * that order, and last drops the prefixes (nothing is left writing to them by then).
 */
export interface ProcessFixture {
  issuer: TestIssuer;
  /** Bearer header for a workload under dev.local, signed by `issuer`. */
  as(path: string): { authorization: string };
  /** A fresh Redis prefix, dropped after the file. */
  prefix(name: string): string;
  /** `startBrokerProcess`, killed after the file. */
  start(configFile: string, opts?: Parameters<typeof startBrokerProcess>[1]): Promise<BrokerProcess>;
  /** An in-process broker on the same config file (its prefix, its KEK), closed after the file. */
  startBroker(name: string, configFile: string, broker?: BrokerOptions): Promise<TestBroker>;
  /** Runs after the processes and brokers are stopped, before the prefixes are dropped. */
  onCleanup(fn: () => unknown): void;
}

export function processFixture(): ProcessFixture {
  const issuer = new TestIssuer();
  const prefixes: string[] = [];
  const procs: BrokerProcess[] = [];
  const brokers: TestBroker[] = [];
  const cleanups: (() => unknown)[] = [];
  afterAll(async () => {
    for (const p of procs) await p.kill();
    for (const b of brokers) await b.broker.close();
    for (const fn of cleanups) await fn();
    for (const p of prefixes) await dropPrefix(p);
  });
  return {
    issuer,
    as: (path) => ({ authorization: `Bearer ${issuer.svid(path)}` }),
    prefix(name) {
      const prefix = uniquePrefix(name);
      prefixes.push(prefix);
      return prefix;
    },
    async start(configFile, opts) {
      const p = await startBrokerProcess(configFile, opts);
      procs.push(p);
      return p;
    },
    async startBroker(name, configFile, broker) {
      const loaded = loadConfig({}, configFile);
      const b = await startTestBroker(name, { prefix: loaded.redis.prefix, issuer, loaded, ...(broker ? { broker } : {}) });
      brokers.push(b);
      return b;
    },
    onCleanup(fn) {
      cleanups.push(fn);
    },
  };
}
