import { Redis } from 'ioredis';

/**
 * Opens a Redis connection. `maxRetriesPerRequest: null` is what BullMQ needs
 * for blocking connections; API connections give up after two reconnects so a
 * request never hangs for long on a dead Redis (readyz reports it).
 */
export function connectRedis(url: string, opts: { forBullmq?: boolean; name?: string } = {}): Redis {
  return new Redis(url, {
    maxRetriesPerRequest: opts.forBullmq ? null : 2,
    connectionName: opts.name,
    lazyConnect: false,
    // Commands issued in the same tick share one socket write: under load the
    // syscalls, not Redis, were the broker's largest CPU cost.
    enableAutoPipelining: !opts.forBullmq,
  });
}

/** Every Redis key the broker owns, under one prefix. Listed here so the layout is visible in one place. */
export class Keys {
  readonly prefix: string;
  constructor(prefix: string) {
    this.prefix = prefix;
  }
  task(taskId: string): string {
    return `${this.prefix}:task:${taskId}`;
  }
  /** Set of lease ids of a task. */
  taskLeases(taskId: string): string {
    return `${this.prefix}:task:${taskId}:leases`;
  }
  /** Set of sub-task ids of a task. */
  taskChildren(taskId: string): string {
    return `${this.prefix}:task:${taskId}:children`;
  }
  lease(leaseId: string): string {
    return `${this.prefix}:lease:${leaseId}`;
  }
  /** Sorted set of leases not yet ended, scored by expiry (ms): the reconciler's work list and the active-lease gauge. */
  liveLeases(): string {
    return `${this.prefix}:leases:live`;
  }
  /** Sorted set of open tasks scored by deadline (ms), for the reconciler. */
  openTasks(): string {
    return `${this.prefix}:tasks:open`;
  }
  replay(trust: string, jtiHash: string): string {
    return `${this.prefix}:jti:${trust}:${jtiHash}`;
  }
  approval(approvalId: string): string {
    return `${this.prefix}:approval:${approvalId}`;
  }
  signingKeys(): string {
    return `${this.prefix}:signing:keys`;
  }
  signingLock(): string {
    return `${this.prefix}:signing:lock`;
  }
  auditStream(): string {
    return `${this.prefix}:audit`;
  }
  auditHead(): string {
    return `${this.prefix}:audit:head`;
  }
  secrets(target: string): string {
    return `${this.prefix}:secrets:${target}`;
  }
  channel(name: string): string {
    return `${this.prefix}:events:${name}`;
  }
  lock(name: string): string {
    return `${this.prefix}:lock:${name}`;
  }
}
