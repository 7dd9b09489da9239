import type { Redis } from 'ioredis';

/** Counts the writes a connection's socket hands to the OS (one per _write or _writev call) from now on. */
export function countWrites(c: Redis): { writes: number; commands: number } {
  const stream = (c as unknown as { stream: { _write: Function; _writev?: Function } }).stream;
  const seen = { writes: 0, commands: 0 };
  const write = stream._write.bind(stream);
  const writev = stream._writev?.bind(stream);
  stream._write = (chunk: unknown, enc: unknown, cb: unknown) => {
    seen.writes += 1;
    seen.commands += 1;
    return write(chunk, enc, cb);
  };
  if (writev)
    stream._writev = (chunks: unknown[], cb: unknown) => {
      seen.writes += 1;
      seen.commands += chunks.length;
      return writev(chunks, cb);
    };
  return seen;
}
