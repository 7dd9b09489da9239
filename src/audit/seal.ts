import { createHmac, timingSafeEqual } from 'node:crypto';
import type { AuditChain } from '../redis/keys.ts';
import { Kek } from '../signing/kek.ts';

/** HKDF `info` of the seal key: a new version of the seal format gets a new key. */
export const SEAL_INFO = 'jit-broker audit seal v1';

/**
 * A signed statement "chain `chain` had record `seq` with hash `hash` at
 * `time`". Whoever lacks the KEK cannot make one, so a chain rewritten or cut
 * below a seal no longer matches it.
 */
export interface Seal {
  seq: number;
  hash: string;
  /** When the seal was made (ISO 8601, Redis's clock). */
  time: string;
  /** HMAC-SHA256 (hex) over the chain id, seq, hash and time with the seal key. */
  mac: string;
}

/**
 * The seal key: HKDF-SHA256 of the KEK with info {@link SEAL_INFO}. It lives
 * only in the memory of processes that hold the KEK: never in Redis, never in
 * a log, never in the export.
 */
export function sealKeyOf(kek: Kek): Buffer {
  return kek.derive(SEAL_INFO);
}

/** The seal key from the KEK as configured (base64 of 32 bytes). */
export function deriveSealKey(kekBase64: string): Buffer {
  return sealKeyOf(new Kek(kekBase64));
}

function mac(key: Buffer, chain: AuditChain, seq: number, hash: string, time: string): string {
  return createHmac('sha256', key)
    .update(`${SEAL_INFO}\n${String(chain)}\n${seq}\n${hash}\n${time}`)
    .digest('hex');
}

/** Seals record `seq`/`hash` of `chain` now. */
export function makeSeal(key: Buffer, chain: AuditChain, seq: number, hash: string, time: string): Seal {
  return { seq, hash, time, mac: mac(key, chain, seq, hash, time) };
}

/** Whether `seal` was made with `key` for `chain` (constant-time comparison). */
export function sealIsValid(key: Buffer, chain: AuditChain, seal: Seal): boolean {
  if (!isSeal(seal)) return false;
  const want = Buffer.from(mac(key, chain, seal.seq, seal.hash, seal.time), 'hex');
  const got = Buffer.from(seal.mac, 'hex');
  return got.length === want.length && timingSafeEqual(got, want);
}

/** Shape check for a seal read from Redis or a file. */
export function isSeal(v: unknown): v is Seal {
  const s = v as Partial<Seal> | null;
  return (
    !!s &&
    typeof s === 'object' &&
    Number.isSafeInteger(s.seq) &&
    typeof s.hash === 'string' &&
    typeof s.time === 'string' &&
    typeof s.mac === 'string' &&
    /^[0-9a-f]{64}$/.test(s.mac)
  );
}
