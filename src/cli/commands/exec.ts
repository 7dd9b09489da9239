import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import { childEnv } from '../../client/env.ts';
import { UsageError } from '../args.ts';
import type { Command } from '../command.ts';
import { credentialOptions, issue } from './cred.ts';
import { terminalSafe } from '../terminal.ts';

const FORWARDED = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

export const exec: Command = {
  path: ['exec'],
  usage: 'jit exec --task T --role R [--scopes a,b] [--ttl S] [--wait] -- <command...>',
  summary: 'run a command with a credential in its environment (not your identity), revoke the lease when it exits, exit with its code',
  options: { ...credentialOptions },
  takesRest: true,
  async run({ flags, io, out, rest, client }) {
    if (rest.length === 0) throw new UsageError('no command: put it after --', exec.usage);
    const broker = client();
    const cred = await issue(broker, flags, (s) => out.note(s));
    const env = childEnv(io.env, cred, { brokerUrl: broker.url });
    const code = await new Promise<number>((resolve) => {
      let child: ReturnType<typeof spawn>;
      try {
        child = spawn(rest[0]!, rest.slice(1), { stdio: 'inherit', env, cwd: io.cwd });
      } catch (err) {
        // Refused before it started (an environment value holding a NUL byte): the message quotes the value,
        // a secret, so only the code is printed; the lease is revoked below like after any run.
        io.stderr.write(`jit: cannot run ${rest[0]}: ${(err as NodeJS.ErrnoException).code ?? 'refused by spawn'}\n`);
        resolve(126);
        return;
      }
      // Signals meant for the command (Ctrl-C, a supervisor's SIGTERM) reach it; jit waits to revoke.
      const forward = (sig: NodeJS.Signals) => child.kill(sig);
      for (const s of FORWARDED) process.on(s, forward);
      const done = (c: number) => {
        for (const s of FORWARDED) process.off(s, forward);
        resolve(c);
      };
      child.on('error', (err: NodeJS.ErrnoException) => {
        io.stderr.write(`jit: cannot run ${rest[0]}: ${err.code ?? err.message}\n`);
        done(err.code === 'ENOENT' ? 127 : 126);
      });
      child.on('exit', (c, signal) => done(c ?? 128 + (signal ? (constants.signals[signal] ?? 0) : 0)));
    });
    try {
      await broker.revokeLease(cred.leaseId);
    } catch (err) {
      io.stderr.write(
        `jit: could not revoke lease ${terminalSafe(cred.leaseId)} (${terminalSafe((err as Error).message)}); it ends at ${terminalSafe(cred.expiresAt)} or with its task\n`,
      );
    }
    return code;
  },
};
