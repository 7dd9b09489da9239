import type { Command, Redis } from 'ioredis';

/** The commands ioredis sends by itself when a subscriber connection comes back (autoResubscribe). */
const RESUBSCRIBE = new Set(['subscribe', 'psubscribe', 'ssubscribe']);

/** ioredis's message for a command of a client closed on purpose (its CONNECTION_CLOSED_ERROR_MSG). */
const CLOSED = 'Connection is closed.';

/**
 * When a subscriber connection comes back (Redis restarted, a failover, a dropped socket), ioredis sends
 * SUBSCRIBE again by itself and drops the command's promise. A rejection of it had no handler: an unhandled
 * rejection, which ends a Node process run with the default `--unhandled-rejections=throw`. Two ways
 * (test/redis/close-resubscribe.test.ts): the broker closing the client before Redis answered ("Connection
 * is closed.", at shutdown), and Redis refusing it (NOPERM: the ACL user lost the channel, at run time).
 * Every subscribe command of `client` gets a handler here, which tells `onError` of a refusal (not of a
 * close); a caller that awaits one (the broker's own subscribe at startup) still sees it fail. A Cluster's
 * subscriber catches its own re-subscribes (ioredis ClusterSubscriber): for one node's client only.
 */
export function handleResubscribes(client: Redis, onError: (err: Error) => void): void {
  const send = client.sendCommand.bind(client) as (command: Command, stream?: unknown) => Promise<unknown>;
  (client as { sendCommand: unknown }).sendCommand = (command: Command, stream?: unknown) => {
    const reply = send(command, stream);
    if (RESUBSCRIBE.has(command.name)) {
      command.promise.catch((err: Error) => {
        if (err.message !== CLOSED) onError(err);
      });
      // What ioredis returns may be another promise (a tracing wrapper when a diagnostics channel traces commands).
      if (reply !== command.promise) reply.catch(() => {});
    }
    return reply;
  };
}
