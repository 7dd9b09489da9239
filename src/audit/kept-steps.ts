import type { AuditChain, Keys } from '../redis/keys.ts';
import type { RedisClient } from '../redis/scripts.ts';
import { ONCE_KEEP_MS } from './outbox-member.ts';
import { type AuditRecord, isAuditRecord } from './record.ts';

/**
 * What one recovery step did to a chain, kept in Redis in the step that changed it (a list per chain, one JSON
 * entry per step) until the recovery is recorded: the continuation steps of a data loss (loss-continue.lua,
 * src/audit/restore.ts) and the repair steps of a rollback (rollback-repair.lua, src/ops/rollback.ts). An attempt
 * that failed after a step (or an instance that died) left the chain changed; a later attempt, or another
 * instance, finds the step kept instead, appends again each record it took off the chain (once: AuditLog.appendOnce
 * with `idOf`), and records it; then the steps are dropped.
 *
 * Such a step may wait longer than the week the chain's ids of records written once live (its instance died and
 * none started): while one is kept, audit-append.lua keeps them without expiry (it names each kind's list, in the
 * chain's slot), and dropping the steps lets them expire again, so its records are appended once however late.
 */
export interface KeptStep {
  /** The records the step took off the chain, to append again behind the export's end. */
  orphans: AuditRecord[];
}

/** One kind of kept recovery steps (see KeptStep). */
export interface KeptSteps<T extends KeptStep> {
  /** The entries kept for each of `chains`, in that order (one read per chain: on a Cluster each is in its own slot). */
  read(redis: RedisClient, keys: Keys, chains: readonly AuditChain[]): Promise<string[][]>;
  /** A kept entry of `chain`, or undefined when it is not what the step stores (Redis is writable by others). */
  parse(entry: string, chain: AuditChain): T | undefined;
  /** The identity a record a step took off the chain is appended again with (AuditLog.appendOnce): its seq and hash there. */
  idOf(record: AuditRecord): string;
  /**
   * Drops the steps kept for `chains`, once the recovery that kept them is recorded, and lets each chain's ids of
   * records written once expire again, in the same step (audit-append.lua kept them without expiry meanwhile).
   */
  drop(redis: RedisClient, keys: Keys, chains: readonly AuditChain[]): Promise<void>;
}

export function keptSteps<T extends KeptStep>(spec: {
  /** What the steps are, for errors. */
  what: string;
  /** The list a chain's steps are kept in. */
  key: (keys: Keys, chain: AuditChain) => string;
  /** What the identities of the records taken off start with (`<prefix>:<seq>:<hash>`). */
  idPrefix: string;
  /** The rest of an entry's shape, once it is an object whose `orphans` are records. */
  valid: (entry: Record<string, unknown>, chain: AuditChain) => boolean;
}): KeptSteps<T> {
  return {
    read: (redis, keys, chains) => Promise.all(chains.map((c) => redis.lrange(spec.key(keys, c), 0, -1))),
    parse(entry, chain) {
      let v: unknown;
      try {
        v = JSON.parse(entry);
      } catch {
        return undefined;
      }
      if (typeof v !== 'object' || v === null) return undefined;
      const o = v as Record<string, unknown>;
      if (!Array.isArray(o.orphans) || !o.orphans.every(isAuditRecord)) return undefined;
      return spec.valid(o, chain) ? (v as T) : undefined;
    },
    idOf: (record) => `${spec.idPrefix}:${record.seq}:${record.hash}`,
    async drop(redis, keys, chains) {
      // One chain at a time: on a Cluster each chain's keys are in its own slot (all of one chain in the same one).
      await Promise.all(
        chains.map(async (c) => {
          const res = await redis.multi().del(spec.key(keys, c)).pexpire(keys.auditOnce(c), ONCE_KEEP_MS).exec();
          if (!res) throw new Error(`dropping kept ${spec.what} aborted`);
          for (const [err] of res) if (err) throw err;
        }),
      );
    },
  };
}
