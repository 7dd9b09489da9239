import type { AuditChain, Keys } from '../redis/keys.ts';
import type { RedisClient } from '../redis/scripts.ts';
import { readExport } from './export-file.ts';
import { type AuditRecord, GENESIS, hashRecord } from './record.ts';
import { isSeal, type Seal, sealIsValid } from './seal.ts';
import { DEFAULT_SEAL_MAX_AGE_MS } from './seal-status.ts';

/** Where a record or seal was read. */
export type Source = { in: 'file'; file: string; line: number } | { in: 'redis'; streamId?: string; key?: string };

/** One thing wrong with a chain. */
export interface Problem {
  seq?: number;
  at: Source;
  problem: string;
}

/** A data loss the chain itself records (`broker.data_loss`): where it continued and what is known lost. */
export interface Loss {
  /** Seq of the `broker.data_loss` record. */
  seq: number;
  time: string;
  continuedFromSeq: number;
  lostFromSeq?: number;
  lostToSeq?: number;
}

/** The verdict on one chain: the export files and Redis read as one chain. */
export interface ChainReport {
  chain: AuditChain;
  /** No problem found (losses the chain records, and records unsealed for less than the bound, are not problems). */
  ok: boolean;
  /** Distinct records. */
  records: number;
  fromFile: number;
  fromRedis: number;
  /** Records read twice (in the file and still in Redis, or a line re-appended after a crash) and identical. */
  duplicates: number;
  firstSeq?: number;
  lastSeq?: number;
  /** `seq:hash` of the last record ('' for an empty chain). */
  head: string;
  /** The first problem, named as the old single-chain verifier did. */
  brokenAt?: { seq?: number; streamId?: string; file?: string; line?: number };
  problem?: string;
  problems: Problem[];
  seals: {
    /** Whether MACs were checked (the KEK was available). */
    checked: boolean;
    count: number;
    last?: { seq: number; time: string };
  };
  /** Records after the last seal (at most about one seal interval's worth on a live broker). */
  unsealed: number;
  /** Time of the first unsealed record. */
  unsealedSince?: string;
  /**
   * While records are unsealed: how long the chain has gone without a seal (since its newest seal, or,
   * never sealed, since its first record). Past `maxSealAgeMs` that is a problem.
   */
  sealAgeSeconds?: number;
  losses: Loss[];
  warnings: string[];
}

export interface VerifyOptions {
  /** Absolute path of the export file (its rotated siblings are read too); none: Redis only. */
  exportFile?: string;
  /** The seal key (deriveSealKey); none: seals are not checked. */
  sealKey?: Buffer;
  /** Which chains (default every chain of `keys`, plus any found in the export). */
  chains?: AuditChain[];
  /** Problems reported per chain before giving up on listing more. */
  maxProblems?: number;
  /**
   * Records may stay unsealed this long (since the chain's newest seal, or its first record when it was
   * never sealed); longer is a problem (`audit.sealMaxAgeSeconds`; default {@link DEFAULT_SEAL_MAX_AGE_MS}).
   */
  maxSealAgeMs?: number;
  /** Now, in ms since 1970 (default the local clock; audit:verify passes Redis's, the clock seals are made on). */
  now?: number;
}

const WINDOW = 100_000;

/**
 * Record hashes by seq, for comparing a record read twice: a compact store for
 * the range Redis still holds (from its first record on), and a sliding window
 * of recent ones before that (duplicated lines after a crash are close).
 */
class Hashes {
  private readonly base: number;
  private buf = Buffer.alloc(0);
  private readonly window = new Map<number, string>();

  constructor(base: number) {
    this.base = base;
  }

  set(seq: number, hash: string): void {
    // 32 bytes per seq from Redis's first record on; a hash is never all zeros, so zeros mean "not seen".
    if (seq >= this.base && seq - this.base < 100_000_000 && /^[0-9a-f]{64}$/.test(hash)) {
      const off = (seq - this.base) * 32;
      if (off + 32 > this.buf.length) {
        const next = Buffer.alloc(Math.max(off + 32, this.buf.length * 2, 32 * 1024));
        this.buf.copy(next);
        this.buf = next;
      }
      this.buf.write(hash, off, 'hex');
      return;
    }
    this.window.set(seq, hash);
    if (this.window.size > WINDOW) this.window.delete(this.window.keys().next().value!);
  }

  get(seq: number): string | undefined {
    const off = (seq - this.base) * 32;
    if (seq >= this.base && off + 32 <= this.buf.length) {
      const h = this.buf.toString('hex', off, off + 32);
      if (h !== GENESIS) return h;
    }
    return this.window.get(seq);
  }
}

function where(at: Source): string {
  return at.in === 'file' ? `${at.file}:${at.line}` : at.streamId ? `Redis stream id ${at.streamId}` : `Redis ${at.key ?? ''}`;
}

/** Walks one chain; records are fed in chain order, the export's first, then Redis's. */
class ChainCheck {
  readonly report: ChainReport;
  private readonly key: Buffer | undefined;
  private readonly max: number;
  private readonly maxSealAgeMs: number;
  private next = 1;
  private prev = GENESIS;
  private started = false;
  private readonly hashes: Hashes;
  private readonly pending = new Map<number, { seal: Seal; at: Source }[]>();
  private readonly macs = new Set<string>();
  /** The first record after the newest seal seen so far. */
  private afterSeal: { seq: number; time: string } | undefined;

  constructor(chain: AuditChain, redisFirstSeq: number, key: Buffer | undefined, maxProblems: number, maxSealAgeMs: number) {
    this.key = key;
    this.max = maxProblems;
    this.maxSealAgeMs = maxSealAgeMs;
    this.hashes = new Hashes(redisFirstSeq);
    this.report = {
      chain,
      ok: true,
      records: 0,
      fromFile: 0,
      fromRedis: 0,
      duplicates: 0,
      head: '',
      problems: [],
      seals: { checked: key !== undefined, count: 0 },
      unsealed: 0,
      losses: [],
      warnings: [],
    };
  }

  problem(at: Source, problem: string, seq?: number): void {
    const r = this.report;
    if (r.ok) {
      r.ok = false;
      r.problem = problem;
      r.brokenAt = at.in === 'file' ? { seq, file: at.file, line: at.line } : { seq, streamId: at.streamId ?? at.key ?? 'head' };
    }
    if (r.problems.length < this.max) r.problems.push({ ...(seq === undefined ? {} : { seq }), at, problem });
  }

  record(r: AuditRecord, at: Source): void {
    if (!r || typeof r !== 'object' || !Number.isSafeInteger(r.seq) || typeof r.hash !== 'string' || typeof r.prev !== 'string') {
      this.problem(at, 'not an audit record');
      return;
    }
    const { hash, ...rest } = r;
    if (hashRecord(rest) !== hash) this.problem(at, "hash does not match the record's content (edited)", r.seq);
    if (r.seq < this.next && this.started) {
      const seen = this.hashes.get(r.seq);
      if (seen === undefined) {
        this.problem(at, `seq ${r.seq} comes again after seq ${this.next - 1} (out of order)`, r.seq);
      } else if (seen !== hash) {
        this.problem(
          at,
          at.in === 'redis'
            ? `differs from the exported record with the same seq: the chain was rewritten in Redis (or the file was edited)`
            : `a second, different record with seq ${r.seq}`,
          r.seq,
        );
      } else {
        this.report.duplicates += 1;
      }
      return;
    }
    if (!this.started && r.seq > 1) {
      this.problem(at, `the chain starts at seq ${r.seq}: records 1..${r.seq - 1} are neither in the export nor in Redis`, r.seq);
    } else if (r.seq > this.next) {
      this.problem(at, `records ${this.next}..${r.seq - 1} are missing (neither in the export nor in Redis)`, r.seq);
    } else if (r.prev !== this.prev) {
      this.problem(at, "prev does not match the previous record's hash", r.seq);
    }
    this.started = true;
    this.report.firstSeq ??= r.seq;
    this.report.lastSeq = r.seq;
    this.report.records += 1;
    if (at.in === 'file') this.report.fromFile += 1;
    else this.report.fromRedis += 1;
    this.next = r.seq + 1;
    this.prev = hash;
    this.hashes.set(r.seq, hash);
    const sealed = this.report.seals.last?.seq ?? 0;
    if (r.seq > sealed && (!this.afterSeal || this.afterSeal.seq <= sealed)) this.afterSeal = { seq: r.seq, time: r.time };
    for (const p of this.pending.get(r.seq) ?? []) this.compareSeal(p.seal, p.at, hash);
    this.pending.delete(r.seq);
    if (r.action === 'broker.data_loss') {
      const d = r.detail ?? {};
      const num = (v: unknown) => (typeof v === 'number' ? v : undefined);
      const loss: Loss = { seq: r.seq, time: r.time, continuedFromSeq: num(d.continuedFromSeq) ?? r.seq - 1 };
      const from = num(d.lostFromSeq);
      const to = num(d.lostToSeq);
      if (from !== undefined) loss.lostFromSeq = from;
      if (to !== undefined) loss.lostToSeq = to;
      this.report.losses.push(loss);
    }
  }

  seal(raw: unknown, at: Source): void {
    if (!isSeal(raw)) {
      this.problem(at, 'not a seal');
      return;
    }
    if (this.key && !sealIsValid(this.key, this.report.chain, raw)) {
      this.problem(at, `the seal of seq ${raw.seq} has a MAC that does not verify: forged, or made with another KEK`, raw.seq);
      return;
    }
    // The same seal is usually both in Redis and in the file.
    if (this.macs.has(raw.mac)) return;
    this.macs.add(raw.mac);
    this.report.seals.count += 1;
    const last = this.report.seals.last;
    if (!last || raw.seq > last.seq || (raw.seq === last.seq && raw.time > last.time)) {
      this.report.seals.last = { seq: raw.seq, time: raw.time };
      if (this.afterSeal && this.afterSeal.seq <= raw.seq) this.afterSeal = undefined;
    }
    if (this.started && raw.seq < this.next) {
      const h = this.hashes.get(raw.seq);
      if (h === undefined) this.report.warnings.push(`the seal of seq ${raw.seq} (${where(at)}) names a record too far back to compare`);
      else this.compareSeal(raw, at, h);
      return;
    }
    const list = this.pending.get(raw.seq) ?? [];
    list.push({ seal: raw, at });
    this.pending.set(raw.seq, list);
  }

  private compareSeal(seal: Seal, at: Source, hash: string): void {
    if (seal.hash !== hash)
      this.problem(
        at,
        `sealed at ${seal.time} with hash ${seal.hash.slice(0, 12)}…, but the record now has ${hash.slice(0, 12)}…: the chain was rewritten`,
        seal.seq,
      );
  }

  /**
   * Unsealed records are not evidence: anyone who can write Redis can rewrite or drop them without a
   * trace. Every pass seals every chain (at least once a minute), so records that stay unsealed longer
   * than the bound mean sealing stopped (the export lock held by someone, passes failing), and the
   * chain cannot be reported intact. A chain never sealed yet is judged by the time of its first record.
   */
  private unsealedTooLong(now: number): void {
    const r = this.report;
    const last = r.seals.last;
    const since = last ? Date.parse(last.time) : this.afterSeal ? Date.parse(this.afterSeal.time) : Number.NaN;
    const ageS = Math.max(0, Math.round((now - since) / 1000));
    const maxS = Math.round(this.maxSealAgeMs / 1000);
    if (Number.isFinite(since)) r.sealAgeSeconds = ageS;
    // An unreadable time proves nothing about freshness: too old.
    if (Number.isFinite(since) && now - since <= this.maxSealAgeMs) return;
    const age = Number.isFinite(since) ? `${ageS} s` : 'an unknown time';
    const firstUnsealed = (last?.seq ?? (r.firstSeq ?? 1) - 1) + 1;
    const why =
      'sealing has stopped (the export lock held by someone? export passes failing?), so they could have been ' +
      'rewritten or removed without a trace';
    this.problem(
      { in: 'redis', key: 'seal' },
      last
        ? `the newest seal (seq ${last.seq}, ${last.time}) is ${age} old, more than the bound of ${maxS} s, and ${r.unsealed} record(s) follow it: ${why}`
        : `${r.unsealed} record(s) were never sealed, the first written ${age} ago, more than the bound of ${maxS} s: ${why}`,
      firstUnsealed,
    );
  }

  /** After every record: seals past the end, the stored head, what is unsealed. */
  finish(head: string | null, now: number): ChainReport {
    const r = this.report;
    for (const [seq, list] of [...this.pending].sort((a, b) => a[0] - b[0])) {
      for (const p of list)
        this.problem(
          p.at,
          `record ${seq} was sealed at ${p.seal.time} but is neither in the export nor in Redis${r.lastSeq === undefined || seq > r.lastSeq ? `: the chain's tail was cut after seq ${r.lastSeq ?? 0}` : ''}`,
          seq,
        );
    }
    const at: Source = { in: 'redis', key: 'head' };
    if (head) {
      const sep = head.indexOf(':');
      const hs = Number(head.slice(0, sep));
      const hh = head.slice(sep + 1);
      if (!Number.isSafeInteger(hs)) this.problem(at, `the chain head "${head}" is malformed`);
      else if (r.lastSeq === undefined || hs > r.lastSeq)
        this.problem(at, `the chain head names seq ${hs}, but the chain ends at ${r.lastSeq ?? 0}: records were removed from the end`, hs);
      else if (this.hashes.get(hs) !== undefined && this.hashes.get(hs) !== hh)
        this.problem(at, `the chain head names hash ${hh.slice(0, 12)}… for seq ${hs}, but the record differs`, hs);
    } else if (r.fromRedis > 0) {
      this.problem(at, 'Redis holds records of this chain but no chain head (deleted?)');
    } else if (r.records > 0) {
      r.warnings.push('Redis holds nothing of this chain (Redis lost its data and no broker has recovered since?)');
    }
    r.head = r.lastSeq === undefined ? '' : `${r.lastSeq}:${this.prev}`;
    const sealed = r.seals.last?.seq ?? 0;
    r.unsealed = r.lastSeq === undefined ? 0 : Math.max(0, r.lastSeq - Math.max(sealed, (r.firstSeq ?? 1) - 1));
    if (r.unsealed > 0 && this.afterSeal) r.unsealedSince = this.afterSeal.time;
    if (r.unsealed > 0) this.unsealedTooLong(now);
    if (!r.seals.checked && r.seals.count > 0) r.warnings.push('seals not checked (no KEK)');
    return r;
  }
}

async function firstSeq(redis: RedisClient, stream: string): Promise<number> {
  const first = (await redis.xrange(stream, '-', '+', 'COUNT', 1))[0];
  if (!first) return Number.POSITIVE_INFINITY;
  try {
    const seq = (JSON.parse(first[1][first[1].indexOf('r') + 1] ?? '') as AuditRecord).seq;
    return Number.isSafeInteger(seq) ? seq : Number.POSITIVE_INFINITY;
  } catch {
    return Number.POSITIVE_INFINITY;
  }
}

/**
 * Checks every audit chain as one chain made of the export files and what is
 * in Redis: each record's hash, seq continuity and `prev` links, identical
 * duplicates skipped (a record in the file and still in Redis, a line
 * re-appended after a crash) and different ones reported, the stored head,
 * and every seal: its MAC (with the key) and that the record it names still
 * has the sealed hash, so a chain rewritten with recomputed hashes, or cut
 * below its last seal, is reported. Records after the last seal are counted
 * as unsealed, not as broken: nothing can tell whether they were rewritten;
 * but records left unsealed for longer than `maxSealAgeMs` (sealing stopped) are a problem: the chain
 * cannot be called intact when its tail could have been rewritten undetected.
 *
 * Reads the export once for all chains; memory grows with the number of
 * records both exported and still in Redis (32 bytes each).
 */
export async function verifyAudit(redis: RedisClient, keys: Keys, opts: VerifyOptions = {}): Promise<ChainReport[]> {
  const max = opts.maxProblems ?? 20;
  const maxSealAgeMs = opts.maxSealAgeMs ?? DEFAULT_SEAL_MAX_AGE_MS;
  const checks = new Map<AuditChain, ChainCheck>();
  // Head and seal first: what is appended while verify runs cannot then look like a cut tail.
  const heads = new Map<AuditChain, string | null>();
  const want = opts.chains ?? keys.auditChains();
  const inRedis = (chain: AuditChain) => chain === 'ops' || chain < keys.buckets;
  const open = async (chain: AuditChain): Promise<ChainCheck> => {
    let c = checks.get(chain);
    if (c) return c;
    if (!inRedis(chain)) {
      // In the export but not a bucket of this broker (the bucket count changed?): the file alone.
      c = new ChainCheck(chain, Number.POSITIVE_INFINITY, opts.sealKey, max, maxSealAgeMs);
      c.report.warnings.push(
        `chain ${chain} is in the export but is not one of the ${keys.buckets} buckets: checked from the export alone`,
      );
      checks.set(chain, c);
      heads.set(chain, null);
      return c;
    }
    const [head, sealRaw, first] = await Promise.all([
      redis.get(keys.auditHead(chain)),
      redis.get(keys.auditSeal(chain)),
      firstSeq(redis, keys.auditStream(chain)),
    ]);
    c = new ChainCheck(chain, first, opts.sealKey, max, maxSealAgeMs);
    checks.set(chain, c);
    heads.set(chain, head);
    if (sealRaw) {
      let seal: unknown;
      try {
        seal = JSON.parse(sealRaw);
      } catch {
        seal = undefined;
      }
      c.seal(seal, { in: 'redis', key: keys.auditSeal(chain) });
    }
    return c;
  };
  for (const chain of want) await open(chain);
  const onlyWanted = opts.chains !== undefined;
  const bad: string[] = [];
  const headerless = new Set<string>();
  let header: { file: string; prefix: string } | undefined;
  if (opts.exportFile) {
    for await (const e of readExport(opts.exportFile)) {
      if (e.kind === 'header') {
        header = { file: e.file, prefix: e.prefix };
        if (e.prefix !== keys.prefix) bad.push(`${e.file} belongs to redis.prefix "${e.prefix}", not "${keys.prefix}"`);
        continue;
      }
      if (e.kind === 'bad') {
        bad.push(`${e.file}:${e.line}: ${e.problem}`);
        continue;
      }
      if (header?.file !== e.file || header.prefix !== keys.prefix) {
        // Not this deployment's file (or its header is gone): its lines are not read as ours.
        if (!headerless.has(e.file) && header?.file !== e.file) bad.push(`${e.file} has no jit-broker header: its lines were not read`);
        headerless.add(e.file);
        continue;
      }
      if (onlyWanted && !want.includes(e.chain)) continue;
      const c = await open(e.chain);
      const at: Source = { in: 'file', file: e.file, line: e.line };
      if (e.kind === 'record') c.record(e.record, at);
      else c.seal(e.seal, at);
    }
  }
  const out: ChainReport[] = [];
  const fileWarnings = [...bad.slice(0, 5), ...(bad.length > 5 ? [`and ${bad.length - 5} more such lines`] : [])];
  for (const [chain, c] of checks) {
    let cursor = '-';
    while (inRedis(chain)) {
      const page = await redis.xrange(keys.auditStream(chain), cursor, '+', 'COUNT', 1000);
      if (page.length === 0) break;
      for (const [id, fields] of page) {
        const at: Source = { in: 'redis', streamId: id };
        let r: AuditRecord;
        try {
          r = JSON.parse(fields[fields.indexOf('r') + 1] ?? '') as AuditRecord;
        } catch {
          c.problem(at, 'record is not valid JSON');
          continue;
        }
        c.record(r, at);
      }
      cursor = `(${page[page.length - 1]![0]}`;
    }
    out.push(c.finish(heads.get(chain) ?? null, opts.now ?? Date.now()));
  }
  // Lines that are not records (a write cut short by a crash is harmless once its records came again): said once.
  if (out[0] && fileWarnings.length > 0) out[0].warnings.push(...fileWarnings.map((w) => `export: ${w}`));
  return out;
}

/** One chain (the export's records of it, then Redis's). */
export async function verifyAuditChain(redis: RedisClient, keys: Keys, chain: AuditChain, opts: VerifyOptions = {}): Promise<ChainReport> {
  const [report] = await verifyAudit(redis, keys, { ...opts, chains: [chain] });
  return report!;
}
