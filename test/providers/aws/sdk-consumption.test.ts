import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import express from 'express';
import { GetCallerIdentityCommand, STSClient, type STSClientConfig } from '@aws-sdk/client-sts';
import { fromHttp, fromProcess } from '@aws-sdk/credential-providers';
import { forbidden, unauthenticated } from '../../../src/errors.ts';
import { containerCredentialsRouter } from '../../../src/providers/aws/container-credentials.ts';
import { JIT, NODE20, ensureBuilt } from '../../helpers/cli.ts';
import { awsWorld, issueRequest, roleConfig, task, type AwsWorld } from './helpers.ts';

/**
 * A stand-in for the broker's POST /v1/credentials (the real core replaces it
 * in the end-to-end tests): it checks a fixed workload JWT and issues through
 * the real AWS provider against the emulator.
 */
const JWT = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy9hZ2VudC9zdXBwb3J0In0.c2ln';
let w: AwsWorld;
let server: Server;
let brokerUrl: string;
let dir: string;
const seen: { taskId: string; role: string; scopes?: string[] }[] = [];

async function issue(identityToken: string, body: { taskId: string; role: string; scopes?: string[] }) {
  if (identityToken !== JWT) throw unauthenticated('identity_invalid', 'The workload identity is not valid.');
  if (body.role !== 'reports-bucket') throw forbidden('role_not_granted', `Role "${body.role}" is not granted to this task.`);
  seen.push(body);
  const role = roleConfig(w.role.arn, { resources: ['arn:aws:s3:::reports/*'] });
  const req = issueRequest(role, { task: task({ taskId: body.taskId }), scopes: body.scopes ?? ['s3:GetObject', 's3:ListBucket'] });
  const out = await w.provider.issue(req);
  return {
    leaseId: req.leaseId,
    taskId: body.taskId,
    role: body.role,
    provider: 'aws',
    expiresAt: new Date(out.expiresAt).toISOString(),
    revocable: true,
    credentials: out.credentials,
  };
}

beforeAll(async () => {
  await ensureBuilt();
  w = await awsWorld('sdk');
  dir = mkdtempSync(join(tmpdir(), 'jit-aws-sdk-'));
  const app = express();
  app.use(express.json());
  app.post('/v1/credentials', async (req, res) => {
    try {
      const token = (req.get('authorization') ?? '').replace(/^Bearer /, '');
      res.status(201).json(await issue(token, req.body));
    } catch (err) {
      const e = err as { status: number; code: string; message: string };
      res
        .status(e.status ?? 500)
        .type('application/problem+json')
        .json({ type: 'about:blank', title: 'Error', status: e.status, code: e.code, detail: e.message });
    }
  });
  app.use(containerCredentialsRouter({ issue }));
  server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  brokerUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise((r) => server.close(r));
  await w.close();
});

function file(name: string, content: string): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}

const whoAmI = async (credentials: NonNullable<STSClientConfig['credentials']>) => {
  const sts = new STSClient({ region: 'us-east-1', endpoint: w.emu.url, maxAttempts: 1, credentials });
  try {
    return await sts.send(new GetCallerIdentityCommand({}));
  } finally {
    sts.destroy();
  }
};

describe('credential_process = jit cred get --format aws-process (fromProcess)', () => {
  const profile = (name: string, tokenFile: string, extra = '') =>
    `[profile ${name}]\ncredential_process = "${NODE20}" "${JIT}" cred get --format aws-process --broker ${brokerUrl} --task t-1 --role reports-bucket --token-file ${tokenFile}${extra}\n`;

  it('prints Version 1 credentials the SDK accepts, and they work', async () => {
    const tokenFile = file('jwt', `${JWT}\n`);
    const config = file('config', profile('agent', tokenFile, ' --scopes s3:GetObject'));
    const creds = await fromProcess({ profile: 'agent', configFilepath: config, filepath: file('credentials', '') })();
    expect(creds.accessKeyId).toMatch(/^ASIA/);
    expect(creds.sessionToken).toBeDefined();
    expect(creds.expiration!.getTime()).toBeGreaterThan(Date.now() + 800_000);
    expect(seen.at(-1)).toEqual({ taskId: 't-1', role: 'reports-bucket', scopes: ['s3:GetObject'] });
    const who = await whoAmI(creds);
    expect(who.Arn).toMatch(/^arn:aws:sts::123456789012:assumed-role\/agent-reports\/jit-[a-z2-7]{10}-[a-z2-7]{8}-[0-9a-f]{32}$/);
  }, 30_000);

  it("fails with the broker's error on stderr and a non-zero exit", async () => {
    const config = file('config-bad', profile('bad', file('jwt-bad', 'not-the-jwt')));
    await expect(fromProcess({ profile: 'bad', configFilepath: config, filepath: file('credentials', '') })()).rejects.toThrow(
      /401 identity_invalid/,
    );
  }, 30_000);
});

describe('container credentials (fromHttp)', () => {
  const uri = (role = 'reports-bucket') => `${brokerUrl}/v1/aws/container-credentials/t-2/${role}`;

  it('serves {AccessKeyId, SecretAccessKey, Token, Expiration} for the JWT in the token file', async () => {
    const provider = fromHttp({
      awsContainerCredentialsFullUri: `${uri()}?scope=s3:ListBucket`,
      awsContainerAuthorizationTokenFile: file('container-jwt', JWT),
    });
    const creds = await provider();
    expect(creds.accessKeyId).toMatch(/^ASIA/);
    expect(seen.at(-1)).toEqual({ taskId: 't-2', role: 'reports-bucket', scopes: ['s3:ListBucket'] });
    expect((await whoAmI(provider)).UserId).toMatch(new RegExp(`^${w.role.roleId}:jit-`));
  });

  it("answers errors as problems carrying the AWS shape, with the broker's status", async () => {
    const res = await fetch(uri(), { headers: { authorization: 'wrong' } });
    expect(res.status).toBe(401);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(await res.json()).toMatchObject({
      code: 'identity_invalid',
      detail: 'The workload identity is not valid.',
      Code: 'identity_invalid',
      Message: 'The workload identity is not valid.',
    });
    expect((await fetch(uri())).status).toBe(401);
    const denied = await fetch(uri('payroll'), { headers: { authorization: `Bearer ${JWT}` } });
    expect(denied.status).toBe(403);
    expect(await denied.json()).toMatchObject({ Code: 'role_not_granted' });
    await expect(
      fromHttp({ awsContainerCredentialsFullUri: uri(), awsContainerAuthorizationToken: 'wrong', maxRetries: 0 })(),
    ).rejects.toThrow();
  });

  it('leaves the role to the core, which verifies the token first: no role name is judged for a caller without one', async () => {
    const before = seen.length;
    for (const name of ['orders-db', 'nope', 'constructor', '__proto__']) {
      const anonymous = await fetch(uri(name), { headers: { authorization: 'wrong' } });
      expect([name, anonymous.status]).toEqual([name, 401]);
      expect(await anonymous.json()).toMatchObject({ Code: 'identity_invalid' });
      const agent = await fetch(uri(name), { headers: { authorization: `Bearer ${JWT}` } });
      expect([name, agent.status]).toEqual([name, 403]);
      expect(await agent.json()).toMatchObject({ Code: 'role_not_granted' });
    }
    expect(seen).toHaveLength(before);
  });
});
