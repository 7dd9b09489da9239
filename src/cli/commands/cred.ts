import { credentialProcessOutput } from '../../client/aws.ts';
import type { BrokerClient } from '../../client/broker-client.ts';
import { credentialEnv } from '../../client/env.ts';
import { JitError } from '../../client/errors.ts';
import type { CredentialRequest, IssuedCredential } from '../../client/types.ts';
import { type Flags, UsageError } from '../args.ts';
import type { Command } from '../command.ts';
import { shellQuote, terminalShellQuote } from '../output.ts';
import { terminalSafe } from '../terminal.ts';

/** Flags shared by `cred get` and `exec`. */
export const credentialOptions = {
  task: { type: 'string' },
  role: { type: 'string' },
  scopes: { type: 'string', multiple: true },
  ttl: { type: 'string' },
  wait: { type: 'boolean' },
} as const;

export function credentialRequest(flags: Flags): CredentialRequest {
  const scopes = flags.csv('scopes');
  const ttlSeconds = flags.seconds('ttl');
  return {
    taskId: flags.required('task'),
    role: flags.required('role'),
    ...(scopes ? { scopes } : {}),
    ...(ttlSeconds ? { ttlSeconds } : {}),
  };
}

/** One new credential (never cached: each run of the command is one lease). */
export function issue(client: BrokerClient, flags: Flags, note: (s: string) => void): Promise<IssuedCredential> {
  const waitForApproval = flags.bool('wait')
    ? { onPending: (id: string) => note(`jit: waiting for approval ${id} (an approver runs \`jit approvals approve ${id}\`)`) }
    : false;
  return client.getCredential(credentialRequest(flags), { fresh: true, waitForApproval });
}

const FORMATS = ['json', 'env', 'aws-process'] as const;

export const credGet: Command = {
  path: ['cred', 'get'],
  usage: 'jit cred get --task T --role R [--scopes a,b] [--ttl S] [--format json|env|aws-process] [--wait]',
  summary:
    'a credential for your task: json (the broker’s answer), env (`export` lines for eval), ' +
    'aws-process (AWS credential_process output); --wait waits for an approver',
  options: { ...credentialOptions, format: { type: 'string' } },
  async run({ flags, io, out, client }) {
    const format = (flags.str('format') ?? 'json') as (typeof FORMATS)[number];
    if (!FORMATS.includes(format)) throw new UsageError(`--format must be one of ${FORMATS.join(', ')}`, credGet.usage);
    const broker = client();
    const cred = await issue(broker, flags, (s) => out.note(s));
    if (format === 'json') out.json(cred);
    else if (format === 'env') {
      const env = credentialEnv(cred);
      // No environment variable can hold a NUL byte (`jit exec` cannot start a command with one either): printing
      // the value cut or changed would hand out a secret that is not the secret. Nothing will use the credential,
      // so it is given back at once; the message names the variable, never the value.
      const nul = Object.keys(env).find((k) => env[k]!.includes('\0'));
      if (nul) {
        const lease = terminalSafe(cred.leaseId);
        const gone = await broker.revokeLease(cred.leaseId).then(
          () => `lease ${lease} revoked`,
          () => `lease ${lease} could not be revoked: it ends at ${terminalSafe(cred.expiresAt)} or with its task`,
        );
        throw new JitError(
          'env_unrepresentable',
          `${nul} holds a NUL byte, which no environment variable can hold; ${gone} (--format json prints a credential as the broker sent it)`,
        );
      }
      const lines: string[] = [];
      // As in `jit exec`: a named profile would make the JS SDK ignore the keys; an old session token would not match them.
      if (env.AWS_ACCESS_KEY_ID !== undefined)
        lines.push('unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_CREDENTIAL_EXPIRATION');
      // Piped (`eval "$(...)"`, a file to source): the values byte for byte, as out.line's escaping would change
      // them. On a terminal: $'...' with escapes, so a hostile value cannot act on it and a copy is still exact.
      const quote = io.stdout.isTTY ? terminalShellQuote : shellQuote;
      for (const [k, v] of Object.entries(env)) lines.push(`export ${k}=${quote(v)}`);
      io.stdout.write(lines.map((l) => `${l}\n`).join(''));
    } else {
      let processOut: ReturnType<typeof credentialProcessOutput>;
      try {
        processOut = credentialProcessOutput(cred);
      } catch (err) {
        // Nothing will use it: give it back at once.
        await broker.revokeLease(cred.leaseId).catch(() => undefined);
        throw new UsageError((err as Error).message);
      }
      // One line, as the AWS CLI and SDKs read it.
      out.line(JSON.stringify(processOut));
    }
    return 0;
  },
};
