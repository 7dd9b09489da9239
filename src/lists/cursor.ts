import { createHmac, timingSafeEqual } from 'node:crypto';
import { canonicalJson } from '../audit/record.ts';
import { badRequest } from '../errors.ts';

/** How long a cursor stays usable. */
const CURSOR_TTL_MS = 60 * 60_000;

/**
 * Opaque list cursors (contract section 3): the position is base64url JSON,
 * MACed together with the caller and the filters, so a cursor cannot be
 * edited, replayed by another caller, or reused with other filters (each
 * answers 400 invalid_cursor). The MAC key is derived from the KEK, so every
 * instance accepts every other instance's cursors.
 */
export class CursorCodec {
  private readonly key: Buffer;
  private readonly now: () => number;

  constructor(key: Buffer, now: () => number = Date.now) {
    this.key = key;
    this.now = now;
  }

  encode(position: unknown, bind: { caller: string; filters: Record<string, unknown> }): string {
    const body = Buffer.from(JSON.stringify({ p: position, e: this.now() + CURSOR_TTL_MS })).toString('base64url');
    return `${body}.${this.mac(body, bind)}`;
  }

  /** The position, or 400 invalid_cursor. */
  decode<T>(cursor: string, bind: { caller: string; filters: Record<string, unknown> }): T {
    const bad = () => badRequest('invalid_cursor', 'The cursor is malformed, expired, or for another caller or other filters.');
    const dot = cursor.indexOf('.');
    if (dot < 1 || cursor.length > 8192) throw bad();
    const body = cursor.slice(0, dot);
    const given = Buffer.from(cursor.slice(dot + 1), 'base64url');
    const want = Buffer.from(this.mac(body, bind), 'base64url');
    if (given.length !== want.length || !timingSafeEqual(given, want)) throw bad();
    let parsed: { p: T; e: number };
    try {
      parsed = JSON.parse(Buffer.from(body, 'base64url').toString('utf8'));
    } catch {
      throw bad();
    }
    if (typeof parsed.e !== 'number' || parsed.e < this.now()) throw bad();
    return parsed.p;
  }

  private mac(body: string, bind: { caller: string; filters: Record<string, unknown> }): string {
    return createHmac('sha256', this.key)
      .update(body)
      .update('\n')
      .update(bind.caller)
      .update('\n')
      .update(canonicalJson(bind.filters))
      .digest('base64url');
  }
}
