import type { QuarantineEntry } from '../identity/quarantine.ts';
import type { AuditChain, Keys } from '../redis/keys.ts';
import type { RedisClient } from '../redis/scripts.ts';
import { ForeignExportError, readExport } from './export-file.ts';
import { type AuditRecord, GENESIS } from './record.ts';
import { markerSeq } from './retention.ts';

/** What the export says about one chain. */
export interface ArchivedChain {
  /** The last record in the export. */
  seq: number;
  hash: string;
  /** The highest seq a seal in the export names. */
  sealedSeq: number;
}

/** What the broker needs from the export after Redis lost its data. */
export interface Archive {
  chains: Map<AuditChain, ArchivedChain>;
  /** The quarantines in force after replaying every `quarantine.add` / `quarantine.remove` of the ops chain. */
  quarantines: QuarantineEntry[];
}

/**
 * Reads the whole export once: the last record of each chain (where the
 * chain continues) and the quarantine list its ops records leave in force.
 * Duplicated lines (a crash between append and marker) are skipped by seq.
 * A file of another deployment fails, rather than restoring its quarantines
 * or continuing its chains.
 */
export async function readArchive(file: string, prefix: string): Promise<Archive> {
  const chains = new Map<AuditChain, ArchivedChain>();
  const quarantines = new Map<string, QuarantineEntry>();
  let headerOf = '';
  for await (const e of readExport(file)) {
    if (e.kind === 'header') {
      if (e.prefix !== prefix)
        throw new ForeignExportError(`audit export ${e.file} belongs to redis.prefix "${e.prefix}", not "${prefix}"`);
      headerOf = e.file;
      continue;
    }
    if (e.kind === 'bad') continue;
    if (headerOf !== e.file) throw new ForeignExportError(`audit export ${e.file} has no jit-broker header: not restoring from it`);
    const c = chains.get(e.chain) ?? { seq: 0, hash: GENESIS, sealedSeq: 0 };
    if (e.kind === 'seal') {
      if (Number.isSafeInteger(e.seal.seq)) c.sealedSeq = Math.max(c.sealedSeq, e.seal.seq);
      chains.set(e.chain, c);
      continue;
    }
    const r = e.record;
    if (!Number.isSafeInteger(r.seq) || typeof r.hash !== 'string' || r.seq <= c.seq) continue;
    c.seq = r.seq;
    c.hash = r.hash;
    chains.set(e.chain, c);
    if (e.chain === 'ops') replayQuarantine(quarantines, r);
  }
  for (const [chain, c] of chains) if (c.seq === 0) chains.delete(chain);
  return { chains, quarantines: [...quarantines.values()] };
}

function replayQuarantine(into: Map<string, QuarantineEntry>, r: AuditRecord): void {
  const pattern = r.detail?.pattern;
  if (typeof pattern !== 'string' || r.decision !== 'ok') return;
  if (r.action === 'quarantine.add') {
    const at = typeof r.detail?.at === 'string' ? r.detail.at : r.time;
    into.set(pattern, { pattern, reason: r.reason ?? '', by: r.actor, at });
  } else if (r.action === 'quarantine.remove') {
    into.delete(pattern);
  }
}

/** How one chain continues after a data loss (the detail of its `broker.data_loss` record). */
export interface Continuation {
  chain: AuditChain;
  /** The export's last record: the chain goes on from it (0: nothing was exported). */
  continuedFromSeq: number;
  /** The highest seq known to have existed (this instance's last head, the export's seals); undefined if unknown. */
  knownToSeq: number | undefined;
  /** Records written after the loss but before recovery, moved behind the export's last record. */
  orphans: { record: AuditRecord; time: string }[];
}

/**
 * After Redis lost its data: sets each chain's head (and export marker) to
 * the export's last record, so new records continue the chain the export
 * holds instead of starting a second one at seq 1. A chain whose head
 * survived is left alone. Records that slipped in after the loss on a
 * fresh chain (seq 1 on the genesis hash) are removed and returned, for the
 * caller to append again behind the export's last record.
 *
 * Runs under the recovery lock, before the epoch marker is written (appends
 * to an empty chain wait for that marker; see AuditLog `guardEpoch`).
 */
export async function continueChains(
  redis: RedisClient,
  keys: Keys,
  archive: Archive,
  knownHeads: Map<AuditChain, string>,
): Promise<Continuation[]> {
  const out: Continuation[] = [];
  const chains = new Set<AuditChain>([...keys.auditChains(), ...archive.chains.keys()]);
  for (const chain of chains) {
    const a = archive.chains.get(chain);
    const known = markerSeq(knownHeads.get(chain));
    const head = await redis.get(keys.auditHead(chain));
    let orphans: Continuation['orphans'] = [];
    if (head && a) {
      const first = (await redis.xrange(keys.auditStream(chain), '-', '+', 'COUNT', 1))[0];
      const r = first ? parse(first[1]) : undefined;
      // A chain that starts over at seq 1 and is shorter than the export: written after the loss.
      // (A surviving chain is never shorter than what was exported from it.)
      if (r?.seq !== 1 || r.prev !== GENESIS || markerSeq(head) >= a.seq) continue;
      orphans = (await redis.xrange(keys.auditStream(chain), '-', '+'))
        .map(([, f]) => parse(f))
        .filter((x): x is AuditRecord => x !== undefined)
        .map((record) => ({ record, time: record.time }));
      await redis.del(keys.auditStream(chain), keys.auditHead(chain));
    } else if (head) {
      continue; // this chain's data survived
    }
    if (!a && known === 0) continue; // a chain that never had a record
    if (a) {
      const at = `${a.seq}:${a.hash}`;
      await redis.set(keys.auditHead(chain), at, 'NX');
      await redis.set(keys.auditExported(chain), at);
    }
    const knownTo = Math.max(known, a?.sealedSeq ?? 0, a?.seq ?? 0);
    out.push({ chain, continuedFromSeq: a?.seq ?? 0, knownToSeq: knownTo > 0 ? knownTo : undefined, orphans });
  }
  return out;
}

function parse(fields: string[]): AuditRecord | undefined {
  try {
    return JSON.parse(fields[fields.indexOf('r') + 1] ?? '') as AuditRecord;
  } catch {
    return undefined;
  }
}
