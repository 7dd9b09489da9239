import { createHash } from 'node:crypto';

/**
 * Client-side check of audit records as `GET /v1/audit` returns them (what
 * `jit audit verify` does for an admin without `--task`). The hash rule is
 * the broker's (src/audit/record.ts, which test/contract/cli.test.ts keeps in
 * step with this copy): SHA-256 over the previous hash, a newline and the
 * record's canonical JSON without its `hash`. The CLI may not import the
 * server, hence the copy.
 */
export const GENESIS = '0'.repeat(64);

function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** A record of the audit API: the stored record plus where it lives (`chain`, `streamId`). */
export interface ApiAuditRecord {
  seq: number;
  prev?: unknown;
  hash: string;
  chain?: unknown;
  streamId?: unknown;
  [k: string]: unknown;
}

/** The hash the broker computed when it wrote `r`. */
export function recordHash(r: ApiAuditRecord): string {
  const { hash: _h, chain: _c, streamId: _s, ...stored } = r;
  return createHash('sha256').update(String(stored.prev)).update('\n').update(canonicalJson(stored)).digest('hex');
}

/** Per chain: the records seen so far, and the first problem found. */
export interface ChainVerdict {
  records: number;
  firstSeq: number;
  lastSeq: number;
  problem?: string;
}

/**
 * Checks records in the order the API gives them (each chain oldest first):
 * every record's own hash, and that each follows the previous one of its
 * chain (next `seq`, `prev` = its hash). A chain's first record links to
 * nothing when it is not seq 1: older records were exported and trimmed, and
 * only the broker host (`npm run audit:verify`) can check the export file.
 */
export class ChainChecker {
  readonly chains = new Map<string, ChainVerdict & { lastHash: string }>();

  add(r: ApiAuditRecord): void {
    const key = String(r.chain ?? 'default');
    const c = this.chains.get(key);
    const problem =
      recordHash(r) !== r.hash
        ? `record seq ${r.seq} was changed (its hash does not match)`
        : c === undefined
          ? r.seq === 1 && r.prev !== GENESIS
            ? 'the first record does not start the chain'
            : undefined
          : r.seq !== c.lastSeq + 1
            ? `records ${c.lastSeq + 1}..${r.seq - 1} are missing`
            : r.prev !== c.lastHash
              ? `record seq ${r.seq} does not link to record ${c.lastSeq}`
              : undefined;
    if (c === undefined) {
      this.chains.set(key, { records: 1, firstSeq: r.seq, lastSeq: r.seq, lastHash: r.hash, ...(problem ? { problem } : {}) });
      return;
    }
    c.records += 1;
    c.lastSeq = r.seq;
    c.lastHash = r.hash;
    if (problem && !c.problem) c.problem = problem;
  }

  get intact(): boolean {
    return [...this.chains.values()].every((c) => c.problem === undefined);
  }

  report(): Record<string, ChainVerdict> {
    return Object.fromEntries([...this.chains].map(([k, { lastHash: _l, ...v }]) => [k, v]));
  }
}
