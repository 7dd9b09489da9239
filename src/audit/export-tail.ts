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
 * `opts.backTo`, the read instead goes back until each chain it names has a
 * line at or below that seq (none named: every file). Duplicated lines (a crash between append and marker) are read
 * once. A file of another deployment fails; an empty one (its header never written) is skipped.
 */
export async function readExportTail(
  file: string,
  prefix: string,
  since: (chain: AuditChain) => number | undefined,
  keep: (r: AuditRecord) => boolean,
  chains: readonly AuditChain[],
  opts: { hashes: boolean; backTo?: (chain: AuditChain) => number | undefined },
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
  // Seqs only go down as the read goes back: done once every chain reached back to its `since` (or `backTo`).
  const bound = opts.backTo ?? since;
  const open = new Set(chains.filter((c) => bound(c) !== undefined));
  const everything = opts.backTo !== undefined && open.size === 0;
  const done = () => !everything && open.size === 0;
  const files = (await exportFiles(file)).reverse();
  for (const path of files) {
    if (done()) break;
    const f = await openExportFileBackward(path);
    try {
      // An empty file holds nothing: a rotation (or a first append) cut short before the new file's header, which the
      // writer writes there next. Refused as foreign, it failed every read of the end of the export (each pass after
      // a pass stopped past its note, test/audit/export-empty-file.test.ts) until an operator removed it.
      if (f.empty) continue;
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
        const t = of(e.chain);
        t.reached = Math.min(t.reached, r.seq);
        if (!t.last || r.seq > t.last.seq) t.last = { seq: r.seq, hash: r.hash };
        const s = since(e.chain);
        if (r.seq > (s ?? Number.POSITIVE_INFINITY)) {
          if (opts.hashes && !t.hashes.has(r.seq)) t.hashes.set(r.seq, r.hash);
          if (!t.kept.has(r.seq) && keep(r)) t.kept.set(r.seq, r);
        }
        const b = bound(e.chain);
        const reachedBack = opts.backTo ? b !== undefined && r.seq <= b : s !== undefined && t.reached <= s + 1;
        if (reachedBack && open.delete(e.chain) && done()) break;
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
