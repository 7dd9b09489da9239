/**
 * `npm start`: the development sign-in provider for the console
 * (scripts/dev-idp.ts, in this process, on 127.0.0.1 only) and the broker
 * (`node src/main.ts`, API and worker, its own process). Stopping either stops
 * both; the broker's exit code is ours.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { DEV_CONSOLE_CLIENT, DEV_IDP_KEYS, DEV_IDP_PORT, startDevIdp } from './dev-idp.ts';

const publicUrl = process.env.BROKER_PUBLIC_URL ?? `http://127.0.0.1:${process.env.PORT ?? 8080}`;
let idp: Awaited<ReturnType<typeof startDevIdp>> | undefined;
try {
  idp = await startDevIdp({
    port: DEV_IDP_PORT,
    privateJwks: JSON.parse(readFileSync(DEV_IDP_KEYS, 'utf8')),
    clients: [{ clientId: DEV_CONSOLE_CLIENT, redirectUris: [`${publicUrl}/console/callback`] }],
  });
} catch (err) {
  if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') {
    console.error(`dev-start: cannot start the development sign-in provider on 127.0.0.1:${DEV_IDP_PORT}: ${(err as Error).message}`);
    process.exit(1);
  }
  // Most often a first `npm start` (another PORT, same Redis: a second instance). The broker itself does not need the
  // provider, so it still starts; console sign-in goes through the first one, which only knows its own broker's callback.
  console.error(
    `dev-start: 127.0.0.1:${DEV_IDP_PORT} is taken (another npm start?): starting the broker without a sign-in provider of its own; ` +
      'console sign-in works on the broker whose npm start owns that port',
  );
}
if (idp) {
  console.error(
    `dev-start: console at ${publicUrl}/console/ — sign in at ${idp.issuer} as "admin" (admin and approver), ` +
      '"approver" (approver only) or any other name (neither), with any password',
  );
}
if (process.env.PORT && !process.env.JIT_BROKER_URL) {
  console.error(`dev-start: PORT=${process.env.PORT}: point the jit command at it with export JIT_BROKER_URL=${publicUrl}`);
}

const broker = spawn(process.execPath, ['src/main.ts', ...process.argv.slice(2)], { stdio: 'inherit' });
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => broker.kill(signal));
broker.on('exit', (code, signal) => {
  void (idp?.close() ?? Promise.resolve()).then(() => process.exit(code ?? (signal ? 1 : 0)));
});
