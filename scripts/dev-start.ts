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
let idp: Awaited<ReturnType<typeof startDevIdp>>;
try {
  idp = await startDevIdp({
    port: DEV_IDP_PORT,
    privateJwks: JSON.parse(readFileSync(DEV_IDP_KEYS, 'utf8')),
    clients: [{ clientId: DEV_CONSOLE_CLIENT, redirectUris: [`${publicUrl}/console/callback`] }],
  });
} catch (err) {
  console.error(`dev-start: cannot start the development sign-in provider on 127.0.0.1:${DEV_IDP_PORT}: ${(err as Error).message}`);
  process.exit(1);
}
console.error(
  `dev-start: console at ${publicUrl}/console/ — sign in at ${idp.issuer} as "admin" (admin and approver), ` +
    '"approver" (approver only) or any other name (neither), with any password',
);

const broker = spawn(process.execPath, ['src/main.ts', ...process.argv.slice(2)], { stdio: 'inherit' });
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => broker.kill(signal));
broker.on('exit', (code, signal) => {
  void idp.close().then(() => process.exit(code ?? (signal ? 1 : 0)));
});
