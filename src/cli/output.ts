import { hasControls, terminalLines, terminalSafe } from './terminal.ts';

/** Where a command writes; the entry point passes the process's streams, tests may pass their own. */
export interface Io {
  /** `isTTY`: a terminal (process.stdout sets it), where what the broker sent is printed escaped. */
  stdout: { write(s: string): unknown; isTTY?: boolean };
  stderr: { write(s: string): unknown };
  env: NodeJS.ProcessEnv;
  cwd: string;
}

/** Printing helpers bound to one command run. */
export class Out {
  private readonly io: Io;
  constructor(io: Io) {
    this.io = io;
  }

  /** A line of output; characters that would act on the terminal are escaped (terminalLines). */
  line(s = ''): void {
    this.io.stdout.write(`${terminalLines(s)}\n`);
  }

  /** A note for the person at the terminal; never part of the machine-readable output. */
  note(s: string): void {
    this.io.stderr.write(`${terminalLines(s)}\n`);
  }

  /** JSON with bidi, zero-width and C1 characters escaped too (`\\uXXXX`: the same JSON value). */
  json(v: unknown): void {
    this.io.stdout.write(`${terminalLines(JSON.stringify(v, null, 2))}\n`);
  }

  /** `key  value` lines, keys padded; undefined values skipped. */
  fields(rows: [string, unknown][]): void {
    const shown = rows.filter(([, v]) => v !== undefined && v !== '');
    const w = Math.max(0, ...shown.map(([k]) => k.length));
    for (const [k, v] of shown) this.line(`${k.padEnd(w)}  ${terminalSafe(typeof v === 'string' ? v : JSON.stringify(v))}`);
  }

  /** A table with a header row; cells are stringified (controls escaped, see terminalSafe), columns padded. */
  table(headers: string[], rows: unknown[][]): void {
    const cells = rows.map((r) => r.map((c) => (c === undefined || c === null ? '-' : terminalSafe(String(c)))));
    const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]!.length)));
    const fmt = (r: string[]) =>
      r
        .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd();
    this.line(fmt(headers));
    for (const r of cells) this.line(fmt(r));
  }
}

/**
 * Single-quoted for POSIX shells: `it's` → `'it'\''s'`. Every character but NUL stands for itself between
 * single quotes (newlines, ESC, NBSP included), so `eval` gets the exact value back; the caller refuses NUL.
 */
export function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/**
 * For a terminal: {@link shellQuote} when `s` holds nothing {@link terminalSafe} would escape; otherwise
 * ANSI-C quoting (`$'...'`, bash, zsh, ksh, busybox sh, POSIX.1-2024) with each such character written as
 * its UTF-8 bytes (`\xc2\xa0`), so nothing acts on the terminal and what a person copies from it is
 * still the exact value (bytes, not `\u` escapes, which bash decodes per locale).
 */
export function terminalShellQuote(s: string): string {
  if (!hasControls(s)) return shellQuote(s);
  let q = '';
  for (const c of s) {
    if (c === '\\' || c === "'") q += `\\${c}`;
    else if (hasControls(c)) for (const b of Buffer.from(c, 'utf8')) q += `\\x${b.toString(16).padStart(2, '0')}`;
    else q += c;
  }
  return `$'${q}'`;
}

/**
 * `2026-11-23T10:02:00.000Z (in 4m 10s)` for an ISO time relative to now. `ended`: a task or lease that ended
 * before its expiry shows `(ended before)`, as "in 4m 10s" would read as if it were still live.
 */
export function when(iso: string | undefined, now = Date.now(), ended = false): string | undefined {
  if (!iso) return undefined;
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  if (ended && t > now) return `${iso} (ended before)`;
  const d = Math.round((t - now) / 1000);
  return `${iso} (${d >= 0 ? `in ${span(d)}` : `${span(-d)} ago`})`;
}

function span(s: number): string {
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86_400)}d ${Math.floor((s % 86_400) / 3600)}h`;
}

/** `tickets-api[tickets:read]@300s`, `tickets-api[]`, `tickets-api` (role's scopes). */
export function grantText(g: { role: string; scopes?: string[]; maxTtlSeconds?: number }): string {
  return `${g.role}${g.scopes ? `[${g.scopes.join(',')}]` : ''}${g.maxTtlSeconds ? `@${g.maxTtlSeconds}s` : ''}`;
}
