import { performance } from 'node:perf_hooks';
import { Command, type Redis } from 'ioredis';
import type { Logger } from '../logger.ts';

/** What a command gets while Redis is known to be stalled: mapped to 503 not_ready like a timeout. */
export class RedisStalledError extends Error {
  override readonly name = 'RedisStalledError';
  constructor() {
    super('Redis stalled: a command timed out and Redis has not answered a PING since');
  }
}

/** Longest a command waits for the PING that decides whether it goes through while Redis is stalled. */
const PROBE_TIMEOUT_MS = 250;
/** Pause between two unanswered probes. */
const PROBE_PAUSE_MS = 50;

/**
 * Fails commands fast while one Redis server is stalled (a frozen host, a
 * long fork, a partition that drops nothing), so a request answers 503
 * within about `redis.commandTimeoutMs` instead of once per Redis call it
 * makes: a request makes several calls one after the other, and each would
 * otherwise wait out its own timeout.
 *
 * The first "Command timed out" trips the guard. From then on a PING probes
 * the server back to back (each waiting at most 250 ms), and every new
 * command waits for the probe in flight: it is sent if the server answered,
 * refused with {@link RedisStalledError} if not. So while the server is
 * stalled a command costs at most 250 ms, and once it answers (a slow script
 * that finished, a resumed process) commands go through with no window of
 * false refusals. A connection that is reconnecting refuses at once; one that
 * becomes ready again clears the guard. On a Cluster each node's connection
 * has its own guard.
 */
export function guardStalls(client: Redis, opts: { timeoutMs: number; logger: Logger }): void {
  const probeTimeout = Math.min(PROBE_TIMEOUT_MS, opts.timeoutMs);
  const send = client.sendCommand.bind(client) as (command: Command, stream?: unknown) => unknown;
  let stalledSince: number | undefined;
  let probing: Promise<boolean> | undefined;
  // Closed by us: stop probing. A client closed while reconnecting never reaches `end`, and each
  // probe's PING holds a timer, so probing on would keep a shut-down process alive.
  let closed = false;
  client.once('end', () => {
    closed = true;
  });
  const disconnect = client.disconnect.bind(client);
  client.disconnect = (reconnect?: boolean) => {
    if (!reconnect) closed = true;
    return disconnect(reconnect);
  };

  const probe = (): Promise<boolean> => {
    probing ??= new Promise<boolean>((resolve) => {
      const ping = new Command('ping', []);
      ping.setTimeout(probeTimeout);
      send(ping);
      ping.promise.then(
        () => resolve(true),
        () => resolve(false),
      );
    }).then((answered) => {
      probing = undefined;
      if (answered && stalledSince !== undefined) {
        opts.logger.warn({ stalledMs: Math.round(performance.now() - stalledSince) }, 'Redis answers again; commands go through');
        stalledSince = undefined;
      } else if (!answered && !closed) {
        setTimeout(() => void probe(), PROBE_PAUSE_MS).unref();
      }
      return answered;
    });
    return probing;
  };

  const forward = (command: Command, stream?: unknown): void => {
    send(command, stream);
    command.promise.catch((err: unknown) => {
      if (stalledSince === undefined && err instanceof Error && err.message.startsWith('Command timed out')) {
        // Monotonic: the log's stalledMs is not moved by a step of the wall clock during the stall.
        stalledSince = performance.now();
        opts.logger.warn(
          { timeoutMs: opts.timeoutMs },
          'Redis did not answer within redis.commandTimeoutMs; commands fail fast (503) until it answers a PING',
        );
        void probe();
      }
    });
  };

  // A connection that becomes ready has just had Redis answer its handshake.
  client.on('ready', () => {
    stalledSince = undefined;
  });

  (client as { sendCommand: unknown }).sendCommand = (command: Command, stream?: unknown) => {
    // While connecting, ioredis sends its handshake (AUTH, SELECT, the ready check) through here:
    // holding those back for a PING that itself waits for the handshake would never end.
    if (stalledSince === undefined || client.status === 'connect') forward(command, stream);
    else if (client.status !== 'ready') command.reject(new RedisStalledError());
    else
      void probe().then((answered) => {
        if (answered) forward(command, stream);
        else command.reject(new RedisStalledError());
      });
    return command.promise;
  };
}
