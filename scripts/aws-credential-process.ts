/**
 * An AWS `credential_process` backed by the broker. In ~/.aws/config:
 *
 *   [profile agent]
 *   credential_process = node /path/to/scripts/aws-credential-process.ts --broker http://127.0.0.1:8080
 *     --task t-1 --role reports-bucket --token-file /run/secrets/jwt [--scope s3:GetObject]... [--ttl 900]
 *
 * Reads the workload JWT from the file on every run (it may be rotated),
 * asks `POST /v1/credentials`, and prints the SDK's Version 1 JSON. Any
 * failure goes to stderr with a non-zero exit, which the SDK surfaces.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

interface Args {
  broker: string;
  task: string;
  role: string;
  tokenFile: string;
  scopes: string[] | undefined;
  ttl: number | undefined;
}

function parse(argv: string[]): Args {
  const { values } = parseArgs({
    args: argv,
    options: {
      broker: { type: 'string' },
      task: { type: 'string' },
      role: { type: 'string' },
      'token-file': { type: 'string' },
      scope: { type: 'string', multiple: true },
      ttl: { type: 'string' },
    },
    strict: true,
  });
  const missing = (['broker', 'task', 'role', 'token-file'] as const).filter((k) => !values[k]);
  if (missing.length > 0) throw new Error(`missing ${missing.map((m) => `--${m}`).join(', ')}`);
  const ttl = values.ttl === undefined ? undefined : Number(values.ttl);
  if (ttl !== undefined && !(Number.isInteger(ttl) && ttl > 0)) throw new Error('--ttl must be a positive integer');
  return {
    broker: values.broker!.replace(/\/+$/, ''),
    task: values.task!,
    role: values.role!,
    tokenFile: values['token-file']!,
    scopes: values.scope,
    ttl,
  };
}

async function main(): Promise<void> {
  const args = parse(process.argv.slice(2));
  const jwt = readFileSync(args.tokenFile, 'utf8').trim();
  if (!jwt) throw new Error(`token file ${args.tokenFile} is empty`);
  const res = await fetch(`${args.broker}/v1/credentials`, {
    method: 'POST',
    headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({
      taskId: args.task,
      role: args.role,
      ...(args.scopes ? { scopes: args.scopes } : {}),
      ...(args.ttl ? { ttlSeconds: args.ttl } : {}),
    }),
    signal: AbortSignal.timeout(15_000),
  });
  const body = (await res.json().catch(() => ({}))) as Record<string, unknown>;
  if (res.status === 202) throw new Error(`credential awaits approval (approvalId ${String(body.approvalId)}); retry once approved`);
  if (!res.ok)
    throw new Error(`broker answered ${res.status} ${String(body.code ?? '')}: ${String(body.detail ?? body.title ?? res.statusText)}`);
  const c = (body.credentials ?? {}) as Record<string, unknown>;
  if (typeof c.AccessKeyId !== 'string' || typeof c.SecretAccessKey !== 'string')
    throw new Error(`role ${args.role} did not return AWS credentials`);
  process.stdout.write(
    `${JSON.stringify({ Version: 1, AccessKeyId: c.AccessKeyId, SecretAccessKey: c.SecretAccessKey, SessionToken: c.SessionToken, Expiration: c.Expiration })}\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`aws-credential-process: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
