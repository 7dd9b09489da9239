import type { AddressInfo } from 'node:net';
import express, { type ErrorRequestHandler, Router } from 'express';
import { firstOf, under } from '../../src/http/app.ts';

// firstOf must route exactly as the consecutive `app.use(under(...))` calls it replaces.
function routers() {
  const a = Router();
  a.get('/v1/things', (_req, res) => void res.send('a: list'));
  a.get('/v1/boom', () => {
    throw new Error('boom');
  });
  const b = Router();
  b.get('/v1/things/:id', (req, res) => void res.send(`b: ${req.params.id}`));
  b.get('/v1/boom', (_req, res) => void res.send('b: must not run after an error'));
  const c = Router();
  c.get('/other', (_req, res) => void res.send('c'));
  return [under(['/v1/things', '/v1/boom'], a), under(['/v1/things', '/v1/boom'], b), under(['/other'], c)] as const;
}

async function serve(combined: boolean): Promise<{ get(path: string): Promise<[number, string]>; close(): void }> {
  const app = express();
  const guards = routers();
  if (combined) app.use(firstOf(...guards));
  else for (const g of guards) app.use(g);
  app.use((_req, res) => void res.status(404).send('none'));
  const onError: ErrorRequestHandler = (err, _req, res, _next) => void res.status(500).send(`error: ${(err as Error).message}`);
  app.use(onError);
  const server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    async get(path) {
      const res = await fetch(url + path);
      return [res.status, await res.text()];
    },
    close: () => server.close(),
  };
}

test('firstOf answers every path as the separate guards do: fall-through, errors, case, no match', async () => {
  const paths = ['/v1/things', '/V1/Things', '/v1/things/42', '/v1/things/42/more', '/v1/boom', '/other', '/OTHER', '/nowhere', '/v1'];
  const separate = await serve(false);
  const combined = await serve(true);
  try {
    const expected = await Promise.all(paths.map((p) => separate.get(p)));
    const got = await Promise.all(paths.map((p) => combined.get(p)));
    expect(got).toEqual(expected);
    // What the comparison covers, so it cannot pass on two routers that answer nothing.
    expect(Object.fromEntries(paths.map((p, i) => [p, got[i]]))).toMatchObject({
      '/v1/things': [200, 'a: list'],
      '/V1/Things': [200, 'a: list'],
      '/v1/things/42': [200, 'b: 42'],
      '/v1/boom': [500, 'error: boom'],
      '/OTHER': [200, 'c'],
      '/nowhere': [404, 'none'],
    });
  } finally {
    separate.close();
    combined.close();
  }
});

test("firstOf lists its routers' routes", () => {
  const combined = firstOf(...routers());
  expect(combined.stack.map((l) => (l as { route?: { path: string } }).route?.path)).toEqual([
    '/v1/things',
    '/v1/boom',
    '/v1/things/:id',
    '/v1/boom',
    '/other',
  ]);
});
