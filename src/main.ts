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
  console.error(`jit-broker: startup failed: ${(err as Error).message}`);
  process.exit(1);
}
