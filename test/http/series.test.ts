import type { AddressInfo } from 'node:net';
import express, { type ErrorRequestHandler, type RequestHandler, Router } from 'express';
import { series } from '../../src/http/app.ts';

// series(a, b, c) must behave exactly as the separate layers of `r.use('/v1', a, b, c)` it replaces.
const mark =
  (name: string): RequestHandler =>
  (req, _res, next) => {
    (req as unknown as { seen: string[] }).seen.push(`${name} ${req.baseUrl} ${req.path}`);
    next();
  };
// What each handler does, chosen by the request's `?h2=` (the second handler's behaviour).
const second: RequestHandler = async (req, _res, next) => {
  (req as unknown as { seen: string[] }).seen.push(`h2 ${req.baseUrl} ${req.path}`);
  await new Promise((r) => setImmediate(r));
  switch (req.query.h2) {
    case 'throw':
      throw new Error('h2 threw');
    case 'reject-falsy':
      return Promise.reject(undefined);
    case 'next-err':
      return next(new Error('h2 next(err)'));
    case 'route':
      return next('route');
    case 'router':
      return next('router');
    default:
      return next();
  }
};
const syncThrow: RequestHandler = (req, _res, next) => {
  if (req.query.h3 === 'throw') throw new Error('h3 threw');
  next();
};

async function serve(combined: boolean): Promise<{ get(path: string): Promise<[number, string]>; close(): void }> {
  const app = express();
  app.use((req, _res, next) => {
    (req as unknown as { seen: string[] }).seen = [];
    next();
  });
  const r = Router();
  const handlers = [mark('h1'), second, syncThrow, mark('h4')];
  if (combined) r.use('/v1', series(...handlers));
  else r.use('/v1', ...handlers);
  r.get('/v1/x', (req, res) => void res.send(`route ${(req as unknown as { seen: string[] }).seen.join('|')}`));
  app.use(r);
  app.use((req, res) => void res.status(404).send(`none ${(req as unknown as { seen: string[] }).seen.join('|')}`));
  const onError: ErrorRequestHandler = (err, req, res, _next) =>
    void res.status(500).send(`error: ${(err as Error).message} ${(req as unknown as { seen: string[] }).seen.join('|')}`);
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

test('series runs handlers as the separate layers do: order, url, errors, rejections, route and router', async () => {
  const paths = [
    '/v1/x',
    '/V1/x',
    '/v1/x?h2=throw',
    '/v1/x?h2=reject-falsy',
    '/v1/x?h2=next-err',
    '/v1/x?h2=route',
    '/v1/x?h2=router',
    '/v1/x?h3=throw',
    '/v1/other',
    '/elsewhere',
  ];
  const separate = await serve(false);
  const combined = await serve(true);
  try {
    const expected = await Promise.all(paths.map((p) => separate.get(p)));
    const got = await Promise.all(paths.map((p) => combined.get(p)));
    expect(got).toEqual(expected);
    // What the comparison covers, so it cannot pass on two apps that answer nothing.
    expect(Object.fromEntries(paths.map((p, i) => [p, got[i]]))).toMatchObject({
      '/v1/x': [200, 'route h1 /v1 /x|h2 /v1 /x|h4 /v1 /x'],
      '/v1/x?h2=throw': [500, 'error: h2 threw h1 /v1 /x|h2 /v1 /x'],
      '/v1/x?h2=reject-falsy': [500, 'error: Rejected promise h1 /v1 /x|h2 /v1 /x'],
      '/v1/x?h2=next-err': [500, 'error: h2 next(err) h1 /v1 /x|h2 /v1 /x'],
      '/v1/x?h2=route': [200, 'route h1 /v1 /x|h2 /v1 /x|h4 /v1 /x'],
      '/v1/x?h2=router': [404, 'none h1 /v1 /x|h2 /v1 /x'],
      '/v1/x?h3=throw': [500, 'error: h3 threw h1 /v1 /x|h2 /v1 /x'],
      '/elsewhere': [404, 'none '],
    });
  } finally {
    separate.close();
    combined.close();
  }
});
