import { BrokerClient } from '../client/broker-client.ts';
import { Flags, type OptionSpecs, UsageError } from './args.ts';
import { type Io, Out } from './output.ts';

/** What a command gets to run with. */
export interface Ctx {
  io: Io;
  out: Out;
  flags: Flags;
  positionals: string[];
  /** `--json`: machine-readable output on stdout. */
  json: boolean;
  /** Arguments after `--` (for `jit exec`). */
  rest: string[];
  /** A client for `--broker` / `JIT_BROKER_URL` and `--token-file` / `JIT_TOKEN` / `JIT_TOKEN_FILE`. */
  client(): BrokerClient;
}

/** One `jit <group> <verb>`. */
export interface Command {
  /** Words that select it: `['task', 'open']`. */
  path: string[];
  /** `jit task open --agent A ...` */
  usage: string;
  summary: string;
  options: OptionSpecs;
  /** Positional arguments: their names, all required unless marked `?`. */
  args?: string[];
  /** Whether it takes a command after `--`. */
  takesRest?: boolean;
  run(ctx: Ctx): Promise<number | undefined>;
}

/** The context for one run: flags parsed, positionals counted against `cmd.args`. */
export function makeCtx(cmd: Command, io: Io, values: Flags['values'], positionals: string[], rest: string[]): Ctx {
  const flags = new Flags(values, cmd.usage);
  const names = cmd.args ?? [];
  const min = names.filter((a) => !a.endsWith('?')).length;
  if (positionals.length < min) throw new UsageError(`missing ${names[positionals.length]!.replace('?', '')}`, cmd.usage);
  if (positionals.length > names.length) throw new UsageError(`unexpected argument "${positionals[names.length]}"`, cmd.usage);
  let client: BrokerClient | undefined;
  return {
    io,
    out: new Out(io),
    flags,
    positionals,
    json: flags.bool('json'),
    rest,
    client: () => {
      if (!client) {
        const url = flags.str('broker') ?? (io.env.JIT_BROKER_URL || undefined);
        client = new BrokerClient({ url, tokenFile: flags.str('token-file'), env: io.env });
        const bare = plainHttpHost(url);
        if (bare)
          io.stderr.write(
            `jit: warning: ${bare} is plain http to another host: your identity token and the credentials travel unencrypted (use https)\n`,
          );
      }
      return client;
    },
  };
}

/**
 * The origin of a broker URL that is plain http to a host other than this one, else undefined. The identity token
 * and the credentials would cross the network readable by anyone on the path; a mesh may encrypt it, so this is a
 * warning (on stderr, once per command), not a refusal. A URL the client refused never gets here.
 */
function plainHttpHost(url: string | undefined): string | undefined {
  if (!url) return undefined;
  const u = new URL(url);
  if (u.protocol !== 'http:') return undefined;
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const loopback = host === 'localhost' || host.endsWith('.localhost') || host === '::1' || /^127\./.test(host);
  return loopback ? undefined : u.origin;
}
