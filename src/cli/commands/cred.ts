import { credentialProcessOutput } from '../../client/aws.ts';
import type { BrokerClient } from '../../client/broker-client.ts';
import { credentialEnv } from '../../client/env.ts';
import type { CredentialRequest, IssuedCredential } from '../../client/types.ts';
import { type Flags, UsageError } from '../args.ts';
import type { Command } from '../command.ts';
import { shellQuote } from '../output.ts';

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
  async run({ flags, out, client }) {
    const format = (flags.str('format') ?? 'json') as (typeof FORMATS)[number];
    if (!FORMATS.includes(format)) throw new UsageError(`--format must be one of ${FORMATS.join(', ')}`, credGet.usage);
    const broker = client();
    const cred = await issue(broker, flags, (s) => out.note(s));
    if (format === 'json') out.json(cred);
    else if (format === 'env') {
      const env = credentialEnv(cred);
      // As in `jit exec`: a named profile would make the JS SDK ignore the keys; an old session token would not match them.
      if (env.AWS_ACCESS_KEY_ID !== undefined)
        out.line('unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_CREDENTIAL_EXPIRATION');
      for (const [k, v] of Object.entries(env)) out.line(`export ${k}=${shellQuote(v)}`);
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
