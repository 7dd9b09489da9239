import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { constants, rmSync } from 'node:fs';
import { access, type FileHandle, lstat, open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { type BrokerClient, nextCursorCheck } from '../../client/broker-client.ts';
import { BrokerResponseError, ClientConfigError } from '../../client/errors.ts';
import type { AuditFilter, AuditRecord } from '../../client/types.ts';
import { UsageError } from '../args.ts';
import { type ApiAuditRecord, ChainChecker } from '../audit-chain.ts';
import type { Command, Ctx } from '../command.ts';
import type { Out } from '../output.ts';
import { listOptions, printPage } from './paging.ts';
import { terminalSafe } from '../terminal.ts';

const filterOptions = {
  task: { type: 'string' },
  actor: { type: 'string' },
  action: { type: 'string' },
  since: { type: 'string' },
  until: { type: 'string' },
} as const;

/** `--since`/`--until` take ISO 8601 or a duration back from now (`15m` = 15 minutes ago). */
function time(ctx: Ctx, name: string): string | undefined {
  const v = ctx.flags.str(name);
  if (v === undefined) return undefined;
  const ago = /^(\d+)([smhd])$/.exec(v);
  if (ago) return new Date(Date.now() - Number(ago[1]) * { s: 1, m: 60, h: 3600, d: 86_400 }[ago[2] as 's']! * 1000).toISOString();
  if (Number.isNaN(Date.parse(v))) ctx.flags.fail(`--${name} must be an ISO 8601 time or a duration ago (15m, 2h, 1d)`);
  return new Date(v).toISOString();
}

function filter(ctx: Ctx): AuditFilter {
  return {
    taskId: ctx.flags.str('task'),
    actor: ctx.flags.str('actor'),
    action: ctx.flags.str('action'),
    since: time(ctx, 'since'),
    until: time(ctx, 'until'),
  };
}

function table(out: Out, records: AuditRecord[]): void {
  out.table(
    ['SEQ', 'TIME', 'ACTOR', 'ACTION', 'DECISION', 'TASK', 'ROLE', 'REASON'],
    records.map((r) => [r.seq, r.time, r.actor, r.action, r.decision, r.taskId, r.role, r.reason]),
  );
}

export const auditQuery: Command = {
  path: ['audit', 'query'],
  usage: 'jit audit query [--task ID] [--actor A] [--action X] [--since T] [--until T] [--limit N] [--cursor C] [--all]',
  summary: 'audit records, oldest first (admins: all; a task’s orchestrator and agent: that task’s, with --task)',
  options: { ...filterOptions, ...listOptions },
  async run(ctx) {
    const f = filter(ctx);
    const client = ctx.client();
    await printPage(ctx, (page) => client.queryAudit({ ...f, ...page }), table);
    return 0;
  },
};

export const auditTail: Command = {
  path: ['audit', 'tail'],
  usage: 'jit audit tail [--task ID] [--actor A] [--action X] [--since T] [--interval S]',
  summary: 'follow the audit log: records from --since (default now) as they are written, until interrupted',
  options: {
    task: filterOptions.task,
    actor: filterOptions.actor,
    action: filterOptions.action,
    since: filterOptions.since,
    interval: { type: 'string' },
  },
  async run(ctx) {
    const base = filter(ctx);
    const interval = (ctx.flags.seconds('interval') ?? 2) * 1000;
    const client = ctx.client();
    const stop = new AbortController();
    const onSignal = () => stop.abort();
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    try {
      await follow(client, { ...base, since: base.since ?? new Date().toISOString() }, interval, stop.signal, (r) =>
        ctx.json
          ? // One line per record, escaped as every --json output is (out.json): a C1 control or bidi character
            // that JSON.stringify leaves raw must not reach the terminal; `\uXXXX` reads back as the same value.
            ctx.io.stdout.write(`${terminalSafe(JSON.stringify(r))}\n`)
          : ctx.out.line(
              terminalSafe(`${r.time}  ${r.actor}  ${r.action}  ${r.decision}  ${r.taskId ?? '-'}  ${r.reason ?? ''}`.trimEnd()),
            ),
      );
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    return 0;
  },
};

/**
 * How far before the newest record seen each poll of `audit tail` reads again. A record's `time` is when it was
 * decided, not when it reached its chain: one may land after a newer one was printed (its append delayed or
 * retried, a busy chain's batch still in flight), up to 5 s after its time in the ordinary course (the broker's
 * TIME_SLACK_MS, docs/audit.md "Querying by time"). Records seen again are told apart by hash.
 */
export const TAIL_OVERLAP_MS = 5_000;

/**
 * Polls `GET /v1/audit?since=` from TAIL_OVERLAP_MS before the newest time seen (never before the first
 * `since`), printing each record once: the hashes of records a later poll can still return are remembered.
 */
async function follow(client: BrokerClient, f: AuditFilter, intervalMs: number, signal: AbortSignal, emit: (r: AuditRecord) => void) {
  const first = f.since === undefined ? Number.NEGATIVE_INFINITY : Date.parse(f.since);
  let newest: number | undefined;
  /** Hash → time (ms) of the records printed that a later poll may return again. */
  const seen = new Map<string, number>();
  while (!signal.aborted) {
    // One poll pages with the filter it started with: a cursor is bound to its filters, and `newest` moves on below.
    const from = newest === undefined ? f.since : new Date(Math.max(first, newest - TAIL_OVERLAP_MS)).toISOString();
    for await (const r of client.paginate((cursor) => client.queryAudit({ ...f, since: from, cursor }))) {
      if (signal.aborted) return;
      if (seen.has(r.hash)) continue;
      const at = Date.parse(r.time);
      seen.set(r.hash, at);
      emit(r);
      if (Number.isFinite(at) && (newest === undefined || at > newest)) newest = at;
    }
    // Records before the next poll's window are not returned again: forget them (a record without a time stays).
    if (newest !== undefined) for (const [hash, at] of seen) if (at < newest - TAIL_OVERLAP_MS) seen.delete(hash);
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(t);
        signal.removeEventListener('abort', done);
        resolve();
      };
      // Removed again when the timer fires: a listener left on every poll piled up (a leak, and Node's
      // MaxListenersExceededWarning on stderr after ten polls).
      const t = setTimeout(done, intervalMs);
      signal.addEventListener('abort', done, { once: true });
    });
  }
}

export const auditVerify: Command = {
  path: ['audit', 'verify'],
  usage: 'jit audit verify [--task ID] [--max-seal-age S]',
  summary:
    'check the hash chain of a task’s audit records (with its sub-tasks), or (admins) of every record in Redis ' +
    'and that sealing keeps up; exit 0 intact, 1 broken or unsealed for too long',
  options: { task: { type: 'string' }, 'max-seal-age': { type: 'string' } },
  async run(ctx) {
    const taskId = ctx.flags.str('task');
    const maxSealAge = ctx.flags.seconds('max-seal-age');
    if (taskId && maxSealAge !== undefined) ctx.flags.fail('--max-seal-age applies without --task only (the seals of every chain)');
    const client = ctx.client();
    if (!taskId) return verifyAll(ctx, client, maxSealAge);
    // The broker judges the records of each evidence page: every page is read, so a record changed or
    // removed anywhere in the task's trail is found, not only on the first page.
    let chain: 'intact' | 'broken' = 'intact';
    let records = 0;
    let cursor: string | undefined;
    const next = nextCursorCheck();
    do {
      const ev = await client.taskEvidence(taskId, { limit: 500, cursor });
      records += ev.audit?.items?.length ?? 0;
      if (ev.chain !== 'intact') chain = 'broken';
      cursor = next(ev.audit?.nextCursor);
    } while (cursor);
    if (ctx.json) ctx.out.json({ taskId, chain, records });
    else
      ctx.out.line(
        `task ${taskId}: audit chain ${chain}${chain === 'intact' ? '' : ' (records were changed or removed)'} (${records} record(s) checked)`,
      );
    return chain === 'intact' ? 0 : 1;
  },
};

/**
 * An admin's `jit audit verify`: every record the broker still holds, read page by page and
 * checked here (each record's hash, each chain's links), then whether sealing keeps up
 * (`GET /v1/admin/audit/seals`, whose MACs the broker checks): records that stay unsealed longer
 * than the bound could have been rewritten in Redis with their hashes recomputed, which no check
 * of the chain itself can see, so the log is not called intact then. The export file needs the
 * broker host: `npm run audit:verify`.
 */
async function verifyAll(ctx: Ctx, client: BrokerClient, maxSealAge: number | undefined): Promise<number> {
  const checker = new ChainChecker();
  try {
    for await (const r of client.paginate((cursor) => client.queryAudit({ limit: 500, cursor })))
      checker.add(r as unknown as ApiAuditRecord);
  } catch (err) {
    if (err instanceof BrokerResponseError && err.code === 'audit_task_required')
      throw new UsageError('only admins verify the whole audit log; give --task ID to verify a task’s records', auditVerify.usage);
    throw err;
  }
  const chains = checker.report();
  const records = Object.values(chains).reduce((n, c) => n + c.records, 0);
  const seals = await client.auditSeals();
  const bound = maxSealAge ?? seals.maxSealAgeSeconds;
  const sealProblems = seals.chains.flatMap((s) => {
    const out: { chain: string; problem: string }[] = [];
    const chain = String(s.chain);
    if (s.invalidSeal)
      out.push({ chain, problem: 'Redis holds a seal of this chain whose MAC does not verify (forged, or made with another KEK)' });
    // An age nobody knows proves nothing: too old.
    if (s.unsealed > 0 && (s.ageSeconds === null || s.ageSeconds > bound))
      out.push({
        chain,
        problem:
          `${s.unsealed} record(s) unsealed for ${s.ageSeconds === null ? 'an unknown time' : `${s.ageSeconds} s`}, longer than ` +
          `the bound of ${bound} s: sealing has stopped, so they could have been rewritten undetected`,
      });
    return out;
  });
  const chain = !checker.intact ? 'broken' : sealProblems.length > 0 ? 'unsealed' : 'intact';
  if (ctx.json) ctx.out.json({ chain, records, chains, seals: { maxSealAgeSeconds: bound, problems: sealProblems, chains: seals.chains } });
  else {
    const what = chain === 'unsealed' ? 'not provable (records unsealed for too long)' : chain;
    ctx.out.line(`audit log: chain ${what} (${records} record(s) in ${Object.keys(chains).length} chain(s) checked)`);
    for (const [name, c] of Object.entries(chains)) if (c.problem) ctx.out.line(`  chain ${name}: ${c.problem}`);
    for (const p of sealProblems) ctx.out.line(`  chain ${p.chain}: ${p.problem}`);
    ctx.out.note('the export file is checked on the broker host: npm run audit:verify');
  }
  return chain === 'intact' ? 0 : 1;
}

export const auditExport: Command = {
  path: ['audit', 'export'],
  usage: 'jit audit export [--task ID] [--actor A] [--action X] [--since T] [--until T] [--output FILE]',
  summary: 'every matching audit record as JSON lines, oldest first, to stdout or --output (replaced once all is read)',
  options: { ...filterOptions, output: { type: 'string' } },
  async run(ctx) {
    const f = filter(ctx);
    const client = ctx.client();
    const file = ctx.flags.str('output');
    const out = file ? await openOutput(file) : undefined;
    // Interrupted: the temporary file goes, FILE stays as it was, and jit ends by the signal as it would have.
    const onSignal = (sig: NodeJS.Signals) => {
      if (out) rmSync(out.temp, { force: true });
      process.kill(process.pid, sig);
    };
    if (out) for (const s of SIGNALS) process.once(s, onSignal);
    let n = 0;
    // Only a whole export takes FILE's place: a page that failed half-way left a file that looked like the whole
    // log, and the last good export gone.
    const finish = async (whole: boolean) => {
      if (!out || !file) return;
      // The handlers stay until the rename is done: a Ctrl-C during the fsync still removes the temporary file.
      const failed = await settle(out, file, whole);
      for (const s of SIGNALS) process.off(s, onSignal);
      if (failed || !whole) {
        ctx.out.note(`nothing written to ${file}: the export did not finish`);
        if (failed) throw failed;
        return;
      }
      ctx.out.note(`exported ${n} record(s) to ${file}`);
    };
    try {
      for await (const r of client.paginate((cursor) => client.queryAudit({ ...f, limit: 500, cursor }))) {
        if (out) {
          // A write that failed meanwhile (a full disk, while the next page was read) left the stream destroyed:
          // a write to it waited for a 'drain' that never came, and jit ended with Node's exit 13, saying nothing.
          if (out.sink.errored) throw unwritable(file!, out.sink.errored);
          if (!out.sink.write(`${JSON.stringify(r)}\n`)) await once(out.sink, 'drain').catch((e) => Promise.reject(unwritable(file!, e)));
        } else {
          // Stdout may be a terminal: escaped as every --json line is (the same JSON value). The file keeps them as sent.
          ctx.io.stdout.write(`${terminalSafe(JSON.stringify(r))}\n`);
        }
        n += 1;
      }
    } catch (err) {
      await finish(false);
      throw err;
    }
    await finish(true);
    return 0;
  },
};

/** The temporary file an export to FILE is written into, and the stream writing it. */
interface Output {
  fh: FileHandle;
  sink: ReturnType<FileHandle['createWriteStream']>;
  temp: string;
}

/**
 * Ends an export into `out`: when `whole`, its records flushed to disk and the temporary file renamed over `file`;
 * otherwise (or when that fails) the temporary file removed. A write that failed (a full disk) is the error returned.
 */
async function settle(out: Output, file: string, whole: boolean): Promise<ClientConfigError | undefined> {
  let err: unknown;
  const failed = (e: unknown) => {
    err ??= e ?? undefined;
  };
  if (whole) {
    await new Promise<void>((resolve) => out.sink.write('', (e) => resolve(failed(e))));
    if (!err) await out.fh.sync().catch(failed);
  }
  await new Promise<void>((resolve) => out.sink.end((e?: Error | null) => resolve(failed(e))));
  if (whole && !err) await rename(out.temp, file).catch(failed);
  if (!whole || err) await rm(out.temp, { force: true }).catch(() => undefined);
  // Not whole: what failed is the export's own error, thrown already.
  if (!whole || !err) return undefined;
  return unwritable(file, err);
}

/** A write to `file` (its temporary file) that failed: the caller's disk or set-up, said in one line (exit 2). */
function unwritable(file: string, err: unknown): ClientConfigError {
  return new ClientConfigError(
    'output_unwritable',
    `cannot write ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    {
      cause: err,
    },
  );
}

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/**
 * Checks `--output` and opens a temporary file beside it for the caller alone, before the broker is asked. FILE
 * itself: never a symlink (one planted in a shared directory would aim the records at another file), a regular
 * file the caller may write when it exists. The temporary file: created anew (O_EXCL, never through a symlink),
 * 0600; it takes FILE's name once the whole export is in it. A path it cannot use is the caller's set-up (exit 2),
 * said in one line.
 */
async function openOutput(file: string): Promise<Output> {
  try {
    const st = await lstat(file).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (st?.isSymbolicLink()) throw Object.assign(new Error('a symlink'), { code: 'ELOOP' });
    if (st && !st.isFile()) throw Object.assign(new Error('not a regular file'), { code: 'not a regular file' });
    if (st) await access(file, constants.W_OK);
    const temp = join(dirname(file), `.${basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
    const fh = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    const sink = fh.createWriteStream();
    // A write that fails (a full disk) is seen by settle(), not an unhandled 'error' event.
    sink.on('error', () => undefined);
    return { fh, sink, temp };
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new ClientConfigError('output_unwritable', `cannot write ${file} (${why})`, { cause: err });
  }
}
