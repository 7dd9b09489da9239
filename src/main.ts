import './runtime-settings.ts'; // first: V8 and libuv settings before any other module allocates or uses the pool
import { startBroker } from './broker.ts';
import { loadConfig } from './config/load.ts';
import { ConfigError } from './errors.ts';
import { createLogger } from './logger.ts';

/**
 * `node src/main.ts` runs the API and the revocation worker together;
 * `--api` or `--worker` runs one of them alone (many of each may share a Redis).
 */
const args = new Set(process.argv.slice(2));
const api = !args.has('--worker') || args.has('--api');
const worker = !args.has('--api') || args.has('--worker');
const logger = createLogger();

let config;
try {
  config = loadConfig();
} catch (err) {
  if (err instanceof ConfigError) {
    console.error(`jit-broker: ${err.message}`);
    process.exit(2);
  }
  throw err;
}

try {
  const broker = await startBroker(config, { api, worker, logger });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down: no new requests, finishing in-flight work');
    broker.close().then(
      () => process.exit(0),
      (err) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
} catch (err) {
  console.error(`jit-broker: startup failed: ${(err as Error).message}${nextStep(err)}`);
  process.exit(1);
}

/** What to do about the startup failures a newcomer meets most: a second `npm start` beside a running one. */
function nextStep(err: unknown): string {
  const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
  if (e?.code !== 'EADDRINUSE') return '';
  const where = `${e.address}:${e.port}`;
  // 9090 as in the docs (8081 beside 8080 is the development sign-in provider of `npm start`).
  const other = e.port === 9090 ? 9091 : 9090;
  return (
    `\njit-broker: another process already listens on ${where} (a broker started earlier?): stop it, ` +
    `or start this one on another port (PORT=${other} npm start, or server.port in the config)`
  );
}
