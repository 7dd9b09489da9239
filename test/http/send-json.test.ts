import { request } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { sendJson } from '../../src/http/send-json.ts';

// sendJson must answer byte for byte what Express's res.status(s).json(body) answers (the Date header aside).
const bodies: Record<string, unknown> = {
  small: { leaseId: 'a'.repeat(32), ttlSeconds: 600 },
  // Over 1,000 characters: the size of an issued JWT's answer, where Express converts to a Buffer first.
  large: { access_token: 'x'.repeat(1200), scopes: ['tickets:read'], nested: { n: 1.5, b: true, z: null } },
  unicode: { purpose: 'déploiement 🚀', quote: '"\\</script>', control: '\u0001\u2028' },
  array: [1, 'two', { three: 3 }],
};

async function answer(url: string, path: string): Promise<{ status: number; headers: string[]; body: string }> {
  return await new Promise((resolve, reject) => {
    const req = request(`${url}${path}`, { method: 'POST' }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const headers: string[] = [];
        for (let i = 0; i < res.rawHeaders.length; i += 2)
          if (res.rawHeaders[i] !== 'Date') headers.push(`${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}`);
        resolve({ status: res.statusCode ?? 0, headers, body: Buffer.concat(chunks).toString('utf8') });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

test('sendJson answers the status, headers and bytes that res.status().json() does', async () => {
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.post('/express/:name/:status', (req, res) => {
    res.setHeader('Cache-Control', 'no-store');
    res.status(Number(req.params.status)).json(bodies[req.params.name]);
  });
  app.post('/direct/:name/:status', (req, res) => {
    res.setHeader('Cache-Control', 'no-store');
    sendJson(res, Number(req.params.status), bodies[req.params.name]);
  });
  const server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    for (const name of Object.keys(bodies)) {
      for (const status of ['201', '202']) {
        const expected = await answer(url, `/express/${name}/${status}`);
        const got = await answer(url, `/direct/${name}/${status}`);
        expect(got).toEqual(expected);
        expect(got.status).toBe(Number(status));
        expect(JSON.parse(got.body)).toEqual(bodies[name]);
        expect(got.headers).toContain('Content-Type: application/json; charset=utf-8');
      }
    }
  } finally {
    server.close();
  }
});
