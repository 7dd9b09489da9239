import type { Command, Redis } from 'ioredis';

type Stream = { cork(): void; uncork(): void };

/**
 * Coalesces the commands one connection sends in one turn of the event loop
 * into one socket write. Without it each command is its own write(2): at
 * 2,000 issuances/s that was ~2.5 writes per request, and the syscalls were
 * the largest single item of the broker's main-thread CPU (writeUtf8String,
 * ~30%, docs/benchmarks.md). The socket is corked at the first command of a
 * turn and uncorked when the turn's I/O callbacks are done (`setImmediate`),
 * so nothing waits longer than the loop takes to come round (with pending
 * immediates the loop does not block in poll). `process.nextTick` would
 * only join the commands of one callback and saved little. ioredis's own
 * auto-pipelining stays off (its chained batches kept garbage alive, see
 * connection.ts).
 */
export function coalesceWrites(client: Redis): void {
  const send = client.sendCommand.bind(client) as (command: Command, stream?: unknown) => unknown;
  let corked: Stream | undefined;
  const flush = () => {
    const s = corked;
    corked = undefined;
    s?.uncork();
  };
  (client as { sendCommand: unknown }).sendCommand = (command: Command, stream?: unknown) => {
    const s = (client as unknown as { stream?: Stream }).stream;
    if (!corked && s && client.status === 'ready') {
      corked = s;
      s.cork();
      setImmediate(flush);
    }
    return send(command, stream);
  };
}
