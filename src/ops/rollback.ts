import type { AuditLog } from '../audit/audit-log.ts';
import { readExportTail } from '../audit/export-tail.ts';
import { type KeptStep, keptSteps } from '../audit/kept-steps.ts';
import { type AuditRecord, ENDING_ACTIONS, isAuditRecord } from '../audit/record.ts';
import { markerSeq } from '../audit/retention.ts';
import type { AuditChain, Keys } from '../redis/keys.ts';
import { type RedisClient, script } from '../redis/scripts.ts';

const repairScript = script('rollback-repair');

/** How long an instance's generation counter outlives the instance (refreshed at every look). */
const GENERATION_TTL_MS = 86_400_000;

/** What showed that Redis went back in time. */
export interface RollbackSign {
  /**
   * generation: this instance's counter went back; chain: a chain head this instance wrote went back; export: the
   * export is ahead of Redis; unfinished: a rollback recovery repaired a chain and did not record it (its
   * instance died part-way: Keys.rollbackRepair).
   */
  seen: 'generation' | 'chain' | 'export' | 'unfinished';
  chain?: AuditChain;
  /** What Redis holds (a head `seq:hash`, or the counter). */
  redis: string;
  /** What this instance (or the export) knows existed. */
  known: string;
  /**
   * The rollback recoveries Redis listed at this instance's last good look (at the first look: when it
   * looked). A recovery listed later that is not among them happened after this instance's writes were
   * lost, so it handled this rollback (see DataLossMonitor).
   */
  recoveriesSeen: string[];
}

const hashOf = (head: string): string => head.slice(head.indexOf(':') + 1);

/** Whether Redis's head `redis` is behind `known`: a lower seq, or the same seq with another hash (another history). */
export function isBehind(redis: string, known: string): boolean {
  if (!known) return false;
  const [r, k] = [markerSeq(redis), markerSeq(known)];
  return r < k || (r === k && hashOf(redis) !== hashOf(known));
}

/**
 * Notices Redis going back in time: restarted from an older RDB snapshot, a
 * restored backup, a lagging replica promoted. The epoch marker is in the
 * snapshot, so the data-loss check sees the same dataset; what is gone is
 * everything decided after the snapshot. Monotonic markers show it:
 * - a generation counter of this instance (a key only it writes, bumped at
 *   every look): a bump that does not land above the last one means Redis
 *   lost a write this instance saw acknowledged;
 * - the head (`seq:hash`) of each audit chain this instance wrote since its
 *   last look (covering writes after the last bump): Redis's head behind it
 *   (a lower seq, or the same seq with another hash) means the same; so does
 *   a head behind it that Redis named when it refused one of this instance's
 *   appends (ChainWriter.takeWentBack), which holds even after the records
 *   it then wrote carried the chain past that head.
 * And at the first look of a process that saw nothing yet, the export: a
 * chain whose exported end is ahead of Redis's head.
 */
export class RollbackWatch {
  private readonly redis: RedisClient;
  private readonly keys: Keys;
  private readonly audit: AuditLog;
  private readonly instance: string;
  private generation: number | undefined;
  private seen = new Map<AuditChain, string>();
  private recoveries: string[] = [];
  private lostBumps = 0;
  /** Heads this instance had confirmed that a head Redis reported replaced since the last completed look. */
  private replaced = new Map<AuditChain, { heads: Set<string>; overflow: boolean }>();
  /** The generation known before one that went back, while its confirmation has not completed (it threw). */
  private unconfirmed: number | undefined;

  constructor(deps: { redis: RedisClient; keys: Keys; audit: AuditLog; instance: string }) {
    this.redis = deps.redis;
    this.keys = deps.keys;
    this.audit = deps.audit;
    this.instance = deps.instance;
  }

  /** The chain heads this instance knows existed (what it wrote and confirmed, what it last compared). */
  known(): Map<AuditChain, string> {
    const out = new Map(this.seen);
    for (const [chain, head] of this.audit.knownHeads()) if (markerSeq(head) >= markerSeq(out.get(chain))) out.set(chain, head);
    return out;
  }

  /** Starts over (after a recovery): the next look takes Redis as it is. */
  reset(): void {
    this.generation = undefined;
    this.seen = new Map();
    this.recoveries = [];
    this.unconfirmed = undefined;
    this.replaced = new Map();
    this.audit.takeReplaced();
    this.audit.takeWentBack();
  }

  /**
   * One look: bumps the generation, compares the heads written since the last look. A generation that
   * went back is confirmed before it is called a rollback (see `confirm`).
   */
  async look(opts: { exportFile?: string } = {}): Promise<RollbackSign | undefined> {
    const written = this.audit.knownHeads();
    const changed = [...written].filter(([chain, head]) => this.seen.get(chain) !== head);
    const key = this.keys.generation(this.instance);
    const res = await this.redis.multi().incr(key).pexpire(key, GENERATION_TTL_MS).lrange(this.keys.rollbackRecoveries(), 0, -1).exec();
    if (!res) throw new Error('generation bump aborted');
    for (const [err] of res) if (err) throw err;
    const generation = Number(res[0]![1]);
    const recoveries = (res[2]![1] as string[]) ?? [];
    const before = this.generation;
    const recoveriesSeen = this.recoveries;
    // Kept until a look completes: one that throws leaves them (and the generation) for the next.
    for (const [chain, r] of this.audit.takeReplaced()) {
      const into = this.replaced.get(chain) ?? { heads: new Set<string>(), overflow: false };
      for (const h of r.heads) into.heads.add(h);
      into.overflow ||= r.overflow;
      this.replaced.set(chain, into);
    }
    // Redis answered this instance's writes with a head behind one it had confirmed: a record it wrote is gone,
    // whatever the generation says (none may have been bumped since the snapshot, and the records it wrote
    // since, chained on that head, may have carried the chain past the one it had confirmed).
    const [back] = this.audit.takeWentBack();
    if (back) {
      this.generation = generation;
      this.unconfirmed = undefined;
      this.replaced = new Map();
      return { seen: 'chain', chain: back[0], redis: back[1].redis, known: back[1].known, recoveriesSeen };
    }
    // A repeated INCR (a connection dropped its answer) only moves it further: going back is the sign.
    if (this.unconfirmed !== undefined || (before !== undefined && generation <= before)) {
      // Remembered until confirm completes: the next bump lands above this one, so it would not show again.
      this.unconfirmed ??= before!;
      const known = this.unconfirmed;
      this.generation = generation;
      const sign = await this.confirm(written, opts.exportFile);
      this.unconfirmed = undefined;
      this.replaced = new Map();
      if (sign) return { ...sign, seen: 'generation', redis: String(generation), known: String(known), recoveriesSeen };
      this.recoveries = recoveries;
      this.lostBumps = Math.max(1, known - generation + 1);
      return undefined;
    }
    this.generation = generation;
    const replaced = this.replaced;
    this.replaced = new Map();
    // Per chain: the head this instance wrote since the last look (`own`), and the heads it had confirmed that a
    // head Redis reported replaced (an append of its own refused on a head another instance carried past it,
    // ahead of it, so no `takeWentBack`: it moved onto the other history, which Redis holds). Those dropped past
    // MAX_REPLACED are not checked here (the generation's confirm takes an overflow as lost).
    const owned = new Map(changed);
    const chains = [...new Set([...owned.keys(), ...[...replaced].filter(([, r]) => r.heads.size > 0).map(([c]) => c)])];
    const heads = await Promise.all(chains.map((chain) => this.redis.get(this.keys.auditHead(chain))));
    for (let i = 0; i < chains.length; i++) {
      const chain = chains[i]!;
      const redis = heads[i] ?? '';
      const own = owned.get(chain);
      if (own !== undefined && isBehind(redis, own)) return { seen: 'chain', chain, redis, known: own, recoveriesSeen };
      // Redis's head further on is not enough: after a rollback, other instances' records (an issuance, their
      // own recovery) can carry the chain past this one's on the other history. The records themselves must be
      // there: one backward read per chain, down to the oldest (what was written on it since the last look).
      const wanted = [...(replaced.get(chain)?.heads ?? [])];
      if (own !== undefined && own !== redis) wanted.unshift(own);
      if (wanted.length > 0) {
        const at = await hashesAt(this.redis, this.keys, chain, new Set(wanted.map(markerSeq)), markerSeq(redis));
        const lost = wanted.find((head) => !at.held(markerSeq(head), hashOf(head)));
        if (lost !== undefined) return { seen: 'chain', chain, redis, known: lost, recoveriesSeen };
      }
      if (own !== undefined) this.seen.set(chain, own);
    }
    this.recoveries = recoveries;
    return undefined;
  }

  /** Generation bumps of this instance lost at the last look although no record was (see `confirm`); 0 once read. */
  takeLostBumps(): number {
    const n = this.lostBumps;
    this.lostBumps = 0;
    return n;
  }

  /**
   * Whether a generation that went back lost more than the bumps themselves. A Sentinel failover loses
   * whatever clients wrote to the old master between the replica's promotion and their switch (up to a
   * second, SENTINEL FAILOVER included): this instance's periodic bumps always land there, so the
   * generation alone would call every failover a rollback. What a rollback recovery restores is what the
   * audit chains hold (every ending is a record), so it is one when a record this instance wrote is gone
   * (its last one on each chain: the same seq with the same hash, the chain links every earlier one), or
   * when the export holds records Redis lost (another instance's, perhaps one gone since).
   */
  private async confirm(written: Map<AuditChain, string>, exportFile: string | undefined): Promise<{ chain?: AuditChain } | undefined> {
    for (const [chain, head] of written) if (!(await holds(this.redis, this.keys, chain, head))) return { chain };
    // Records written on the rolled-back history (this instance's or others') may have carried a chain past
    // the head this instance had confirmed: those it confirmed before are checked too. Too many to keep:
    // taken as lost (a rollback, as the generation alone said).
    for (const [chain, r] of this.replaced) {
      if (r.overflow) return { chain };
      for (const head of r.heads) if (!(await holds(this.redis, this.keys, chain, head))) return { chain };
    }
    if (exportFile) {
      const sign = await this.againstExport(exportFile, this.keys.prefix);
      if (sign) return sign.chain === undefined ? {} : { chain: sign.chain };
    }
    return undefined;
  }

  /**
   * A process's first look at a dataset: whether the export holds any chain
   * further than Redis (a rollback while no instance ran, or one no running
   * instance noticed). Reads the export from its end back until each chain
   * with an export marker in Redis reaches a line of a record that marker
   * covers: the exporter appends before it moves the marker, so such a line
   * was written before Redis's state (a snapshot, what a promoted replica
   * had) was taken, and the lost records of that chain come after it; a
   * chain Redis lost whole (no marker, no head) was exported after it too.
   * In a steady deployment that is the last few lines. No marker at all: the
   * whole export (everything in it may be newer than Redis's state).
   */
  async againstExport(file: string, prefix: string): Promise<RollbackSign | undefined> {
    if (this.generation === undefined) this.recoveries = await this.redis.lrange(this.keys.rollbackRecoveries(), 0, -1);
    const chains = this.keys.auditChains();
    const [heads, markers] = await Promise.all([
      Promise.all(chains.map((c) => this.redis.get(this.keys.auditHead(c)))),
      Promise.all(chains.map((c) => this.redis.get(this.keys.auditExported(c)))),
    ]);
    const headOf = new Map(chains.map((c, i) => [c, heads[i] ?? '']));
    const markerOf = new Map(chains.map((c, i) => [c, markers[i] ? markerSeq(markers[i]) : undefined]));
    const tail = await readExportTail(
      file,
      prefix,
      () => undefined,
      () => false,
      chains,
      { hashes: false, backTo: (c) => markerOf.get(c) },
    );
    for (const [chain, t] of tail) {
      if (!t.last) continue;
      const exported = `${t.last.seq}:${t.last.hash}`;
      const redis = headOf.get(chain) ?? '';
      if (isBehind(redis, exported)) return { seen: 'export', chain, redis, known: exported, recoveriesSeen: this.recoveries };
    }
    return this.unfinished(chains, headOf);
  }

  /**
   * A rollback recovery left unfinished (see `unfinished`), looked for by a running instance: its periodic check
   * found work kept (Keys.recoveryUnfinished), which only an instance starting up looked for before.
   */
  async leftUnfinished(): Promise<RollbackSign | undefined> {
    const chains = this.keys.auditChains();
    const heads = await Promise.all(chains.map((c) => this.redis.get(this.keys.auditHead(c))));
    return this.unfinished(chains, new Map(chains.map((c, i) => [c, heads[i] ?? ''])));
  }

  /**
   * A rollback recovery that repaired a chain and died before it was recorded (its repair still kept): what it
   * took off the chain is to be appended again, its endings applied again, its records written. The recovery
   * that kept it (KeptRepair.by) is not taken as seen, so the claim finds it if it claimed, and its records are
   * written from what it stored, each once, rather than a second set.
   */
  private async unfinished(chains: AuditChain[], headOf: Map<AuditChain, string>): Promise<RollbackSign | undefined> {
    const kept = await Promise.all(chains.map((c) => this.redis.lrange(this.keys.rollbackRepair(c), 0, -1)));
    const chain = chains.find((_, i) => (kept[i]?.length ?? 0) > 0);
    if (chain === undefined) return undefined;
    // The recoveries whose repairs these are: one that claimed since is found by the claim (its records written
    // from what it stored, or none when all were). Not every recovery with records stored: one that died after
    // dropping its kept repairs and before its records (all written) left them stored, and the claim then went
    // to it, so a later rollback whose recovery died before it claimed was recorded nowhere.
    const repairers = new Set<string>();
    let unnamed = false;
    for (const entry of kept.flat()) {
      const by = keptBy(entry);
      if (by === undefined) unnamed = true;
      else repairers.add(by);
    }
    // An entry that names none (not what the repair stores): every recovery with records stored may be its.
    if (unnamed) for (const id of await this.redis.hkeys(this.keys.rollbackPlans())) repairers.add(id);
    const head = headOf.get(chain) ?? '';
    return { seen: 'unfinished', chain, redis: head, known: head, recoveriesSeen: this.recoveries.filter((id) => !repairers.has(id)) };
  }
}

/** What the repair did to one chain (the detail of its `broker.data_loss` record). */
export interface ChainRepair {
  chain: AuditChain;
  /** Redis's head when the repair began. */
  redisHead: string;
  /** Where the chain goes on from (the export's last record when it was ahead, else Redis's own head). */
  continuedFrom: string;
  /** Records Redis wrote on the old history after the snapshot, moved behind `continuedFrom` (see `orphans`). */
  rechained: number;
  /** Known lost: records after `continuedFrom` up to the highest head known to have existed (none: undefined). */
  lostFromSeq?: number;
  lostToSeq?: number;
}

export interface Repair {
  chains: ChainRepair[];
  /** Ending records Redis no longer holds (from the export and from this process's memory), chain order. */
  reapply: AuditRecord[];
  /**
   * Records written on the rolled-back chain that clash with the export, taken off it: to append again behind
   * its end, each once (AuditLog.appendOnce with repairSteps.idOf: an earlier attempt may have appended some).
   */
  orphans: { chain: AuditChain; record: AuditRecord }[];
  /**
   * Chains whose repair is kept in Redis (Keys.rollbackRepair), this attempt's or an earlier one's: what is
   * above includes it; dropped (repairSteps.drop) once the recovery is recorded, not before.
   */
  kept: AuditChain[];
  /** Kept entries that were not what the repair stores (Redis is writable by others): left out. */
  unreadable: number;
}

/** What one repair step did to a chain, kept in Redis in that step (rollback-repair.lua; src/audit/kept-steps.ts). */
interface KeptRepair extends KeptStep {
  /** The recovery (its rollback-claim id) that made this step: the claim its records go with (RollbackWatch.unfinished). */
  by?: string;
  repair?: ChainRepair;
  reapply: AuditRecord[];
}

/**
 * The repair steps kept per chain (Keys.rollbackRepair); the records they took off a chain are appended again
 * with the identity `rechained:<seq>:<hash>`. Dropped after the recovery that took them is recorded, which lets
 * the chain's ids of records written once expire again (kept without expiry meanwhile: src/audit/kept-steps.ts).
 * An entry that is not one of its chain's is left out (Repair.unreadable).
 */
export const repairSteps = keptSteps<KeptRepair>({
  what: 'rollback repairs',
  key: (keys, chain) => keys.rollbackRepair(chain),
  idPrefix: 'rechained',
  valid(v, chain) {
    if (!Array.isArray(v.reapply) || !v.reapply.every(isAuditRecord)) return false;
    if (v.by !== undefined && typeof v.by !== 'string') return false;
    const r = v.repair as Partial<ChainRepair> | null | undefined;
    if (r === undefined) return true;
    if (typeof r !== 'object' || r === null || r.chain !== chain || typeof r.redisHead !== 'string') return false;
    return typeof r.continuedFrom === 'string' && typeof r.rechained === 'number';
  },
});

/** The recovery a kept entry names (KeptRepair.by), or undefined when it names none. */
function keptBy(entry: string): string | undefined {
  try {
    const by = (JSON.parse(entry) as { by?: unknown } | null)?.by;
    return typeof by === 'string' ? by : undefined;
  } catch {
    return undefined;
  }
}

/**
 * One chain's repair from what its steps did, in order (kept ones first, this attempt's last): where it was when
 * the first began, where the last left it, everything taken off, the widest range known lost.
 */
function mergeRepairs(chain: AuditChain, steps: KeptRepair[]): { repair?: ChainRepair; orphans: AuditRecord[]; reapply: AuditRecord[] } {
  const repairs = steps.flatMap((s) => (s.repair ? [s.repair] : []));
  const orphans = steps.flatMap((s) => s.orphans);
  const byHash = new Map<string, AuditRecord>();
  for (const r of steps.flatMap((s) => s.reapply)) if (!byHash.has(r.hash)) byHash.set(r.hash, r);
  const reapply = [...byHash.values()].sort((a, b) => a.seq - b.seq);
  if (repairs.length === 0) return { orphans, reapply };
  const froms = repairs.flatMap((r) => (r.lostFromSeq !== undefined ? [r.lostFromSeq] : []));
  const tos = repairs.flatMap((r) => (r.lostToSeq !== undefined ? [r.lostToSeq] : []));
  const repair: ChainRepair = {
    chain,
    redisHead: repairs[0]!.redisHead,
    continuedFrom: repairs[repairs.length - 1]!.continuedFrom,
    rechained: repairs.reduce((n, r) => n + r.rechained, 0),
    ...(froms.length > 0 && tos.length > 0 ? { lostFromSeq: Math.min(...froms), lostToSeq: Math.max(...tos) } : {}),
  };
  return { repair, orphans, reapply };
}

/**
 * Whether Redis's chain holds the record `head` (`seq:hash`): its head is that record, or the record at
 * that seq, read back from the end, has that hash. One trimmed away by retention (the stream starts
 * after it) was exported long ago: it counts as held.
 */
async function holds(redis: RedisClient, keys: Keys, chain: AuditChain, head: string): Promise<boolean> {
  const current = (await redis.get(keys.auditHead(chain))) ?? '';
  if (current === head) return true;
  const seq = markerSeq(head);
  if (markerSeq(current) < seq) return false;
  return (await hashesAt(redis, keys, chain, new Set([seq]), markerSeq(current))).held(seq, hashOf(head));
}

/**
 * The hashes of Redis's records of a chain at `seqs`, read backwards from the end down to the lowest (only
 * those kept). `held`: Redis holds that record, or retention trimmed its seq away (the stream starts after it:
 * exported long ago, as in `holds`).
 */
async function hashesAt(redis: RedisClient, keys: Keys, chain: AuditChain, seqs: ReadonlySet<number>, top?: number) {
  const found = new Map<number, string>();
  let lowest = Number.POSITIVE_INFINITY;
  const min = Math.min(...seqs);
  let end = '+';
  // One stream entry per seq: given the head's seq (`top`), the lowest wanted is that many entries down (more
  // when the head moved on since it was read). The rollback look reads this every second for the chains this
  // instance wrote; a page of 500 each time read megabytes where a few records were wanted.
  let upper = top ?? Number.POSITIVE_INFINITY;
  while (seqs.size > 0) {
    const count = Number.isFinite(upper) ? Math.min(500, Math.max(1, upper - min + 1)) : 500;
    const page = await redis.xrevrange(keys.auditStream(chain), end, '-', 'COUNT', count);
    if (page.length === 0) break;
    let reached = false;
    for (const [, fields] of page) {
      let r: AuditRecord;
      try {
        r = JSON.parse(fields[fields.indexOf('r') + 1] ?? '') as AuditRecord;
      } catch {
        continue;
      }
      lowest = Math.min(lowest, r.seq);
      upper = r.seq - 1;
      if (seqs.has(r.seq)) found.set(r.seq, r.hash);
      if (r.seq <= min) {
        reached = true;
        break;
      }
    }
    if (reached) break;
    end = `(${page[page.length - 1]![0]}`;
  }
  return { held: (seq: number, hash: string) => (found.has(seq) ? found.get(seq) === hash : seq < lowest) };
}

/** A chain's records in Redis after `afterSeq` (read backwards from the end, so only those), in chain order. */
async function recordsAfter(redis: RedisClient, keys: Keys, chain: AuditChain, afterSeq: number) {
  const out: { id: string; record: AuditRecord }[] = [];
  let end = '+';
  for (;;) {
    const page = await redis.xrevrange(keys.auditStream(chain), end, '-', 'COUNT', 500);
    if (page.length === 0) break;
    let reached = false;
    for (const [id, fields] of page) {
      let r: AuditRecord | undefined;
      try {
        r = JSON.parse(fields[fields.indexOf('r') + 1] ?? '') as AuditRecord;
      } catch {
        continue; // not a record (verify reports it)
      }
      if (r.seq <= afterSeq) {
        reached = true;
        break;
      }
      out.push({ id, record: r });
    }
    if (reached) break;
    end = `(${page[page.length - 1]![0]}`;
  }
  return out.reverse();
}

/**
 * Puts the chains right after Redis went back in time, under the recovery
 * and export locks (no export runs meanwhile). For each chain, Redis's
 * records after its export marker (the snapshot's) are compared with the
 * export's records after that marker:
 * - where they differ, Redis went on with another history after the snapshot
 *   (records written before the rollback was noticed): those records are
 *   removed and returned, to be appended again behind the export's end;
 * - when the export reaches further, the chain's head and export marker are
 *   set to its last record (as after a data loss), so new records continue
 *   the chain the export holds and verify reads one chain.
 * The ending records (ENDING_ACTIONS) Redis no longer holds are returned to
 * be applied again: the export's after the point where Redis stops or
 * differs, and those `remembered` by this process that neither Redis nor the
 * export holds.
 */
export async function repairChains(
  /** `recovery`: the id this recovery claims the rollback with (rollback-claim.lua), kept with each step. */
  deps: { redis: RedisClient; keys: Keys; file: string; recovery?: string },
  known: Map<AuditChain, string>,
  remembered: readonly { chain: AuditChain; record: AuditRecord }[],
  /** Aborted once the locks the repair runs under are lost: no chain is changed after that. */
  signal?: AbortSignal,
): Promise<Repair> {
  const { redis, keys } = deps;
  const chains = keys.auditChains();
  const [heads, markers, keptEntries] = await Promise.all([
    Promise.all(chains.map((c) => redis.get(keys.auditHead(c)))),
    Promise.all(chains.map((c) => redis.get(keys.auditExported(c)))),
    // What earlier attempts (this instance's or another's) did: the chains they repaired look repaired now.
    repairSteps.read(redis, keys, chains),
  ]);
  const markerOf = new Map(chains.map((c, i) => [c, markers[i] ?? '']));
  const tail = await readExportTail(
    deps.file,
    keys.prefix,
    (c) => markerSeq(markerOf.get(c)),
    (r) => ENDING_ACTIONS.has(r.action),
    chains,
    { hashes: true },
  );
  const out: Repair = { chains: [], reapply: [], orphans: [], kept: [], unreadable: 0 };
  for (let i = 0; i < chains.length; i++) {
    const chain = chains[i]!;
    const head = heads[i] ?? '';
    const marker = markerOf.get(chain) ?? '';
    const t = tail.get(chain);
    const inRedis = await recordsAfter(redis, keys, chain, markerSeq(marker));
    const redisHash = new Map(inRedis.map((x) => [x.record.seq, x.record.hash]));
    // The first record where Redis's history and the export's differ.
    const diverged = inRedis.find((x) => {
      const h = t?.hashes.get(x.record.seq);
      return h !== undefined && h !== x.record.hash;
    })?.record.seq;
    const orphans = diverged === undefined ? [] : inRedis.filter((x) => x.record.seq >= diverged);
    const base = diverged === undefined ? markerSeq(head) : diverged - 1;
    const last = t?.last;
    signal?.throwIfAborted();
    // Redis's history is replaced by the export's from here: the chain goes on from the export's last record.
    const moves = last !== undefined && last.seq > base;
    const continuedFrom = moves ? `${last.seq}:${last.hash}` : head;
    if (!moves && last && last.seq > markerSeq(marker) && redisHash.get(last.seq) === last.hash) {
      // The export already holds Redis's records up to here: not exported a second time.
      await redis.set(keys.auditExported(chain), `${last.seq}:${last.hash}`);
    }
    // The export's endings Redis lost: after the point where Redis stops or differs.
    const lost = (t?.kept ?? []).filter((r) => r.seq > base);
    const told = new Set(lost.map((r) => r.hash));
    // What this process wrote that neither Redis (before the repair) nor the export holds. One at or below the
    // export marker is not taken as exported: the marker may have moved since the rollback, an exporter having
    // exported the records Redis wrote on the rolled-back history (another seq:hash at the same seqs), so
    // Redis's record at its seq says whether it is held.
    const mine = remembered.filter((x) => x.chain === chain).map((x) => x.record);
    const below = await hashesAt(redis, keys, chain, new Set(mine.filter((r) => r.seq <= markerSeq(marker)).map((r) => r.seq)));
    for (const record of mine) {
      if (told.has(record.hash)) continue;
      if (record.seq <= markerSeq(marker) ? below.held(record.seq, record.hash) : redisHash.get(record.seq) === record.hash) continue;
      if (t?.hashes.get(record.seq) === record.hash) continue;
      lost.push(record);
      told.add(record.hash);
    }
    lost.sort((a, b) => a.seq - b.seq);
    const knownTo = Math.max(markerSeq(known.get(chain)), last?.seq ?? 0);
    const from = markerSeq(continuedFrom) + 1;
    const changed = continuedFrom !== head || orphans.length > 0 || lost.length > 0 || knownTo >= from;
    const step: KeptRepair = {
      ...(deps.recovery !== undefined ? { by: deps.recovery } : {}),
      ...(changed || moves
        ? {
            repair: {
              chain,
              redisHead: head,
              continuedFrom,
              rechained: orphans.length,
              ...(knownTo >= from ? { lostFromSeq: from, lostToSeq: knownTo } : {}),
            },
          }
        : {}),
      orphans: orphans.map((o) => o.record),
      reapply: lost,
    };
    if (moves) {
      // Kept in the step that changes the chain (intent with the side effect): taken off the chain, the records
      // are no longer found by a later attempt, nor is anything this repair found.
      signal?.throwIfAborted();
      // Flagged before the step, in the global slot (the step is in the chain's): a running instance's periodic
      // check finds the repair kept if this recovery dies before it is recorded (DataLossMonitor).
      await redis.set(keys.recoveryUnfinished(), '1');
      const moved = await repairScript.run(
        redis,
        [keys.auditHead(chain), keys.auditExported(chain), keys.auditStream(chain), keys.rollbackRepair(chain)],
        [head, continuedFrom, JSON.stringify(step), ...orphans.map((o) => o.id)],
      );
      if (moved !== 1) throw new Error(`audit chain ${chain} moved during the rollback repair; trying again`);
    }
    const kept: KeptRepair[] = [];
    for (const entry of keptEntries[i] ?? []) {
      const k = repairSteps.parse(entry, chain);
      if (k) kept.push(k);
      else out.unreadable += 1;
    }
    if (kept.length > 0 || moves) out.kept.push(chain);
    const merged = mergeRepairs(chain, [...kept, step]);
    for (const record of merged.orphans) out.orphans.push({ chain, record });
    out.reapply.push(...merged.reapply);
    if (merged.repair) out.chains.push(merged.repair);
  }
  return out;
}
