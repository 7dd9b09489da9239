import { createReadStream } from 'node:fs';
import { type FileHandle, mkdir, open, readdir, rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import type { AuditChain } from '../redis/keys.ts';
import type { AuditRecord } from './record.ts';
import type { Seal } from './seal.ts';

/**
 * The audit export on disk: JSON lines, one file per deployment (the first
 * line names the Redis prefix it belongs to), rotated by size.
 *
 * ```
 * {"export":"jit-broker audit","version":1,"prefix":"jit","created":"2025-01-01T00:00:00.000Z"}
 * {"chain":"ops","record":{...}}
 * {"chain":3,"record":{...}}
 * {"chain":3,"seal":{"seq":41,"hash":"...","time":"...","mac":"..."}}
 * ```
 *
 * Past `maxFileBytes` the file is renamed `<file>.<n>` (n = 1, 2, ...; larger
 * is newer) and a new one started; readers read `<file>.1`, `<file>.2`, ...,
 * then `<file>`.
 */
export const EXPORT_FORMAT = 'jit-broker audit';

/** One line of the export as read back. */
export type ExportEntry =
  | { kind: 'header'; prefix: string; file: string; line: number }
  | { kind: 'record'; chain: AuditChain; record: AuditRecord; file: string; line: number }
  | { kind: 'seal'; chain: AuditChain; seal: Seal; file: string; line: number }
  | { kind: 'bad'; file: string; line: number; problem: string };

/** The export's files, oldest first (`<file>.1`, `<file>.2`, ..., `<file>`); only those that exist. */
export async function exportFiles(file: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dirname(file));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const base = basename(file);
  const rotated = names
    .map((n) => ({ n, m: n.startsWith(`${base}.`) ? /^\d+$/.exec(n.slice(base.length + 1)) : null }))
    .filter((x) => x.m)
    .map((x) => ({ name: x.n, index: Number(x.m![0]) }))
    .sort((a, b) => a.index - b.index)
    .map((x) => join(dirname(file), x.name));
  return names.includes(base) ? [...rotated, file] : rotated;
}

function chainOf(v: unknown): AuditChain | undefined {
  if (v === 'ops') return 'ops';
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 ? v : undefined;
}

/**
 * Every line of the export in order, parsed. Lines that are not ours (a
 * write cut short by a crash, garbage) come back as `bad` for the caller to
 * judge; a file whose header names another prefix comes back as its header.
 */
export async function* readExport(file: string): AsyncGenerator<ExportEntry> {
  for (const path of await exportFiles(file)) yield* readExportFile(path);
}

/** Every line of one file of the export (one of `exportFiles`), parsed as `readExport` does. */
export async function* readExportFile(path: string): AsyncGenerator<ExportEntry> {
  const rl = createInterface({ input: createReadStream(path, { encoding: 'utf8' }), crlfDelay: Number.POSITIVE_INFINITY });
  let n = 0;
  for await (const text of rl) {
    n += 1;
    const e = parseExportLine(text, path, n);
    if (e) yield e;
  }
}

/** Bytes read at a time from the end of a file. */
const BACKWARD_CHUNK = 64 * 1024;

/**
 * The lines of one file of the export from its last to its first, parsed as
 * `readExport` does but numbered 0 (unknown when reading from the end), the
 * header (first line) excepted: `header` is the prefix it names (undefined:
 * none). What a caller reads is what it consumes: a reader that stops after
 * the last few records read the last chunk or two, not the file, and holds
 * one chunk and one line at a time. Splitting bytes at '\n' is safe in UTF-8
 * (no multi-byte character holds the byte 0x0a).
 */
export async function openExportFileBackward(path: string): Promise<{
  header: string | undefined;
  /** The file is empty (a new file whose header was never written: the writer takes it as new). */
  empty: boolean;
  lines: AsyncGenerator<ExportEntry>;
  close: () => Promise<void>;
}> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    const header = size > 0 ? await headerPrefix(fh, size) : undefined;
    const firstLineEnd = size > 0 ? await lineEnd(fh, size) : 0;
    async function* lines(): AsyncGenerator<ExportEntry> {
      let pos = size;
      let carry = Buffer.alloc(0);
      while (pos > firstLineEnd) {
        const len = Math.min(BACKWARD_CHUNK, pos - firstLineEnd);
        pos -= len;
        const chunk = Buffer.alloc(len);
        await readFully(fh, chunk, pos);
        const buf = carry.length > 0 ? Buffer.concat([chunk, carry]) : chunk;
        // Every line after the first newline in `buf` is whole; the part before it may go on in the previous chunk.
        let end = buf.length;
        for (let i = buf.length - 1; i >= 0; i--) {
          if (buf[i] !== 0x0a) continue;
          const e = parseExportLine(buf.toString('utf8', i + 1, end), path, 0);
          if (e) yield e;
          end = i;
        }
        carry = Buffer.from(buf.subarray(0, end));
      }
      if (carry.length > 0) {
        const e = parseExportLine(carry.toString('utf8'), path, 0);
        if (e) yield e;
      }
    }
    return { header, empty: size === 0, lines: lines(), close: () => fh.close() };
  } catch (err) {
    await fh.close().catch(() => {});
    throw err;
  }
}

/** Offset just past the first line's newline (the header line), or `size` when the file has one line. */
async function lineEnd(fh: FileHandle, size: number): Promise<number> {
  const buf = Buffer.alloc(Math.min(size, 4096));
  for (let at = 0; at < size; at += buf.length) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - at), at);
    const i = buf.subarray(0, bytesRead).indexOf(0x0a);
    if (i >= 0) return at + i + 1;
    if (bytesRead === 0) break;
  }
  return size;
}

async function readFully(fh: FileHandle, into: Buffer, at: number): Promise<void> {
  let done = 0;
  while (done < into.length) {
    const { bytesRead } = await fh.read(into, done, into.length - done, at + done);
    if (bytesRead === 0) throw new Error('audit export file shrank while being read');
    done += bytesRead;
  }
}

/** One line of the export parsed (undefined: an empty line). */
function parseExportLine(text: string, path: string, n: number): ExportEntry | undefined {
  if (text === '') return undefined;
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(text) as Record<string, unknown>;
  } catch {
    return { kind: 'bad', file: path, line: n, problem: 'not valid JSON (a write cut short by a crash?)' };
  }
  if (v.export === EXPORT_FORMAT && typeof v.prefix === 'string') return { kind: 'header', prefix: v.prefix, file: path, line: n };
  const chain = chainOf(v.chain);
  if (chain !== undefined && v.record && typeof v.record === 'object') {
    return { kind: 'record', chain, record: v.record as AuditRecord, file: path, line: n };
  }
  if (chain !== undefined && v.seal && typeof v.seal === 'object')
    return { kind: 'seal', chain, seal: v.seal as Seal, file: path, line: n };
  return { kind: 'bad', file: path, line: n, problem: 'not an audit export line' };
}

/** The line of a record as the exporter writes it (`raw` is the record's JSON exactly as stored in Redis). */
export function recordLine(chain: AuditChain, raw: string): string {
  return `{"chain":${JSON.stringify(chain)},"record":${raw}}\n`;
}

export function sealLine(chain: AuditChain, seal: Seal): string {
  return `${JSON.stringify({ chain, seal })}\n`;
}

/** Thrown when the export file belongs to another deployment (another Redis prefix). */
export class ForeignExportError extends Error {}

/**
 * Appends lines to the export, durably: each call's lines are written and
 * fsynced before it returns, the file is rotated by size, a new file starts
 * with its header, and the directory is created when missing. Callers hold
 * the export lock, so there is one writer at a time across every instance.
 */
export class ExportFileWriter {
  readonly file: string;
  private readonly maxBytes: number;
  private readonly prefix: string;
  private readonly now: () => number;
  /** Inode whose header this process already checked. */
  private checkedIno: number | undefined;

  constructor(opts: { file: string; maxFileBytes: number; prefix: string; now?: () => number }) {
    this.file = opts.file;
    this.maxBytes = opts.maxFileBytes;
    this.prefix = opts.prefix;
    this.now = opts.now ?? Date.now;
  }

  private header(): string {
    return `${JSON.stringify({ export: EXPORT_FORMAT, version: 1, prefix: this.prefix, created: new Date(this.now()).toISOString() })}\n`;
  }

  /** Appends `lines` (each ending in a newline) and fsyncs; rotates first when they would not fit. */
  async append(lines: readonly string[]): Promise<void> {
    if (lines.length === 0) return;
    await mkdir(dirname(this.file), { recursive: true });
    let { fh, size, fresh } = await this.openCurrent();
    try {
      let pending: string[] = [];
      let pendingBytes = 0;
      for (const line of lines) {
        const bytes = Buffer.byteLength(line);
        // A file holds at least one line past its header, whatever that line's size.
        const hasLines = !fresh || pending.length > 0;
        if (size + pendingBytes + bytes > this.maxBytes && hasLines) {
          await this.write(fh, pending);
          pending = [];
          pendingBytes = 0;
          await fh.sync();
          await fh.close();
          await this.rotate();
          ({ fh, size, fresh } = await this.openCurrent());
        }
        pending.push(line);
        pendingBytes += bytes;
      }
      await this.write(fh, pending);
      await fh.sync();
    } finally {
      await fh.close().catch(() => {});
    }
  }

  private async write(fh: FileHandle, lines: string[]): Promise<void> {
    // appendFile writes every byte (a single write(2) may write fewer); O_APPEND puts them at the end.
    if (lines.length > 0) await fh.appendFile(lines.join(''));
  }

  /** Opens `<file>` for appending: writes the header of a new file, checks the header of an existing one. */
  private async openCurrent(): Promise<{ fh: FileHandle; size: number; fresh: boolean }> {
    const fh = await open(this.file, 'a+', 0o640);
    try {
      const st = await fh.stat();
      if (st.size === 0) {
        const h = this.header();
        await fh.appendFile(h);
        await fh.sync();
        await syncDir(dirname(this.file));
        this.checkedIno = st.ino;
        return { fh, size: Buffer.byteLength(h), fresh: true };
      }
      if (this.checkedIno !== st.ino) {
        this.assertOurs(await headerPrefix(fh, st.size));
        this.checkedIno = st.ino;
      }
      // A write cut short by a crash leaves a partial last line: end it, so the next line stays whole.
      const last = Buffer.alloc(1);
      await fh.read(last, 0, 1, st.size - 1);
      if (last[0] !== 0x0a) {
        await fh.appendFile('\n');
        return { fh, size: st.size + 1, fresh: false };
      }
      return { fh, size: st.size, fresh: false };
    } catch (err) {
      await fh.close().catch(() => {});
      throw err;
    }
  }

  /**
   * Throws unless the export (its newest file) belongs to this deployment:
   * at startup, so a second deployment pointed at the same file fails at
   * once rather than at its first export or data loss.
   */
  async assertOwned(): Promise<void> {
    const newest = (await exportFiles(this.file)).at(-1);
    if (!newest) return;
    const fh = await open(newest, 'r');
    try {
      const st = await fh.stat();
      if (st.size > 0) this.assertOurs(await headerPrefix(fh, st.size), newest);
    } finally {
      await fh.close();
    }
  }

  private assertOurs(prefix: string | undefined, path = this.file): void {
    if (prefix !== this.prefix)
      throw new ForeignExportError(
        `audit export ${path} belongs to ${prefix === undefined ? 'something else (no jit-broker export header)' : `redis.prefix "${prefix}"`}, not "${this.prefix}": refusing to mix two deployments in one file (set audit.export.file)`,
      );
  }

  /** Renames `<file>` to `<file>.<n+1>` (n = the highest in use). */
  private async rotate(): Promise<void> {
    const files = await exportFiles(this.file);
    const base = basename(this.file);
    let n = 0;
    for (const f of files) {
      const m = /^\d+$/.exec(basename(f).slice(base.length + 1));
      if (f !== this.file && m) n = Math.max(n, Number(m[0]));
    }
    await rename(this.file, `${this.file}.${n + 1}`);
    await syncDir(dirname(this.file));
  }
}

/** The prefix named by a file's header line, undefined when it has none. */
async function headerPrefix(fh: FileHandle, size: number): Promise<string | undefined> {
  const head = Buffer.alloc(Math.min(size, 4096));
  await fh.read(head, 0, head.length, 0);
  try {
    const h = JSON.parse(head.toString('utf8').split('\n')[0] ?? '') as { export?: string; prefix?: unknown };
    return h.export === EXPORT_FORMAT && typeof h.prefix === 'string' ? h.prefix : undefined;
  } catch {
    return undefined;
  }
}

/** fsync of a directory, so a created or renamed file survives a crash (a no-op where unsupported). */
async function syncDir(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch {
    /* some filesystems refuse fsync on a directory */
  } finally {
    await fh?.close().catch(() => {});
  }
}
