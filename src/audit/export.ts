import { randomBytes } from 'node:crypto';
import type { Logger } from '../logger.ts';
import type { AuditChain, Keys } from '../redis/keys.ts';
import { type HeldLock, reportTakeover, withLock } from '../redis/lock.ts';
import { type RedisClient, script } from '../redis/scripts.ts';
import { ExportFileWriter, recordLine, sealLine } from './export-file.ts';
import { readExportTail } from './export-tail.ts';
import { GENESIS, type AuditEvent, type AuditRecord } from './record.ts';
import { RecordChecker } from './record-checker.ts';
import { afterSlice } from '../ops/pace.ts';
import { markerSeq, type RetentionLimits, trimChain } from './retention.ts';
import { makeSeal, type Seal } from './seal.ts';
import { DEFAULT_SEAL_MAX_AGE_MS, type SealStatus, sealStatus } from './seal-status.ts';

const markScript = script('audit-mark');

/** What one export pass did, per chain that moved. */
export interface ExportResult {
  /** Records appended to the file, by chain. */
  exported: Map<AuditChain, number>;
  /** Records removed from Redis by retention, by chain. */
  trimmed: Map<AuditChain, number>;
  /** Chains whose head was sealed in this pass. */
  sealed: AuditChain[];
  /** Chains with nothing new whose head was sealed again (in Redis), so that a fresh seal means sealing runs. */
  resealed: AuditChain[];
  /** Set when nothing was done because Redis lost its data and recovery has not continued the chains yet. */
  skipped?: 'data_loss';
}

export interface AuditExporterOptions {
  redis: RedisClient;
  keys: Keys;
  logger: Logger;
  /** Absolute path of the export file. */
  file: string;
  maxFileBytes: number;
  retention: RetentionLimits;
  /** Key derived from the KEK (seal.ts); without it heads are not sealed. */
  sealKey: Buffer | undefined;
  /** Export and seal every this many ms (`audit.sealIntervalSeconds`). */
  sealIntervalMs: number;
  /** A chain without a seal for longer than this is logged as an error (`audit.sealMaxAgeSeconds`). */
  sealMaxAgeMs?: number;
  /** Appends an audit record: the export lock taken over from a key no broker could have set. */
  audit: ((e: AuditEvent) => Promise<void>) | undefined;
  /** Trim every this many ms (`audit.retentionIntervalSeconds`). */
  retentionIntervalMs: number;
  /** Redis's clock. */
  now: () => number;
  /** Records read from Redis per page (and per fsync). */
  pageSize?: number;
  /** How long exportNow waits for another instance's pass to finish (default 15 s: EXPORT_LOCK's hold and a margin). */
  waitMs?: number;
}

/**
 * The `audit-export` lock (exports, and the rollback repair in ops/recovery.ts). Set for 10 s and kept extended
 * while a pass runs (withLock), so an exporter killed mid-pass (SIGKILL under a large write) holds it 10 s, not
 * 30: within the 15 s exportNow waits for it (a quarantine change is answered only once the export holds it:
 * 503 `not_ready` for 30 s before; the sealing after a data loss). The wait is the hold and a margin: a holder
 * killed just after an extension leaves the full hold. A page write that outlasts the hold is
 * covered by the keeper's extension every 3.3 s; before each write the pass checks the lock is still its own.
 * `ttlMs` stays the previous release's TTL (30 s): its lock is waited for during a rolling upgrade, not taken
 * over. Lower it to `holdMs` once no such release runs.
 */
export const EXPORT_LOCK = { ttlMs: 30_000, holdMs: 10_000 } as const;

/** Where this process last left off in a chain's stream: the stream id of the record the marker names. */
interface Cursor {
  marker: string;
  id: string;
}

/**
 * Continuous archival of the audit chains to the export file, their seals,
 * and retention (contract section 7).
 *
 * Every `sealIntervalMs`, one instance at a time (the `audit-export` lock):
 * for each chain, every record after the chain's export marker is appended to
 * the file as a JSON line, in chain order, followed by a seal of the newest
 * one (an HMAC with the KEK-derived key); the file is fsynced, then the marker
 * moves (compare-and-set, so an exporter whose lock lapsed cannot move it
 * twice) and the seal is stored in Redis. Before each page's append the pass
 * notes in Redis how far it is about to write (Keys.auditExportPending, only
 * while the lock is its own): a crash between the fsync and the marker, or a
 * stall there past the lock's hold, leaves that note ahead of the marker, and
 * the next pass then reads the end of the file and appends none of the
 * records already there (the file is the truth). What no check can fence is
 * an exporter stalled inside its write(2) past the hold: its lines land after
 * the next holder's, the same records twice, which readers skip as exact
 * duplicates. Every `retentionIntervalMs` the same pass then trims from
 * Redis what is both exported and past `audit.retention`.
 *
 * Sealing with every export means every seal is in the file too: someone
 * who can write Redis but not the file cannot roll the seals back, so what
 * they could rewrite unnoticed is bounded by one seal interval.
 *
 * With several hosts the file must be one shared file (all instances may
 * export, one at a time) or the hosts' files are each only part of the chain.
 */
export class AuditExporter {
  private readonly o: AuditExporterOptions;
  private readonly writer: ExportFileWriter;
  /** Parses and re-hashes each page's records off the event loop. */
  readonly checker: RecordChecker;
  private readonly cursors = new Map<AuditChain, Cursor>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;
  private lastTrim = 0;
  private lastError = '';
  /** When the stale-seal error was last logged (at most once a minute). */
  private lastSealAlarm = 0;
  /**
   * Callers waiting for the export (exportNow, stop): while any is, a running
   * background pass stops pacing itself, so they wait for the work, not the pauses.
   */
  private hurry = 0;

  constructor(opts: AuditExporterOptions) {
    this.o = opts;
    this.checker = new RecordChecker(opts.logger);
    this.writer = new ExportFileWriter({ file: opts.file, maxFileBytes: opts.maxFileBytes, prefix: opts.keys.prefix, now: opts.now });
  }

  get file(): string {
    return this.o.file;
  }

  /** Throws when the export file belongs to another deployment (checked at startup). */
  async assertOwned(): Promise<void> {
    await this.writer.assertOwned();
  }

  /** Runs a pass every `sealIntervalMs` (skipped while another instance runs one). */
  start(): void {
    this.timer = setInterval(() => {
      if (this.running) return;
      const trim = this.o.now() - this.lastTrim >= this.o.retentionIntervalMs;
      this.running = this.pass({ waitMs: 0, trim, paced: true })
        .then(() => {
          this.lastError = '';
        })
        .catch((err) => this.reportError(err))
        // Whether or not this pass ran (another instance's turn, or a lock someone keeps taking): sealing must not stop unseen.
        .then(() => this.watchSeals())
        .catch((err) => this.o.logger.warn({ err: (err as Error).message }, 'audit seal check failed'))
        .finally(() => {
          this.running = undefined;
        });
    }, this.o.sealIntervalMs);
    this.timer.unref();
  }

  /** Stops the timer and waits for a running pass. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    this.hurry += 1;
    try {
      await this.running;
    } finally {
      this.hurry -= 1;
    }
  }

  /** stop(), and ends the record-check thread (a later pass starts another). */
  async close(): Promise<void> {
    await this.stop();
    await this.checker.close();
  }

  /**
   * Exports (and seals) now, waiting for another instance's pass if one is
   * running: when it resolves, every record appended to `chain` (or to every
   * chain) before the call is in the file. Throws when that could not be done.
   */
  async exportNow(chain?: AuditChain): Promise<ExportResult> {
    this.hurry += 1;
    let res: ExportResult | undefined;
    try {
      res = await this.pass({ waitMs: this.o.waitMs ?? 15_000, trim: false, chains: chain === undefined ? undefined : [chain] });
    } finally {
      this.hurry -= 1;
    }
    if (!res) throw new Error('audit export: another instance held the export lock for too long');
    if (res.skipped) throw new Error('audit export: Redis lost its data and the chains are not recovered yet');
    return res;
  }

  /**
   * One pass under the lock; undefined when the lock stayed busy. `paced`: a
   * background pass, which leaves most of the event loop to requests.
   */
  async pass(opts: { waitMs: number; trim: boolean; chains?: AuditChain[]; paced?: boolean }): Promise<ExportResult | undefined> {
    const { redis, keys } = this.o;
    // After a data loss nothing is exported until recovery has continued the chains from the file,
    // or records of a new chain starting at seq 1 would land after the old chain's.
    if ((await redis.get(keys.epoch())) === null)
      return { exported: new Map(), trimmed: new Map(), sealed: [], resealed: [], skipped: 'data_loss' };
    // A lock key without an expiry (or with a longer TTL than ours) would stop every export, seal and
    // trim for good, silently: it is taken over, logged and audited (src/redis/lock.ts).
    const lockOpts = { ...EXPORT_LOCK, waitMs: opts.waitMs, onTakeover: reportTakeover(this.o.logger, this.o.audit) };
    const got = await withLock(redis, keys.lock('audit-export'), lockOpts, async (lock, held) => {
      const result: ExportResult = { exported: new Map(), trimmed: new Map(), sealed: [], resealed: [] };
      let failed: unknown;
      for (const chain of opts.chains ?? keys.auditChains()) {
        // One chain failing (the file is down) still lets the others seal their heads in Redis.
        try {
          const n = await this.exportChain(chain, lock, held, result, opts.paced ?? false);
          if (n > 0) result.exported.set(chain, n);
        } catch (err) {
          failed ??= err;
        }
      }
      if (failed) throw failed;
      if (opts.trim) {
        this.lastTrim = this.o.now();
        for (const chain of keys.auditChains()) {
          if (held.aborted || !(await lock.held())) break;
          const n = await trimChain(redis, keys, chain, this.o.retention, this.o.now());
          if (n > 0) result.trimmed.set(chain, n);
        }
      }
      return result;
    });
    return got?.value;
  }

  /**
   * Logs an error while any chain has gone without a seal for longer than `sealMaxAgeMs` (at most once
   * a minute): every chain with records is sealed on every pass, so that means no pass ran for several
   * intervals (the export lock held by someone, passes failing), and records after the last seal can
   * be rewritten undetected. A seal in Redis that does not verify is logged too.
   */
  async watchSeals(): Promise<void> {
    const { redis, keys } = this.o;
    const got = await this.sealStatus();
    if (!got) return;
    const { maxAgeMs, chains: status } = got;
    const now = this.o.now();
    const late = status.filter((s) => s.ageMs !== undefined && s.ageMs > maxAgeMs);
    const invalid = status.filter((s) => s.invalidSeal).map((s) => s.chain);
    if ((late.length === 0 && invalid.length === 0) || now - this.lastSealAlarm < 60_000) return;
    this.lastSealAlarm = now;
    const lockPttlMs = await redis.pttl(keys.lock('audit-export'));
    this.o.logger.error(
      {
        chains: late.map((s) => ({ chain: s.chain, ageSeconds: Math.round((s.ageMs ?? 0) / 1000), unsealed: s.unsealed })),
        ...(invalid.length > 0 ? { invalidSeals: invalid } : {}),
        maxAgeSeconds: maxAgeMs / 1000,
        lockPttlMs,
      },
      'audit chains have gone unsealed for longer than audit.sealMaxAgeSeconds (or hold a seal that does not verify): ' +
        'records after the last seal can be rewritten undetected; is the export lock held by someone, or are passes failing?',
    );
  }

  /** Every chain's seal status (seal-status.ts) with this exporter's key and bound; undefined without a seal key. */
  async sealStatus(): Promise<{ maxAgeMs: number; chains: SealStatus[] } | undefined> {
    if (!this.o.sealKey) return undefined;
    const maxAgeMs = this.o.sealMaxAgeMs ?? DEFAULT_SEAL_MAX_AGE_MS;
    return { maxAgeMs, chains: await sealStatus(this.o.redis, this.o.keys, this.o.sealKey, this.o.now(), maxAgeMs) };
  }

  private reportError(err: unknown): void {
    const msg = (err as Error).message;
    // Once per distinct failure: a full disk must not flood the log every few seconds.
    if (msg !== this.lastError)
      this.o.logger.error({ err: msg, file: this.o.file }, 'audit export failed; records stay in Redis until it works');
    this.lastError = msg;
  }

  /** Appends a chain's unexported records (and a seal of the last) to the file; returns how many. */
  private async exportChain(chain: AuditChain, lock: HeldLock, held: AbortSignal, result: ExportResult, paced: boolean): Promise<number> {
    // Still ours: confirmed by Redis just now, and not given up by the keeper (no extension confirmed for most of a hold).
    const ours = async () => !held.aborted && (await lock.held());
    const { redis, keys } = this.o;
    const stream = keys.auditStream(chain);
    const [exported, pending] = await Promise.all([redis.get(keys.auditExported(chain)), redis.get(keys.auditExportPending(chain))]);
    let marker = exported ?? '';
    let after = await this.locate(chain, marker);
    const pageSize = this.o.pageSize ?? 250;
    /** Names this pass's notes in Keys.auditExportPending. */
    const passId = randomBytes(6).toString('base64url');
    // An earlier pass noted it would append past the marker and never moved it (it crashed or stalled between its
    // append and the marker move): what of that the file holds, by seq. Those records are not appended again.
    let inFile = markerSeq(pending ?? '') > markerSeq(marker) ? await this.inFileAfter(chain, markerSeq(marker)) : undefined;
    let already = 0;
    /** Records appended to the file by this pass. */
    let count = 0;
    /** Whether this pass moved the marker (records appended, or found in the file already). */
    let moved = false;
    let expectSeq = markerSeq(marker) + 1;
    let expectPrev = marker ? marker.slice(marker.indexOf(':') + 1) : GENESIS;
    let sliceStart = performance.now();
    for (let pages = 0; ; pages++) {
      // A background pass spreads its pages (ops/pace.ts): each holds Redis for its XRANGE and the loop for its lines.
      if (pages > 0) await afterSlice(sliceStart, paced && this.hurry === 0);
      sliceStart = performance.now();
      const page = await redis.xrange(stream, after === '-' ? '-' : `(${after}`, '+', 'COUNT', pageSize);
      if (page.length === 0) break;
      const raws = page.map(([, fields]) => fields[fields.indexOf('r') + 1] ?? '');
      // Parsing and re-hashing (the pass's heavy part) runs in a worker thread (on the loop if it cannot run).
      // The thread's time is neither the loop's nor Redis's: the pause after this page does not count it.
      const [waitFrom, onLoop] = [performance.now(), this.checker.checked.loop];
      const checked = await this.checker.check(raws);
      if (this.checker.checked.loop === onLoop) sliceStart += performance.now() - waitFrom;
      const lines: string[] = [];
      let last: { seq: number; hash: string } | undefined;
      for (let i = 0; i < raws.length; i++) {
        const raw = raws[i]!;
        const r = checked[i];
        if (!r) {
          this.o.logger.error({ chain }, 'audit export: a stream entry is not a record (tampering?); skipped, verify reports it');
          continue;
        }
        if (r.seq <= expectSeq - 1 && marker) continue; // already in the file (the marker moved under a stale cursor)
        if (inFile !== undefined) {
          // The very record, next in the chain: in the file already. From the first one the file lacks on, all are appended.
          if (r.seq === expectSeq && inFile.get(r.seq) === r.hash) {
            expectSeq = r.seq + 1;
            expectPrev = r.hash;
            last = r;
            already += 1;
            continue;
          }
          inFile = undefined;
        }
        if (r.seq !== expectSeq || r.prev !== expectPrev || !r.hashOk) {
          // Exported anyway: the file is the evidence, and verify names the break.
          this.o.logger.error(
            { chain, seq: r.seq, expected: expectSeq },
            'audit export: the chain in Redis is broken here (run npm run audit:verify)',
          );
        }
        expectSeq = r.seq + 1;
        expectPrev = r.hash;
        lines.push(recordLine(chain, raw));
        last = r;
      }
      const lastId = page[page.length - 1]![0];
      if (!last) {
        after = lastId;
        continue;
      }
      const done = page.length < pageSize;
      const seal = done ? this.seal(chain, last) : undefined;
      if (seal) lines.push(sealLine(chain, seal));
      const next = `${last.seq}:${last.hash}`;
      if (lines.length > 0) {
        // The note of how far this append goes, written only while the lock is ours (the check before every write).
        // It names this pass: the fenced write counts a key already holding its value as written (a resend), and a
        // successor that exported this very page holds `next` there too, which let a pass whose lock lapsed append
        // the page a second time (test/audit/export-pending-fence.test.ts).
        if (held.aborted || !(await lock.write(keys.auditExportPending(chain), `${next} ${passId}`)))
          throw new Error('audit export: lost the export lock mid-pass');
        try {
          await this.writer.append(lines);
        } catch (err) {
          // The file is down, Redis is not: a seal in Redis still guards the head meanwhile.
          if (seal) await redis.set(keys.auditSeal(chain), JSON.stringify({ chain, ...seal }));
          throw err;
        }
      }
      if ((await markScript.run(redis, [keys.auditExported(chain)], [marker, next])) !== 1) {
        this.cursors.delete(chain);
        this.o.logger.warn({ chain }, 'audit export: another exporter moved the marker; leaving this chain to it');
        return count;
      }
      count += lines.length - (seal ? 1 : 0);
      moved = true;
      marker = next;
      after = lastId;
      this.cursors.set(chain, { marker, id: lastId });
      if (seal) {
        await redis.set(keys.auditSeal(chain), JSON.stringify({ chain, ...seal }));
        result.sealed.push(chain);
      }
      if (done) break;
    }
    if (already > 0)
      this.o.logger.warn(
        { chain, records: already },
        'audit export: records were in the file already (a pass appended them and stopped before moving the marker); not appended again',
      );
    // Nothing new: the head is sealed again, in Redis only (the file would grow a line per chain per pass),
    // so a seal's age says whether sealing runs (metrics, audit:verify), idle chains included.
    if (!moved && marker) {
      const sep = marker.indexOf(':');
      const seal = this.seal(chain, { seq: markerSeq(marker), hash: marker.slice(sep + 1) });
      if (seal && (await ours())) {
        await redis.set(keys.auditSeal(chain), JSON.stringify({ chain, ...seal }));
        result.resealed.push(chain);
      }
    }
    // A backlog that ended exactly on a page boundary: its last record still needs its seal. Only while the lock
    // is still ours, as every write of the pass: a pass stalled here past its hold would append its older seal
    // behind the records the next holder exported (and sealed), and set Redis's seal back to it.
    if (moved && !result.sealed.includes(chain)) {
      const sep = marker.indexOf(':');
      const seal = this.seal(chain, { seq: Number(marker.slice(0, sep)), hash: marker.slice(sep + 1) });
      if (seal) {
        if (!(await ours())) throw new Error('audit export: lost the export lock mid-pass');
        await this.writer.append([sealLine(chain, seal)]);
        if (!(await ours())) throw new Error('audit export: lost the export lock mid-pass');
        await redis.set(keys.auditSeal(chain), JSON.stringify({ chain, ...seal }));
        result.sealed.push(chain);
      }
    }
    return count;
  }

  /**
   * The hashes of `chain`'s records after seq `afterSeq` in the export, by seq: read from the end of the file
   * back to that seq (exportTail), so about the lines appended since the marker was last moved.
   */
  private async inFileAfter(chain: AuditChain, afterSeq: number): Promise<Map<number, string>> {
    const tail = await readExportTail(
      this.o.file,
      this.o.keys.prefix,
      (c) => (c === chain ? afterSeq : undefined),
      () => false,
      [chain],
      { hashes: true },
    );
    return tail.get(chain)?.hashes ?? new Map();
  }

  private seal(chain: AuditChain, r: { seq: number; hash: string }): Seal | undefined {
    if (!this.o.sealKey) return undefined;
    return makeSeal(this.o.sealKey, chain, r.seq, r.hash, new Date(this.o.now()).toISOString());
  }

  /**
   * The stream id of the record the marker names ('-' to start at the
   * beginning). Usually remembered from this process's last pass; otherwise
   * found by reading the stream backwards from its end, which costs about
   * as many records as are waiting to be exported.
   */
  private async locate(chain: AuditChain, marker: string): Promise<string> {
    if (!marker) return '-';
    const cached = this.cursors.get(chain);
    if (cached?.marker === marker) return cached.id;
    const seq = markerSeq(marker);
    const stream = this.o.keys.auditStream(chain);
    let end = '+';
    for (;;) {
      const page = await this.o.redis.xrevrange(stream, end, '-', 'COUNT', 500);
      if (page.length === 0) return '-';
      for (const [id, fields] of page) {
        const raw = fields[fields.indexOf('r') + 1] ?? '';
        let s: number | undefined;
        try {
          s = (JSON.parse(raw) as AuditRecord).seq;
        } catch {
          s = undefined;
        }
        if (s !== undefined && s <= seq) return id;
      }
      end = `(${page[page.length - 1]![0]}`;
    }
  }
}
