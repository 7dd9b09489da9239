import type { AuditChain } from '../redis/keys.ts';
import { exportFiles, ForeignExportError, readExportFile } from './export-file.ts';
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
  /** The lowest seq seen so far (files are read newest first). */
  reached: number;
}

/**
 * The end of each chain in the export: every record after `since(chain)`,
 * read newest file first and stopping once each chain with a `since` reaches
 * back to it, so a broker looking at the last few records does not read the
 * whole history (rotated files are kept forever). A chain whose `since` is
 * undefined is only reported from the files read anyway. A chain absent from
 * the newer files (idle, or never written) sends the read further back, up to
 * every file. Duplicated lines (a crash between append and marker) are read
 * once. A file of another deployment fails.
 */
export async function readExportTail(
  file: string,
  prefix: string,
  since: (chain: AuditChain) => number | undefined,
  keep: (r: AuditRecord) => boolean,
  chains: readonly AuditChain[],
  opts: { hashes: boolean },
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
  const files = (await exportFiles(file)).reverse();
  for (const path of files) {
    let headerOk = false;
    for await (const e of readExportFile(path)) {
      if (e.kind === 'header') {
        if (e.prefix !== prefix)
          throw new ForeignExportError(`audit export ${e.file} belongs to redis.prefix "${e.prefix}", not "${prefix}"`);
        headerOk = true;
        continue;
      }
      if (e.kind !== 'record') continue;
      if (!headerOk) throw new ForeignExportError(`audit export ${e.file} has no jit-broker header: not reading it`);
      const r = e.record;
      if (!Number.isSafeInteger(r.seq) || typeof r.hash !== 'string') continue;
      const t = of(e.chain);
      t.reached = Math.min(t.reached, r.seq);
      if (!t.last || r.seq > t.last.seq) t.last = { seq: r.seq, hash: r.hash };
      if (r.seq > (since(e.chain) ?? Number.POSITIVE_INFINITY)) {
        if (opts.hashes && !t.hashes.has(r.seq)) t.hashes.set(r.seq, r.hash);
        if (!t.kept.has(r.seq) && keep(r)) t.kept.set(r.seq, r);
      }
    }
    // Older files hold only lower seqs of each chain: done once every chain reached back to its `since`.
    const done = chains.every((c) => {
      const s = since(c);
      return s === undefined || (out.get(c)?.reached ?? Number.POSITIVE_INFINITY) <= s + 1;
    });
    if (done) break;
  }
  const result = new Map<AuditChain, ChainTail>();
  for (const [chain, t] of out) {
    result.set(chain, { last: t.last, hashes: t.hashes, kept: [...t.kept.values()].sort((a, b) => a.seq - b.seq) });
  }
  return result;
}
