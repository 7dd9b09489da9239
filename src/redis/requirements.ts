import { Cluster, type Redis } from 'ioredis';
import pTimeout from 'p-timeout';
import type { Logger } from '../logger.ts';
import { SharedReading } from '../shared-reading.ts';
import type { Keys } from './keys.ts';
import { type RedisClient, script } from './scripts.ts';
import { isPermissionReply, isRedisUnavailable, redisReply } from './unavailable.ts';

/** How long one round of checks may take before /readyz keeps the last round's answer (ms). */
const CHECK_MS = 1000;
/**
 * /readyz runs the checks at most this often, shared by concurrent probes (ms). A round is about ten
 * requests (one a script running ~70 commands), and what it checks changes only when an operator changes
 * Redis (its eviction policy, the ACL user); a request that meets a refused command answers 503 at once
 * anyway. So a problem shows on /readyz within this plus CHECK_MS (about 6 s), and a flood of /readyz
 * costs one round per interval. Whether Redis answers and takes writes is /readyz's own probe, every second.
 */
export const CHECK_EVERY_MS = 5000;

const probe = script('redis-probe');

export interface RequirementsOptions {
  redis: RedisClient;
  keys: Keys;
  logger: Logger;
  /** The worker runs here: BullMQ's worker waits for jobs with BZPOPMIN. */
  blocking: boolean;
  /** `redis.replicaAck.replicas` is not 0: WAIT. */
  wait: boolean;
}

/**
 * What the broker needs of its Redis beyond reaching it and writing a key:
 *
 * - `maxmemory-policy noeviction` on every master. An evicting Redis drops a
 *   lease or task record under memory pressure, and with it the only path to
 *   revoking a live credential; nothing else notices (the data-loss check
 *   watches whole-dataset losses). Read from `INFO memory`; from `CONFIG GET`
 *   when INFO is refused; a policy neither shows is a problem (deny by default).
 * - every command the broker and BullMQ send (an ACL missing one lets a plain
 *   SET through and fails every request): INFO (BullMQ reads it, and spins
 *   when it is refused), ROLE, scripts (EVALSHA, EVAL), each command the
 *   scripts call (redis-probe.lua), MULTI/EXEC, PUBLISH on the broker's
 *   channels, BZPOPMIN (the worker) and WAIT (`redis.replicaAck`).
 *
 * Startup refuses a Redis with a problem ({@link assertMet}), before any
 * BullMQ queue exists; /readyz keeps asking ({@link readiness}) and answers 503
 * naming each problem while one lasts. A Redis that is down, full (OOM) or
 * refusing writes after a failed save (MISCONF) is not a problem here:
 * `checks.redis` reports those, and they pass by themselves.
 */
export class RedisRequirements {
  private last: string[] = [];
  /** /readyz's rounds: one per CHECK_EVERY_MS, shared by concurrent probes; a round never rejects. */
  private readonly rounds = new SharedReading(CHECK_EVERY_MS, () =>
    pTimeout(this.check(), { milliseconds: CHECK_MS })
      .then(({ problems, unsure }) => {
        if (unsure && problems.length === 0) return this.last;
        this.report(problems);
        return problems;
      })
      .catch(() => this.last),
  );
  private readonly o: RequirementsOptions;

  constructor(o: RequirementsOptions) {
    this.o = o;
  }

  /** Every problem found now, one sentence each; empty when the Redis suits the broker (or could not say). */
  async problems(): Promise<string[]> {
    return (await this.check()).problems;
  }

  /** The problems, and whether a check could not run (Redis down, stalled, full): then an empty list proves nothing. */
  private async check(): Promise<{ problems: string[]; unsure: boolean }> {
    const { redis, keys } = this.o;
    const cluster = redis instanceof Cluster;
    const out: string[] = [];
    const denied = new Set<string>();
    let unsure = false;
    const refused = (what: string, err: unknown): void => {
      const problem = refusal(what, err);
      if (problem === undefined) unsure = true;
      // A direct command's NOPERM names it ('eval' when EVALSHA passed and the NOSCRIPT fallback did not).
      if (problem === 'command') denied.add(/run the '([^']+)' command/.exec(String((err as Error).message))?.[1]?.toUpperCase() ?? what);
      else if (problem === 'key') out.push(`the Redis user may not use every key under ${keys.prefix}:* (NOPERM)`);
      else if (problem === 'channel') out.push(`the Redis user may not use the pub/sub channels under ${keys.prefix}:* (NOPERM)`);
      else if (problem) out.push(problem);
    };
    const run = async (what: string, send: () => Promise<unknown>): Promise<boolean> => {
      try {
        await send();
        return true;
      } catch (err) {
        refused(what, err);
        return false;
      }
    };
    const masters: Redis[] = cluster ? redis.nodes('master') : [redis];
    for (const node of masters) {
      const where = cluster ? ` on ${node.options.host}:${node.options.port}` : '';
      let info = '';
      if (await run('INFO', async () => (info = String(await node.info('memory'))))) {
        const policy = /^maxmemory_policy:(\S+)/m.exec(info)?.[1];
        if (policy) out.push(...evictionProblem(policy, where));
        else out.push(...(await this.configPolicy(node, where, refused)));
      } else if (denied.has('INFO')) out.push(...(await this.configPolicy(node, where, refused)));
      // Readiness asks a node whether it is a master (ROLE); on a Cluster it asks CLUSTER INFO.
      if (!cluster) await run('ROLE', () => node.call('ROLE'));
    }
    if (cluster) await run('CLUSTER INFO', () => redis.cluster('INFO'));
    await run('EVALSHA', async () => {
      const errors = (await probe.run(
        redis,
        ['string', 'hash', 'zset', 'set', 'stream', 'list', 'moved'].map((k) => keys.probe(k)),
        [],
      )) as string[];
      for (let i = 0; i + 1 < errors.length; i += 2) refused(errors[i]!, new Error(errors[i + 1]));
    });
    // Scripts go by EVALSHA; EVAL loads one Redis does not have yet (after a restart or SCRIPT FLUSH).
    await run('EVAL', () => redis.eval('return 1', 0));
    await run('MULTI', () =>
      firstError(redis.multi().exists(keys.probe('string'))).catch((err: Error) => {
        // ioredis reports a refused MULTI as the EXEC after it: the only way EXEC finds no MULTI.
        throw /EXEC without MULTI/.test(err.message) ? new Error("NOPERM this user has no permissions to run the 'multi' command") : err;
      }),
    );
    await run('PUBLISH', () => redis.publish(keys.channel('probe'), ''));
    // On a member just added, so it returns at once: blocking the shared connection would hold up every request.
    if (this.o.blocking)
      await run('BZPOPMIN', () => firstError(redis.pipeline().zadd(keys.probe('zset'), 1, 'p').bzpopmin(keys.probe('zset'), 0.01)));
    if (this.o.wait) await run('WAIT', () => redis.call('WAIT', 0, 1));
    if (denied.size > 0) {
      out.unshift(
        `the Redis user may not run ${[...denied].join(', ')} (NOPERM): the broker needs every command of docs/operations.md, ` +
          `"What the broker needs of Redis", on every key and channel under ${keys.prefix}:*`,
      );
    }
    return { problems: [...new Set(out)], unsure };
  }

  /** At startup: throws naming every problem, so a Redis that does not suit fails startup rather than half-starting. */
  async assertMet(redisName: string): Promise<void> {
    const problems = await this.problems();
    this.last = problems;
    if (problems.length > 0) throw new Error(`Redis ${redisName} does not suit the broker: ${problems.join('; ')}`);
  }

  /**
   * For /readyz: the problems, checked at most once per CHECK_EVERY_MS (concurrent probes share a round). A round that
   * cannot finish in time, or finds nothing while some check could not run (Redis down, stalled or full, which
   * `checks.redis` reports), keeps the last answer.
   * Logs each change: an error naming the problems when one appears, a line when they are gone.
   */
  async readiness(): Promise<string[]> {
    return (await this.rounds.get()).value ?? this.last;
  }

  private report(problems: string[]): void {
    const was = this.last.join('\n');
    this.last = problems;
    if (problems.join('\n') === was) return;
    if (problems.length > 0) this.o.logger.error({ problems }, 'Redis does not suit the broker: not ready until this is fixed');
    else this.o.logger.info('Redis suits the broker again');
  }

  /** The eviction policy from CONFIG GET (managed Redis often renames or disables CONFIG). */
  private async configPolicy(node: Redis, where: string, refused: (what: string, err: unknown) => void): Promise<string[]> {
    try {
      const [, policy] = (await node.config('GET', 'maxmemory-policy')) as string[];
      if (policy) return evictionProblem(policy, where);
    } catch (err) {
      if (isRedisUnavailable(err) && !isPermissionReply((err as Error).message)) {
        refused('CONFIG GET', err); // cannot say now: not a problem of its own
        return [];
      }
    }
    return [
      `cannot read maxmemory-policy${where}: INFO shows none and CONFIG GET is refused; the broker needs to see noeviction ` +
        '(allow the Redis user INFO)',
    ];
  }
}

/** Sends a pipeline; throws its first command's error (exec() resolves with them). */
async function firstError(pipeline: { exec(): Promise<[Error | null, unknown][] | null> }): Promise<void> {
  const err = (await pipeline.exec())?.find(([e]) => e)?.[0];
  if (err) throw err;
}

function evictionProblem(policy: string, where: string): string[] {
  if (policy === 'noeviction') return [];
  return [
    `maxmemory-policy is ${policy}${where}; the broker needs noeviction ` +
      '(an evicting Redis deletes task and lease records under memory pressure, and credentials outlive their task)',
  ];
}

/**
 * What a refused command means here: the ACL denies the `command`, a `key` or a `channel`; undefined (Redis
 * cannot serve right now: down, full, a failed save; `checks.redis` reports those); or a problem sentence (an
 * unknown or renamed command, anything else unexpected: deny by default).
 */
function refusal(command: string, err: unknown): 'command' | 'key' | 'channel' | string | undefined {
  const message = redisReply(String((err as Error)?.message ?? err));
  if (isPermissionReply(message)) return /\bkeys?\b/.test(message) ? 'key' : /\bchannels?\b/.test(message) ? 'channel' : 'command';
  if (isRedisUnavailable(err) || isRedisUnavailable(new Error(message))) return undefined;
  return `Redis refused ${command}: ${message.split('\n')[0]!.slice(0, 200)}`;
}
