import { AGENT, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: introspection decoded the signature with Node's lenient base64url decoder, which skips
 * padding and characters outside the alphabet and ignores a last character's unused bits. So strings
 * the broker never issued, its own token with `=` appended, `+`/`/` in place of `-`/`_`, a stray `!`,
 * or the last character's spare bits flipped, all introspected `active: true`, while a resource server
 * verifying offline with jose refuses most of them (ERR_JWS_INVALID). RFC 7515 base64url has one spelling
 * per signature; introspection now confirms only the token exactly as it was issued.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('rt-introspect-encoding');
});
afterAll(async () => {
  await t.close();
});

const introspect = async (token: string) => {
  const res = await fetch(`${t.url}/v1/introspect`, {
    method: 'POST',
    headers: { ...t.as('/rs/tickets'), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }),
  });
  return { status: res.status, body: await res.json() };
};

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

test("only the token's exact issued spelling introspects active", async () => {
  await openAgentTask(t, 'rt-enc', [{ role: 'demo-api' }]);
  // A signature holding a `-` or `_` (most do: an ECDSA signature is new each time), so that its standard-alphabet
  // spelling differs from it (one in ~15 has neither, and was then the token itself: CI saw it answered active).
  let token = '';
  for (let i = 0; i < 50 && !/[-_]/.test(token.split('.')[2] ?? ''); i++) {
    const c = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'rt-enc', role: 'demo-api' });
    expect(c.status).toBe(201);
    token = c.body.credentials.access_token;
  }
  const [h, p, s] = token.split('.') as [string, string, string];
  expect(s).toMatch(/[-_]/);
  // A 64-byte signature is 86 characters: the last one carries 4 bits that decode to nothing.
  const last = ALPHABET.indexOf(s.at(-1)!);
  const spareBits = `${s.slice(0, -1)}${ALPHABET[(last & ~0xf) | ((last + 1) & 0xf)]}`;
  const variants = {
    padded: `${token}=`,
    'padded twice': `${token}==`,
    'standard alphabet': `${h}.${p}.${s.replace(/-/g, '+').replace(/_/g, '/')}`,
    'a character outside the alphabet': `${h}.${p}.${s.slice(0, 10)}!${s.slice(10)}`,
    'a space inside': `${h}.${p}.${s.slice(0, 10)} ${s.slice(10)}`,
    'spare bits flipped': `${h}.${p}.${spareBits}`,
  };
  // Each variant decodes to the very signature bytes (what made them pass).
  for (const v of Object.values(variants))
    expect(Buffer.from(v.split('.')[2]!, 'base64url').equals(Buffer.from(s, 'base64url'))).toBe(true);
  // Asked first, then again after the real token was seen (its verification is remembered by its exact bytes).
  for (const round of [1, 2]) {
    for (const [name, v] of Object.entries(variants)) {
      expect({ round, name, ...(await introspect(v)) }).toEqual({ round, name, status: 200, body: { active: false } });
    }
    expect((await introspect(token)).body).toMatchObject({ active: true, task_id: 'rt-enc' });
  }
});
