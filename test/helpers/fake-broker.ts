import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A stand-in for the broker on a free loopback port, `handler` answering every request: for what the CLI and
 * the client make of answers a real broker gives rarely or never (garbage, endless bodies, hostile text).
 */
export interface FakeBroker {
  server: Server;
  /** `http://127.0.0.1:<port>`, for JIT_BROKER_URL. */
  url: string;
  /** Drops every connection (a handler may hold some open) and closes the server. */
  close(): Promise<void>;
}

export async function startFakeBroker(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<FakeBroker> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    server,
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    async close() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

/** Answers `status` with `body` as it is, labelled `content-type` (application/json unless said). */
export function send(res: ServerResponse, status: number, body: string, contentType = 'application/json'): void {
  res.writeHead(status, { 'content-type': contentType });
  res.end(body);
}
