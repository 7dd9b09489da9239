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
 * Commands are found by the script's SHA-1 (40 hex characters) in the chunk read; a command split across
 * two reads at that spot would slip through (the writes here are small: one read each).
 */
export async function redisCutProxy(redisUrl: string) {
  let armed: string | undefined;
  let armedWith: string | undefined;
  let onCut: (() => void) | undefined;
  const proxy = await tcpProxy(redisUrl, (client, upstream) => {
    let cut = false;
    client.on('data', (chunk: Buffer) => {
      if (cut) return;
      const at = armed ? cutAt(chunk, armed, armedWith) : -1;
      if (at < 0) {
        upstream.write(chunk);
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
     * command of that script whose arguments (up to the next command in the chunk) contain it.
     */
    arm(sha: string, containing?: string): Promise<void> {
      armed = sha;
      armedWith = containing;
      return new Promise<void>((r) => {
        onCut = r;
      });
    },
  };
}
