import { generateKeyPairSync, randomBytes, sign, verify } from 'node:crypto';
import { compactVerify, importJWK } from 'jose';
import { derToP1363, p1363ToDer, signEs256, verifyEs256 } from '../../src/signing/ecdsa.ts';

/**
 * ES256 with the bare KeyObject and the signature encoding converted in
 * JavaScript (src/signing/ecdsa.ts) must agree bit for bit with Node's own
 * `dsaEncoding: 'ieee-p1363'` and with jose, including r or s with leading
 * zero bytes (about 1 signature in 128 has one) and with the high bit set.
 */
const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });

test('signatures verify with node:crypto (ieee-p1363) and jose; ours verify what node signs', async () => {
  const jwk = publicKey.export({ format: 'jwk' });
  const joseKey = await importJWK({ ...jwk, alg: 'ES256' }, 'ES256');
  let shortIntegers = 0;
  // A leading zero byte in r or s comes once in 128 signatures: 600 signatures miss it about 1% of the
  // time ((255/256)^1200), so signing goes on until one has been seen (20,000 at most: e^−156 to miss).
  for (let i = 0; i < 600 || (shortIntegers === 0 && i < 20_000); i++) {
    const data = randomBytes(1 + (i % 300));
    const ours = i % 2 ? await signEs256(data, privateKey) : derToP1363(sign('sha256', data, privateKey));
    expect(ours).toHaveLength(64);
    expect(verify('sha256', data, { key: publicKey, dsaEncoding: 'ieee-p1363' }, ours)).toBe(true);
    expect(verifyEs256(data, publicKey, ours)).toBe(true);
    const theirs = sign('sha256', data, { key: privateKey, dsaEncoding: 'ieee-p1363' });
    expect(verifyEs256(data, publicKey, theirs)).toBe(true);
    if (ours[0] === 0 || ours[32] === 0) shortIntegers += 1;
    if (i < 40) {
      const header = Buffer.from('{"alg":"ES256"}').toString('base64url');
      const input = `${header}.${data.toString('base64url')}`;
      const jws = `${input}.${(await signEs256(Buffer.from(input), privateKey)).toString('base64url')}`;
      await expect(compactVerify(jws, joseKey)).resolves.toBeDefined();
    }
  }
  expect(shortIntegers).toBeGreaterThan(0);
});

test('DER and r||s convert both ways, leading zeros and high bits included', () => {
  for (const [r, s] of [
    [Buffer.alloc(32, 0xff), Buffer.alloc(32, 0x01)],
    [Buffer.concat([Buffer.alloc(5), Buffer.alloc(27, 0x80)]), Buffer.concat([Buffer.alloc(31), Buffer.from([1])])],
    [Buffer.concat([Buffer.from([0x7f]), Buffer.alloc(31, 0xab)]), Buffer.concat([Buffer.from([0, 0x80]), Buffer.alloc(30, 2)])],
  ] as [Buffer, Buffer][]) {
    const p1363 = Buffer.concat([r, s]);
    const der = p1363ToDer(p1363)!;
    expect(derToP1363(der)).toEqual(p1363);
    // Minimal DER: no integer starts with a zero byte unless the next has its high bit set.
    for (let at = 2; at < der.length; ) {
      const len = der[at + 1]!;
      if (len > 1 && der[at + 2] === 0) expect(der[at + 3]! & 0x80).toBe(0x80);
      at += 2 + len;
    }
  }
});

test('a malformed signature is refused, never thrown', () => {
  const data = Buffer.from('x');
  const good = derToP1363(sign('sha256', data, privateKey));
  for (const bad of [
    Buffer.alloc(0),
    good.subarray(0, 63),
    Buffer.concat([good, Buffer.from([0])]),
    Buffer.alloc(64),
    Buffer.alloc(64, 0xff),
  ]) {
    expect(verifyEs256(data, publicKey, bad)).toBe(false);
  }
  expect(() => derToP1363(Buffer.from([0x30, 0x03, 0x02, 0x01]))).toThrow();
});
