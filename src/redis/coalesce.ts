import { Cluster, type Command, type Redis } from 'ioredis';

type Stream = { cork(): void; uncork(): void };

/** Each coalesced connection's "write what is corked now". */
const flushers = new WeakMap<object, () => void>();

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
  flushers.set(client, flush);
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

/**
 * Writes what `client`'s connections hold corked now instead of when the
 * turn's setImmediate comes. For a caller that sends from a setImmediate of
 * its own (src/http/rate-limit.ts): that usually runs after the turn's
 * uncork, so its command would be corked anew and wait a loop iteration.
 */
export function writeNow(client: Redis | Cluster): void {
  if (client instanceof Cluster) for (const node of client.nodes()) flushers.get(node)?.();
  else flushers.get(client)?.();
}
