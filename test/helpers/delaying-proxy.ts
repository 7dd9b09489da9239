import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * An HTTP proxy in front of `target` that forwards the first request whose path matches `held` only
 * `delayMs` after it came in (a load balancer or a Vault standby holding it), whether or not the client
 * is still waiting; every other request goes through at once. `landed()` resolves with the upstream's
 * status for the held request once it was forwarded and answered; `heldBody()` is what it carried.
 */
export async function delayingProxy(target: string, held: RegExp, delayMs: number) {
  let delayed = false;
  let landed: Promise<number> | undefined;
  let heldBody: Record<string, unknown> | undefined;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const forward = () =>
        new Promise<number>((done, fail) => {
          const up = request(new URL(req.url!, target), { method: req.method, headers: req.headers }, (r) => {
            const out: Buffer[] = [];
            r.on('data', (c: Buffer) => out.push(c));
            r.on('end', () => {
              // The client may have given up long ago: its socket is gone, the upstream did the work all the same.
              if (!res.destroyed && !res.writableEnded) {
                res.writeHead(r.statusCode!, r.headers);
                res.end(Buffer.concat(out));
              }
              done(r.statusCode!);
            });
          });
          up.on('error', fail);
          up.end(body);
        });
      if (!delayed && held.test(new URL(req.url!, target).pathname)) {
        delayed = true;
        heldBody = JSON.parse(body.toString('utf8')) as Record<string, unknown>;
        landed = new Promise((r) => setTimeout(r, delayMs)).then(forward);
      } else void forward().catch(() => res.destroy());
    });
  });
  const url = await new Promise<string>((r) =>
    server.listen(0, '127.0.0.1', () => r(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)),
  );
  return {
    url,
    landed: (): Promise<number> => landed ?? Promise.reject(new Error('nothing was held')),
    heldBody: () => heldBody,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}
