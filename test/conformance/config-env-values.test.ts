import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/load.ts';

// Contract section 1: "`${NAME}` inside config values is replaced by that environment variable". A YAML value
// that is only `${NAME}` is a string until it is replaced, so a number or boolean key given that way
// (`port: ${BROKER_PORT}`) failed startup with "expected number, received string", although the value, once
// replaced, is the number the key wants. Now a value that is exactly one `${NAME}` takes the type its key
// needs when its text is that number or boolean; secrets and other strings stay strings, digits or not.
// biome-ignore-start lint/suspicious/noTemplateCurlyInString: the config's own ${VAR} syntax
const yaml = `
server:
  port: \${BROKER_PORT}
  publicUrl: http://127.0.0.1:8080
  rateLimit:
    perSecond: \${RATE}
    burst: \${BURST}
redis:
  url: redis://127.0.0.1:6379
  prefix: \${PREFIX}
trust:
  - name: dev
    kind: spiffe
    trustDomain: dev.local
    audiences: [jit-broker]
    singleUse: \${SINGLE_USE}
    jwks: { keys: [{ kty: EC }] }
policies: ./config/policies
audit:
  retention:
    maxAgeDays: \${AGE_DAYS}
roles:
  r:
    provider: jwt
    audience: \${AUDIENCE}
    maxTtlSeconds: \${MAX_TTL}
providers:
  vault:
    address: http://127.0.0.1:8200
    auth:
      token: \${VAULT_TOKEN}
`;
// biome-ignore-end lint/suspicious/noTemplateCurlyInString: the config's own ${VAR} syntax

function file(text: string): string {
  const f = join(mkdtempSync(join(tmpdir(), 'jit-conf-env-')), 'broker.yaml');
  writeFileSync(f, text);
  return f;
}

const env = {
  BROKER_PORT: '9123',
  RATE: '10',
  BURST: '25',
  PREFIX: '12345',
  SINGLE_USE: 'true',
  AGE_DAYS: '0.5',
  AUDIENCE: '8080',
  MAX_TTL: '600',
  VAULT_TOKEN: '0123456789',
};

// biome-ignore lint/suspicious/noTemplateCurlyInString: the config syntax the test is about, not a template.
test('a number or boolean key given as ${NAME} takes the value as that number or boolean', () => {
  const c = loadConfig(env, file(yaml));
  expect(c.server.port).toBe(9123);
  expect([c.server.rateLimit.perSecond, c.server.rateLimit.burst]).toEqual([10, 25]);
  expect(c.trust[0]!.singleUse).toBe(true);
  expect(c.audit.retention.maxAgeDays).toBe(0.5);
  expect(c.roles.r).toMatchObject({ audience: '8080', maxTtlSeconds: 600 });
});

test('string keys keep the text, digits or not: a secret is never turned into a number', () => {
  const c = loadConfig(env, file(yaml));
  expect(c.redis.prefix).toBe('12345');
  expect((c.providers.vault as { auth: { token: string } }).auth.token).toBe('0123456789');
});

test('a value that is not that number still fails at startup, naming the key', () => {
  expect(() => loadConfig({ ...env, BROKER_PORT: 'eighty' }, file(yaml))).toThrow(/config server\.port: .*number/);
  expect(() => loadConfig({ ...env, MAX_TTL: '60s' }, file(yaml))).toThrow(/config roles\.r\.maxTtlSeconds: /);
  expect(() => loadConfig({ ...env, SINGLE_USE: 'yes' }, file(yaml))).toThrow(/config trust\.0\.singleUse: /);
  expect(() => loadConfig({ ...env, BROKER_PORT: '70000' }, file(yaml))).toThrow(/config server\.port: /);
  // Text around the reference makes it a string: it is not a number, whatever the variable holds.
  // biome-ignore lint/suspicious/noTemplateCurlyInString: the config's own ${VAR} syntax
  expect(() => loadConfig(env, file(yaml.replace('port: ${BROKER_PORT}', 'port: 9${BROKER_PORT}')))).toThrow(/config server\.port: /);
});
