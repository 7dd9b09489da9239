import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { ConfigError } from '../errors.ts';

/**
 * Envelope encryption for secrets the broker keeps in Redis: AES-256-GCM under
 * the operator's key-encryption key. The AAD binds each ciphertext to its
 * purpose (e.g. "signing-key:<kid>") so one cannot be swapped for another.
 */
export class Kek {
  private readonly key: Buffer;

  constructor(base64Key: string) {
    const key = Buffer.from(base64Key.trim(), 'base64');
    if (key.length !== 32) throw new ConfigError('secrets.kek', 'must be base64 of exactly 32 bytes (e.g. `openssl rand -base64 32`)');
    this.key = key;
  }

  encrypt(plaintext: string, aad: string): string {
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.key, iv);
    c.setAAD(Buffer.from(aad));
    const body = Buffer.concat([c.update(plaintext, 'utf8'), c.final()]);
    return `v1.${iv.toString('base64url')}.${body.toString('base64url')}.${c.getAuthTag().toString('base64url')}`;
  }

  /** A key for another purpose, derived with HKDF-SHA256; never stored anywhere. */
  derive(info: string): Buffer {
    return Buffer.from(hkdfSync('sha256', this.key, Buffer.alloc(0), info, 32));
  }

  /** Throws if the key is wrong or the ciphertext was tampered with. */
  decrypt(sealed: string, aad: string): string {
    const [v, iv, body, tag] = sealed.split('.');
    if (v !== 'v1' || !iv || body === undefined || !tag) throw new Error('not a sealed secret');
    const d = createDecipheriv('aes-256-gcm', this.key, Buffer.from(iv, 'base64url'));
    d.setAAD(Buffer.from(aad));
    d.setAuthTag(Buffer.from(tag, 'base64url'));
    return Buffer.concat([d.update(Buffer.from(body, 'base64url')), d.final()]).toString('utf8');
  }
}
