import { pino } from 'pino';

export type Logger = pino.Logger;

/**
 * Structured JSON logs. Anything that could hold a secret is redacted by path
 * as a second line of defence; the first is never putting secrets in log calls.
 */
export function createLogger(opts: { level?: string; name?: string } = {}): Logger {
  return pino({
    name: opts.name ?? 'jit-broker',
    level: opts.level ?? process.env.LOG_LEVEL ?? 'info',
    base: undefined,
    redact: {
      paths: [
        '*.authorization',
        '*.Authorization',
        'req.headers.authorization',
        '*.token',
        '*.secret',
        '*.password',
        '*.credentials',
        '*.SecretAccessKey',
        '*.SessionToken',
        '*.access_token',
        '*.subject_token',
        '*.client_token',
        '*.secret_id',
      ],
      censor: '[redacted]',
    },
  });
}

/** A logger that drops everything, for tests and tools. */
export const silentLogger: Logger = pino({ level: 'silent' });
