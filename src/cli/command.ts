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
        // Plain http to another host is said on stderr, once per command, in the CLI's own words.
        const onPlainHttp = (origin: string) =>
          io.stderr.write(
            `jit: warning: ${origin} is plain http to another host: your identity token and the credentials travel unencrypted (use https)\n`,
          );
        client = new BrokerClient({ url, tokenFile: flags.str('token-file'), env: io.env, onPlainHttp });
      }
      return client;
    },
  };
}
