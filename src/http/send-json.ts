import type { Response } from 'express';

/**
 * Answers `status` with `body` as JSON: the same status, headers (`Content-Type: application/json;
 * charset=utf-8`, `Content-Length`) and bytes as Express's `res.status(status).json(body)` with the
 * broker's settings (no `json spaces`, `json replacer` or `json escape`, no ETag), for a POST.
 * Why: `res.json` parses and formats the content type again, and turns a body over 1,000 characters
 * (an issued JWT's) into a Buffer first; on the issuance path that was ~1.5 KB of garbage per request
 * (scripts/bench/alloc.ts). Not for GET or HEAD: Express's freshness check and HEAD handling are not here.
 */
export function sendJson(res: Response, status: number, body: unknown): void {
  const json = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json; charset=utf-8');
  res.setHeader('Content-Length', String(Buffer.byteLength(json)));
  res.end(json);
}
