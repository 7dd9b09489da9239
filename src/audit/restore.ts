import type { QuarantineEntry } from '../identity/quarantine.ts';
import type { AuditChain, Keys } from '../redis/keys.ts';
import { type RedisClient, script } from '../redis/scripts.ts';
import { ForeignExportError, readExport } from './export-file.ts';
import { type KeptStep, keptSteps } from './kept-steps.ts';
import { type AuditRecord, GENESIS } from './record.ts';
import { markerSeq } from './retention.ts';

const continueScript = script('loss-continue');

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
 * caller to append again behind the export's last record, each once
 * (AuditLog.appendOnce with lossSteps.idOf).
 *
 * Each chain is continued in one step that keeps what it did (loss-continue.lua, Keys.lossContinued): the
 * records it removed and the chain's continuation. An attempt that failed after it (before those records were
 * appended again, or the loss recorded) left the chain continued, which the next attempt no longer finds to
 * continue: it takes what was kept instead, so the records are appended and the chain gets its
 * `broker.data_loss` record. What is kept is deleted (finishContinuations) once the loss is recorded.
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
  const chains = [...new Set<AuditChain>([...keys.auditChains(), ...archive.chains.keys()])];
  // What earlier attempts (this instance's or another's) did: the chains they continued look continued now.
  const keptEntries = await lossSteps.read(redis, keys, chains);
  let flagged = false;
  for (let i = 0; i < chains.length; i++) {
    const chain = chains[i]!;
    const a = archive.chains.get(chain);
    const known = markerSeq(knownHeads.get(chain));
    const head = await redis.get(keys.auditHead(chain));
    const step = await planStep(redis, keys, chain, a, known, head);
    if (step) {
      // Flagged before the step, in the global slot (the step is in the chain's): a running instance's periodic
      // check finds the work kept if this one dies before it is recorded (DataLossMonitor).
      if (!flagged) await redis.set(keys.recoveryUnfinished(), '1');
      flagged = true;
      const done = await continueScript.run(
        redis,
        [keys.auditHead(chain), keys.auditExported(chain), keys.auditStream(chain), keys.lossContinued(chain)],
        [head ?? '', a ? `${a.seq}:${a.hash}` : '', JSON.stringify(step.kept), step.fresh ? '1' : '0'],
      );
      if (done !== 1) throw new Error(`audit chain ${chain} moved during the data-loss recovery; trying again`);
    }
    // Kept entries that are not what the step stores (Redis is writable by others) are left out.
    const steps = (keptEntries[i] ?? []).flatMap((e) => lossSteps.parse(e, chain) ?? []);
    if (step) steps.push(step.kept);
    if (steps.length === 0) continue;
    const knownTo = Math.max(...steps.map((s) => s.knownToSeq));
    out.push({
      chain,
      continuedFromSeq: steps[0]!.continuedFromSeq,
      knownToSeq: knownTo > 0 ? knownTo : undefined,
      orphans: steps.flatMap((s) => s.orphans).map((record) => ({ record, time: record.time })),
    });
  }
  return out;
}

/** What one continuation step did to a chain, kept in Redis in that step (loss-continue.lua; src/audit/kept-steps.ts). */
interface KeptContinuation extends KeptStep {
  continuedFromSeq: number;
  /** 0: unknown. */
  knownToSeq: number;
}

/**
 * The continuation steps kept per chain (Keys.lossContinued); the records they took off a fresh chain are appended
 * again with the identity `continued:<seq>:<hash>`.
 */
export const lossSteps = keptSteps<KeptContinuation>({
  what: 'data-loss continuations',
  key: (keys, chain) => keys.lossContinued(chain),
  idPrefix: 'continued',
  valid: (v) => typeof v.continuedFromSeq === 'number' && typeof v.knownToSeq === 'number',
});

/** What to do to one chain: nothing (undefined), or continue it (`fresh`: its stream started over after the loss). */
async function planStep(
  redis: RedisClient,
  keys: Keys,
  chain: AuditChain,
  a: ArchivedChain | undefined,
  known: number,
  head: string | null,
): Promise<{ kept: KeptContinuation; fresh: boolean } | undefined> {
  let orphans: AuditRecord[] = [];
  if (head && a) {
    const first = (await redis.xrange(keys.auditStream(chain), '-', '+', 'COUNT', 1))[0];
    const r = first ? parse(first[1]) : undefined;
    // A chain that starts over at seq 1 and is shorter than the export: written after the loss.
    // (A surviving chain is never shorter than what was exported from it.)
    if (r?.seq !== 1 || r.prev !== GENESIS || markerSeq(head) >= a.seq) return undefined;
    orphans = (await redis.xrange(keys.auditStream(chain), '-', '+'))
      .map(([, f]) => parse(f))
      .filter((x): x is AuditRecord => x !== undefined);
  } else if (head) {
    return undefined; // this chain's data survived
  }
  if (!a && known === 0) return undefined; // a chain that never had a record
  const knownTo = Math.max(known, a?.sealedSeq ?? 0, a?.seq ?? 0);
  return { kept: { continuedFromSeq: a?.seq ?? 0, knownToSeq: knownTo, orphans }, fresh: head !== null };
}

/** The records still kept by continuation steps, per chain (to append again, each once, before dropping them). */
export async function keptContinuations(redis: RedisClient, keys: Keys): Promise<{ chain: AuditChain; orphans: AuditRecord[] }[]> {
  const chains = keys.auditChains();
  const entries = await lossSteps.read(redis, keys, chains);
  return chains.flatMap((chain, i) =>
    (entries[i] ?? []).length > 0 ? [{ chain, orphans: (entries[i] ?? []).flatMap((e) => lossSteps.parse(e, chain)?.orphans ?? []) }] : [],
  );
}

function parse(fields: string[]): AuditRecord | undefined {
  try {
    return JSON.parse(fields[fields.indexOf('r') + 1] ?? '') as AuditRecord;
  } catch {
    return undefined;
  }
}
