import { describe, expect, it } from '@jest/globals';
import { childEnv, credentialEnv, type IssuedCredential } from '../../src/client/index.ts';

const base = { leaseId: 'a'.repeat(32), taskId: 't-1', role: 'r', expiresAt: '2030-01-01T00:00:00.000Z', revocable: true };
const common = { JIT_LEASE_ID: base.leaseId, JIT_TASK_ID: 't-1', JIT_ROLE: 'r', JIT_CREDENTIAL_EXPIRES_AT: base.expiresAt };
const cred = (provider: string, credentials: Record<string, unknown>): IssuedCredential => ({ ...base, provider, credentials });

/** The variables each provider's credentials become (the shapes the providers answer, contract section 3). */
describe('credentialEnv', () => {
  it.each([
    [
      'aws',
      cred('aws', { AccessKeyId: 'ASIAX', SecretAccessKey: 's', SessionToken: 'tok', Expiration: '2030-01-01T00:00:00Z' }),
      {
        AWS_ACCESS_KEY_ID: 'ASIAX',
        AWS_SECRET_ACCESS_KEY: 's',
        AWS_SESSION_TOKEN: 'tok',
        AWS_CREDENTIAL_EXPIRATION: '2030-01-01T00:00:00Z',
      },
    ],
    ['jwt', cred('jwt', { access_token: 'ey.x.y', token_type: 'Bearer', expires_in: 60, scope: 'a b' }), { JIT_ACCESS_TOKEN: 'ey.x.y' }],
    ['vault token', cred('vault', { token: 'hvs.abc', accessor: 'acc', policies: ['p'], expires_in: 60 }), { VAULT_TOKEN: 'hvs.abc' }],
    [
      'vault dynamic secret',
      cred('vault', {
        username: 'v-agent-x',
        password: 'pw',
        'connection-url': 'db:5432',
        lease_id: 'database/creds/ro/abc',
        lease_duration: 60,
      }),
      {
        JIT_SECRET_USERNAME: 'v-agent-x',
        JIT_SECRET_PASSWORD: 'pw',
        JIT_SECRET_CONNECTION_URL: 'db:5432',
        JIT_VAULT_LEASE_ID: 'database/creds/ro/abc',
      },
    ],
  ])('%s', (_name, c, expected) => {
    expect(credentialEnv(c)).toEqual({ ...common, ...expected });
  });
});

describe('childEnv', () => {
  const parent = {
    PATH: '/bin',
    HOME: '/h',
    JIT_TOKEN: 'id',
    JIT_TOKEN_FILE: '/svid',
    AWS_PROFILE: 'me',
    AWS_SESSION_TOKEN: 'old',
    KEEP: '1',
  };

  it('drops the caller’s identity, keeps the rest', () => {
    const env = childEnv(parent, cred('jwt', { access_token: 'ey.x.y' }));
    expect(env).toEqual({
      PATH: '/bin',
      HOME: '/h',
      AWS_PROFILE: 'me',
      AWS_SESSION_TOKEN: 'old',
      KEEP: '1',
      ...common,
      JIT_ACCESS_TOKEN: 'ey.x.y',
    });
  });

  it('for AWS credentials also drops AWS_PROFILE and an earlier session', () => {
    const env = childEnv(parent, cred('aws', { AccessKeyId: 'ASIAX', SecretAccessKey: 's', Expiration: '2030-01-01T00:00:00Z' }));
    expect(env.AWS_PROFILE).toBeUndefined();
    expect(env.AWS_SESSION_TOKEN).toBeUndefined();
    expect(env.JIT_TOKEN).toBeUndefined();
    expect(env).toMatchObject({ AWS_ACCESS_KEY_ID: 'ASIAX', KEEP: '1' });
  });
});
