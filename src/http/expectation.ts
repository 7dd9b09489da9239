import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { badRequest } from '../errors.ts';
import { type Metrics, UNMATCHED_ROUTE } from '../metrics.ts';
import { oauthDescription } from './oauth-text.ts';
import { problemJson } from './problem.ts';

const DETAIL = 'The broker meets no expectation but 100-continue; send the request without this Expect header.';

/** The OAuth endpoints answer RFC 6749 errors, not problems (contract section 3), matched as Express routes them. */
const OAUTH_PATH = /^\/v1\/(?:token|introspect)\/?(?:\?|$)/i;

/**
 * An HTTP/1.1 request whose `Expect` names anything but `100-continue` never reaches Express: left to
 * Node it is answered 417 with an empty body, not the problem document every error of the API is.
 * With a `checkExpectation` listener Node leaves the answer to us. It is 400 `expectation_failed`, not
 * 417: RFC 9110 10.1.1 lets a server answer 417 (MAY), and the contract's statuses are the list callers
 * are written against, which has no 417 (as oversized headers answer 400, not 431: client-error.ts). On
 * the OAuth endpoints it is their RFC 6749 `invalid_request`. A body the caller sent anyway is read and
 * dropped by Node, so the connection stays usable. `Expect: 100-continue` is untouched: Node answers
 * `100 Continue` and hands the request on as usual (curl sends it for large bodies). The answer is counted
 * in `jit_http_request_duration_seconds` under the route `unmatched`.
 */
export function answerUnmetExpectations(server: Server, metrics: Pick<Metrics, 'observeHttp'>): void {
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    const start = process.hrtime.bigint();
    // Counted like every answer, though Express never sees it (src/http/app.ts counts the rest).
    res.on('finish', () => metrics.observeHttp(UNMATCHED_ROUTE, res.statusCode, start));
    const oauth = OAUTH_PATH.test(req.url ?? '');
    const body = oauth
      ? JSON.stringify({ error: 'invalid_request', error_description: oauthDescription(DETAIL) })
      : problemJson(badRequest('expectation_failed', DETAIL));
    if (oauth) {
      res.setHeader('Cache-Control', 'no-store');
      res.setHeader('Pragma', 'no-cache');
    }
    res.writeHead(400, {
      'Content-Type': `${oauth ? 'application/json' : 'application/problem+json'}; charset=utf-8`,
      'Content-Length': Buffer.byteLength(body),
    });
    res.end(body);
  });
}
