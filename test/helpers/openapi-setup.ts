import express from 'express';
import { openApiChecker, registeredRoutes } from './openapi.ts';

/**
 * Jest setup (jest.config.js `setupFilesAfterEnv`): every response a broker
 * sends in any test is checked against docs/openapi.yaml, whoever asked for
 * it: `call()`, raw fetch, node:http, an AWS SDK, a CLI child process or the
 * console in Chromium. The check sits where Express writes responses, in this
 * test file's own copy of Express (Jest loads modules per test file), and only
 * for apps that serve `/openapi.json`, i.e. brokers, not the test's fake
 * upstreams. A response that does not conform fails the test that was
 * running when it was sent (or the file, after its last test).
 */

type Res = express.Response;

/** Operation id → statuses seen (test/openapi/coverage reads it). */
export const seen = new Map<string, Set<number>>();
/** Every broker app that answered in this test file. */
export const brokerApps = new Set<express.Application>();
const violations: string[] = [];
const isBroker = new WeakMap<object, boolean>();
/** The body of each response as it is written. */
const bodies = new WeakMap<Res, Buffer[]>();

function keep(res: Res, chunk: Buffer | undefined): void {
  if (!chunk) return;
  const chunks = bodies.get(res);
  if (chunks) chunks.push(chunk);
  else bodies.set(res, [chunk]);
}

function servesOpenApi(app: express.Application): boolean {
  let known = isBroker.get(app);
  if (known === undefined) {
    known = registeredRoutes(app as never).some((r) => r.path === '/openapi.json');
    isBroker.set(app, known);
  }
  return known;
}

function toBuffer(chunk: unknown, encoding: unknown): Buffer | undefined {
  if (chunk === undefined || chunk === null || typeof chunk === 'function') return undefined;
  if (typeof chunk === 'string') return Buffer.from(chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8');
  if (chunk instanceof Uint8Array) return Buffer.from(chunk);
  return undefined;
}

function record(res: Res): void {
  const req = res.req;
  const app = res.app;
  if (!app || !servesOpenApi(app)) return;
  brokerApps.add(app);
  const verdict = openApiChecker().check({
    method: req.method,
    url: req.originalUrl,
    status: res.statusCode,
    headers: res.getHeaders() as Record<string, unknown>,
    body: Buffer.concat(bodies.get(res) ?? []),
    requestBody: (req as { body?: unknown }).body,
    requestContentType: req.headers['content-type'],
  });
  if (verdict.operation) {
    const id = verdict.console ? `console:${verdict.operation.id}` : verdict.operation.id;
    seen.set(id, (seen.get(id) ?? new Set()).add(res.statusCode));
  }
  violations.push(...verdict.errors);
}

const proto = express.response as unknown as Res;
const { write, end } = proto;
proto.write = function (this: Res, chunk: unknown, ...rest: unknown[]) {
  keep(this, toBuffer(chunk, rest[0]));
  return (write as (...a: unknown[]) => boolean).call(this, chunk, ...rest);
} as Res['write'];
proto.end = function (this: Res, ...args: unknown[]) {
  const [chunk, encoding] = args;
  keep(this, toBuffer(chunk, encoding));
  try {
    record(this);
  } catch (err) {
    violations.push(`checking ${this.req?.method} ${this.req?.originalUrl} failed: ${(err as Error).message}`);
  }
  return (end as (...a: unknown[]) => Res).apply(this, args);
} as Res['end'];

function assertConforms(): void {
  if (violations.length === 0) return;
  const found = violations.splice(0);
  throw new Error(
    `${found.length} broker response(s) do not conform to docs/openapi.yaml:\n${found.slice(0, 20).join('\n')}${found.length > 20 ? '\n...' : ''}`,
  );
}

afterEach(assertConforms);
afterAll(assertConforms);
