import { readFileSync } from 'node:fs';
import { ConfigError } from '../../errors.ts';
import { skipVerify } from './transport.ts';

/**
 * Fails startup when NODE_EXTRA_CA_CERTS, the way to trust a private CA for Vault (docs/providers/vault.md),
 * names a file that cannot be read or holds no certificate. Node only prints a warning and goes on without it,
 * and a TLS failure at login is retried in the background (login-failure.ts): the broker would start and try
 * for ever what can never work until the file is fixed and the process restarted. Checked once, at startup,
 * and only where it matters: an https address with certificate checks on.
 */
export function checkExtraCaFile(address: string, env: NodeJS.ProcessEnv = process.env): void {
  const file = env.NODE_EXTRA_CA_CERTS;
  if (!file || !address.startsWith('https:') || skipVerify(env)) return;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new ConfigError(
      'providers.vault.address',
      `NODE_EXTRA_CA_CERTS names ${file}, which cannot be read (${why}): Node ignores it, so a Vault certificate from a private CA would never be trusted; fix the path and restart`,
    );
  }
  if (!text.includes('-----BEGIN CERTIFICATE-----'))
    throw new ConfigError(
      'providers.vault.address',
      `NODE_EXTRA_CA_CERTS names ${file}, which holds no PEM certificate (-----BEGIN CERTIFICATE-----): Node ignores it; fix the file and restart`,
    );
}
