import type { Redis } from 'ioredis';

type Stream = {
  _write: (chunk: unknown, enc: unknown, cb: unknown) => unknown;
  _writev?: (chunks: { chunk: unknown }[], cb: unknown) => unknown;
};

/**
 * Counts the writes a connection's socket hands to the OS (one per _write or _writev call) from now on,
 * and keeps each write's text (RESP) in `texts`.
 */
export function countWrites(c: Redis): { writes: number; commands: number; texts: string[] } {
  const stream = (c as unknown as { stream: Stream }).stream;
  const seen = { writes: 0, commands: 0, texts: [] as string[] };
  const write = stream._write.bind(stream);
  const writev = stream._writev?.bind(stream);
  stream._write = (chunk, enc, cb) => {
    seen.writes += 1;
    seen.commands += 1;
    seen.texts.push(String(chunk));
    return write(chunk, enc, cb);
  };
  if (writev)
    stream._writev = (chunks, cb) => {
      seen.writes += 1;
      seen.commands += chunks.length;
      seen.texts.push(chunks.map((x) => String(x.chunk)).join(''));
      return writev(chunks, cb);
    };
  return seen;
}
