import { connect, createServer, type Server, type Socket } from 'node:net';

export interface TcpProxy {
  /** A Redis URL that reaches the target through the proxy. */
  url: string;
  /** Ends every connection still open, then stops listening. */
  close(): Promise<void>;
}

/**
 * The plumbing the fault-injecting Redis proxies share: each client connection gets its own connection to
 * `redisUrl`'s host and port; `pipe` wires the two (what is forwarded, dropped or held is the caller's), and
 * either side closing or failing ends both (`onEnd` then forgets whatever the caller kept for that client).
 */
export async function tcpProxy(
  redisUrl: string,
  pipe: (client: Socket, upstream: Socket) => void,
  onEnd?: (client: Socket) => void,
): Promise<TcpProxy> {
  const target = new URL(redisUrl);
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(Number(target.port || 6379), target.hostname);
    sockets.add(client).add(upstream);
    pipe(client, upstream);
    const end = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
      onEnd?.(client);
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as { port: number };
  return {
    url: `redis://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}
