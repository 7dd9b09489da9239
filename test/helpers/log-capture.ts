import { Writable } from 'node:stream';
import { pino } from 'pino';

/** A pino logger whose lines are kept, parsed, for a test to look at. */
export function capturingLogger<Line = Record<string, unknown>>(level = 'warn'): { logger: pino.Logger; lines: Line[] } {
  const lines: Line[] = [];
  const logger = pino(
    { level },
    new Writable({
      write(chunk, _enc, cb) {
        lines.push(JSON.parse(String(chunk)) as Line);
        cb();
      },
    }),
  );
  return { logger, lines };
}
