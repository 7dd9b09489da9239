import type { Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { type Metrics, UNMATCHED_ROUTE } from '../metrics.ts';

const BODY = (detail: string) =>
  JSON.stringify({
    type: 'urn:jit-broker:problem:invalid_request',
    title: 'Bad Request',
    status: 400,
    detail,
    code: 'invalid_request',
  });

const TIMEOUT_BODY = JSON.stringify({
  type: 'urn:jit-broker:problem:request_timeout',
  title: 'Request Timeout',
  status: 408,
  detail: 'The request did not arrive in time (server.headersTimeoutSeconds, server.requestTimeoutSeconds).',
  code: 'request_timeout',
});

/** Node's socket while a response is in flight on it (what its own clientError default looks at). */
type HttpSocket = Duplex & { _httpMessage?: { _headerSent?: boolean } | null };

/**
 * A request Node's HTTP parser cannot read never reaches Express; left to
 * Node it is answered with an empty 400 (or 431 for oversized headers), not
 * the problem document every error of the API is. This answers it as one,
 * 400 `invalid_request` (oversized headers are malformed input too: 431 is
 * no status of the contract), with a fixed detail: nothing of the input is
 * echoed. While an earlier request's answer is in flight on the socket
 * (pipelining, or a body after a HEAD), its client reads whatever comes next
 * as that answer: then, as Node does, only a bare 400 head goes out if that
 * answer has not started, and nothing if it has. A request that did not
 * arrive in time is answered 408 `request_timeout` (just closed while an
 * earlier answer is in flight); a reset connection is just closed. Each 400 that goes out is counted in
 * `jit_http_request_duration_seconds` under the route `unmatched`, as
 * Express never saw the request.
 */
export function answerUnparsableRequests(server: Server, metrics: Pick<Metrics, 'observeHttp'>): void {
  server.on('clientError', (err: Error & { code?: string; rawPacket?: unknown }, socket: HttpSocket) => {
    const start = process.hrtime.bigint();
    if (err.code === 'ECONNRESET' || !socket.writable) {
      socket.destroy();
      return;
    }
    const inFlight = socket._httpMessage;
    // A request that did not arrive in time is told so before the close, as Node's own handler does when no answer
    // has started (a legitimate client on a slow link read a bare close as "socket hang up"). Its headers may have
    // arrived (a body trickling in): its answer, not yet started, is then the one in flight here.
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
      if (!inFlight?._headerSent) {
        socket.write(
          'HTTP/1.1 408 Request Timeout\r\nContent-Type: application/problem+json; charset=utf-8\r\n' +
            `Content-Length: ${Buffer.byteLength(TIMEOUT_BODY)}\r\nConnection: close\r\n\r\n${TIMEOUT_BODY}`,
        );
        metrics.observeHttp(UNMATCHED_ROUTE, 408, start);
      }
      socket.destroy();
      return;
    }
    if (!inFlight) {
      const body = BODY(
        err.code === 'HPE_HEADER_OVERFLOW' ? 'The request line or headers are too large.' : 'The request is not well-formed HTTP.',
      );
      // The answer to a HEAD has no body: its client would read one as the start of a next answer.
      const head = Buffer.isBuffer(err.rawPacket) && /^HEAD /i.test(err.rawPacket.subarray(0, 5).toString('latin1'));
      socket.end(
        'HTTP/1.1 400 Bad Request\r\nContent-Type: application/problem+json; charset=utf-8\r\n' +
          `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${head ? '' : body}`,
      );
      metrics.observeHttp(UNMATCHED_ROUTE, 400, start);
      return;
    }
    if (!inFlight._headerSent) {
      socket.write('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      metrics.observeHttp(UNMATCHED_ROUTE, 400, start);
    }
    socket.destroy();
  });
}
