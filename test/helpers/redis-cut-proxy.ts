import { tcpProxy } from './tcp-proxy.ts';

/** Where in `chunk` the first EVALSHA of `sha` starts whose command contains `containing` (any, without it); -1 if none. */
function cutAt(chunk: Buffer, sha: string, containing: string | undefined): number {
  for (let at = chunk.indexOf(sha, 0, 'latin1'); at >= 0; at = chunk.indexOf(sha, at + sha.length, 'latin1')) {
    if (containing === undefined) return at;
    // The command's arguments run to the next command of this script at most: checked within them.
    const next = chunk.indexOf(sha, at + sha.length, 'latin1');
    const found = chunk.indexOf(containing, at, 'latin1');
    if (found >= 0 && (next < 0 || found < next)) return at;
  }
  return -1;
}

/**
 * A TCP proxy in front of Redis for a process a test is about to SIGKILL. Once armed with a Lua script's
 * SHA-1, the first connection to send an EVALSHA of that script has its commands cut there: what it sent
 * before that command (in the same write too) reaches Redis, that command and everything after it never
 * does, while Redis's answers still reach the process. So the process is caught exactly between a command
 * and the next (a decision's script and the audit append behind it), however close together it sends
 * them, and the test kills it there: what it had not sent is lost, as on a crash.
 *
 * Commands are found by the script's SHA-1 (40 hex characters) in what was read. A read that ends in the first
 * characters of it is held back from that command's start until the next read (or HOLD_MS): a command split
 * there slipped through, ran, and the test waited for the cut for ever (shard-loss-killed timed out in CI).
 */
/** How long the start of a command is held back, waiting for the rest of its SHA-1 (a prefix by chance otherwise). */
const HOLD_MS = 50;

/** The length of the longest proper prefix of `sha` that `chunk` ends with (0 for none). */
function partialAtEnd(chunk: Buffer, sha: string): number {
  for (let k = Math.min(sha.length - 1, chunk.length); k > 0; k--)
    if (chunk.toString('latin1', chunk.length - k) === sha.slice(0, k)) return k;
  return 0;
}

/** `promise`, or a rejection naming what never happened (and what `state` says of it) after `ms`. */
export async function within<T>(promise: Promise<T>, ms: number, what: string, state?: () => Promise<string> | string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(async () => {
      const seen = state ? await Promise.resolve(state()).catch((err: Error) => `(state unreadable: ${err.message})`) : '';
      reject(new Error(`${what}: not within ${ms} ms${seen ? `\n${seen}` : ''}`));
    }, ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

export async function redisCutProxy(redisUrl: string) {
  let armed: string | undefined;
  let armedWith: string | undefined;
  let onCut: (() => void) | undefined;
  const proxy = await tcpProxy(redisUrl, (client, upstream) => {
    let cut = false;
    // The start of a command whose SHA-1 may go on in the next read (see HOLD_MS).
    let held: Buffer | undefined;
    let flush: NodeJS.Timeout | undefined;
    client.on('data', (data: Buffer) => {
      if (cut) return;
      clearTimeout(flush);
      const chunk = held ? Buffer.concat([held, data]) : data;
      held = undefined;
      const at = armed ? cutAt(chunk, armed, armedWith) : -1;
      if (at < 0) {
        const partial = armed ? partialAtEnd(chunk, armed) : 0;
        // From the command's start; or, that gone on in an earlier read, from the SHA-1's (Redis waits for the rest).
        const star = partial > 0 ? chunk.lastIndexOf('*', chunk.length - partial, 'latin1') : -1;
        const from = partial === 0 ? -1 : star >= 0 ? star : chunk.length - partial;
        if (from < 0) {
          upstream.write(chunk);
          return;
        }
        if (from > 0) upstream.write(chunk.subarray(0, from));
        held = chunk.subarray(from);
        flush = setTimeout(() => {
          if (held && !cut && !upstream.destroyed) upstream.write(held);
          held = undefined;
        }, HOLD_MS);
        return;
      }
      // The command starts at its array header (`*<n>\r\n$7\r\nevalsha\r\n$40\r\n<sha>`): no `*` in between.
      const start = chunk.lastIndexOf('*', at, 'latin1');
      if (start > 0) upstream.write(chunk.subarray(0, start));
      cut = true;
      armed = undefined;
      armedWith = undefined;
      onCut?.();
    });
    upstream.on('data', (chunk: Buffer) => client.write(chunk));
  });
  return {
    ...proxy,
    /**
     * Cuts the next connection to run `sha`, at that command; resolves once it did. `containing`: only a
     * command of that script whose arguments (up to the next command in the chunk) contain it. Rejects after
     * `timeoutMs` (with what `state` says: the process's output, the keys involved) rather than leaving the
     * test to wait for its own timeout, which says nothing of where it stood.
     */
    arm(sha: string, containing?: string, opts: { timeoutMs?: number; state?: () => Promise<string> | string } = {}): Promise<void> {
      armed = sha;
      armedWith = containing;
      const cut = within(
        new Promise<void>((r) => {
          onCut = r;
        }),
        opts.timeoutMs ?? 60_000,
        `no EVALSHA of ${sha}${containing ? ` with ${containing}` : ''} reached the proxy`,
        opts.state,
      );
      // Awaited later by the caller (which then sees the rejection), not unhandled meanwhile.
      cut.catch(() => {});
      return cut;
    },
  };
}
