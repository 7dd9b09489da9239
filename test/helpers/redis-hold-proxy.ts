import type { Socket } from 'node:net';
import { tcpProxy } from './tcp-proxy.ts';

/**
 * A TCP proxy in front of Redis that can cut a client's connection and then leave a command of the
 * reconnected one unanswered: `cutAndHold(word)` drops every connection that has sent `word` (a command
 * name, as the client writes it) so far, and the next connection to send it gets nothing more from Redis
 * from that write on (Redis still runs what it is sent; its answers are dropped). So a client is caught
 * with a command it sent on its own while reconnecting (ioredis's re-SUBSCRIBE) in flight, for as long
 * as the test likes, and the test can close it then.
 */
export async function redisHoldProxy(redisUrl: string) {
  const sent = new Map<Socket, string>();
  let hold: { word: string; held: () => void } | undefined;
  const proxy = await tcpProxy(
    redisUrl,
    (client, upstream) => {
      sent.set(client, '');
      let holding = false;
      client.on('data', (chunk: Buffer) => {
        const text = chunk.toString('latin1').toLowerCase();
        sent.set(client, (sent.get(client) ?? '') + text);
        if (hold && text.includes(`\r\n${hold.word}\r\n`)) {
          holding = true;
          hold.held();
          hold = undefined;
        }
        upstream.write(chunk);
      });
      upstream.on('data', (chunk: Buffer) => {
        if (!holding) client.write(chunk);
      });
    },
    (client) => sent.delete(client),
  );
  return {
    ...proxy,
    /** Drops the connections that sent `word`; resolves once a new connection sent it and its answers are held. */
    cutAndHold(word: string): Promise<void> {
      const held = new Promise<void>((r) => {
        hold = { word: word.toLowerCase(), held: r };
      });
      for (const [client, text] of sent) if (text.includes(`\r\n${word.toLowerCase()}\r\n`)) client.destroy();
      return held;
    },
  };
}
