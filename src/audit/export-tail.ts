import type { AuditChain } from '../redis/keys.ts';
import { exportFiles, ForeignExportError, openExportFileBackward } from './export-file.ts';
import type { AuditRecord } from './record.ts';

/** What the export holds of one chain past a given seq. */
export interface ChainTail {
  /** The chain's last record in the files read (undefined: none seen). */
  last: { seq: number; hash: string } | undefined;
  /** Hash of every record after `since`, by seq (with `opts.hashes`; else empty). */
  hashes: Map<number, string>;
  /** The records after `since` that `keep` chose, in chain order. */
  kept: AuditRecord[];
}

interface Reading {
  last: ChainTail['last'];
  hashes: Map<number, string>;
  kept: Map<number, AuditRecord>;
  /** The lowest seq seen so far (read from the end backwards). */
  reached: number;
}

/**
 * The end of each chain in the export: every record after `since(chain)`,
 * read from the end of the newest file backwards, stopping as soon as each
 * chain with a `since` reaches back to it, so a broker looking at the last
 * few records reads the last few kilobytes, not the whole history (a file
 * grows to `audit.export.maxFileBytes`; rotated files are kept forever), in
 * bounded memory (a chunk, a line, and the records after each `since`). A
 * chain whose `since` is undefined is only reported from what is read. A
 * chain with a `since` absent from the end of the export (idle, or never
 * exported) sends the read further back, up to every file. With
 * `opts.before`, the read instead stops at the first line (from the end) it
 * accepts: what the export held before that line does not matter to the
 * caller. Duplicated lines (a crash between append and marker) are read
 * once. A file of another deployment fails.
 */
export async function readExportTail(
  file: string,
  prefix: string,
  since: (chain: AuditChain) => number | undefined,
  keep: (r: AuditRecord) => boolean,
  chains: readonly AuditChain[],
  opts: { hashes: boolean; before?: (chain: AuditChain, seq: number) => boolean },
): Promise<Map<AuditChain, ChainTail>> {
  const out = new Map<AuditChain, Reading>();
  const of = (chain: AuditChain): Reading => {
    let t = out.get(chain);
    if (!t) {
      t = { last: undefined, hashes: new Map(), kept: new Map(), reached: Number.POSITIVE_INFINITY };
      out.set(chain, t);
    }
    return t;
  };
  // Seqs only go down as the read goes back: done once every chain reached back to its `since`.
  const open = new Set(chains.filter((c) => since(c) !== undefined));
  const done = () => (opts.before ? false : open.size === 0);
  let stopped = false;
  const files = (await exportFiles(file)).reverse();
  for (const path of files) {
    if (stopped || done()) break;
    const f = await openExportFileBackward(path);
    try {
      if (f.header !== prefix) {
        throw new ForeignExportError(
          f.header === undefined
            ? `audit export ${path} has no jit-broker header: not reading it`
            : `audit export ${path} belongs to redis.prefix "${f.header}", not "${prefix}"`,
        );
      }
      for await (const e of f.lines) {
        if (e.kind !== 'record') continue;
        const r = e.record;
        if (!Number.isSafeInteger(r.seq) || typeof r.hash !== 'string') continue;
        if (opts.before?.(e.chain, r.seq)) {
          stopped = true;
          break;
        }
        const t = of(e.chain);
        t.reached = Math.min(t.reached, r.seq);
        if (!t.last || r.seq > t.last.seq) t.last = { seq: r.seq, hash: r.hash };
        const s = since(e.chain);
        if (r.seq > (s ?? Number.POSITIVE_INFINITY)) {
          if (opts.hashes && !t.hashes.has(r.seq)) t.hashes.set(r.seq, r.hash);
          if (!t.kept.has(r.seq) && keep(r)) t.kept.set(r.seq, r);
        }
        if (s !== undefined && t.reached <= s + 1 && open.delete(e.chain) && done()) break;
      }
    } finally {
      await f.close();
    }
  }
  const result = new Map<AuditChain, ChainTail>();
  for (const [chain, t] of out) {
    result.set(chain, { last: t.last, hashes: t.hashes, kept: [...t.kept.values()].sort((a, b) => a.seq - b.seq) });
  }
  return result;
}
