/** Bytes of every Redis reply `client` receives while counting (sendCommand wrapped). */
export function replyBytes(client: unknown): { stop(): { bytes: number; commands: number } } {
  const c = client as { sendCommand: (cmd: { promise: Promise<unknown> }) => unknown };
  const orig = c.sendCommand;
  let bytes = 0;
  let commands = 0;
  const size = (v: unknown): number =>
    v == null
      ? 0
      : typeof v === 'string'
        ? Buffer.byteLength(v)
        : Buffer.isBuffer(v)
          ? v.length
          : Array.isArray(v)
            ? v.reduce((a: number, x) => a + size(x), 0)
            : typeof v === 'number'
              ? 8
              : typeof v === 'object'
                ? Object.entries(v as object).reduce((a: number, [k, x]) => a + Buffer.byteLength(k) + size(x), 0)
                : 0;
  c.sendCommand = function (this: unknown, cmd: { promise: Promise<unknown> }, ...rest: unknown[]) {
    commands += 1;
    cmd.promise.then((v) => (bytes += size(v))).catch(() => {});
    return (orig as (...a: unknown[]) => unknown).call(this, cmd, ...rest);
  };
  return {
    stop() {
      c.sendCommand = orig;
      return { bytes, commands };
    },
  };
}
