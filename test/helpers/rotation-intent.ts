import type { PendingSecret } from '../../src/providers/types.ts';
import type { TestBroker } from './broker.ts';

/** The broker's SealedSecrets (private in RotationService; tests only). */
function sealedOf(b: TestBroker) {
  return (
    b.broker.services.rotation as unknown as {
      sealed: { sealPending(t: string, s: string): string; openPending(t: string, s: string): string };
    }
  ).sealed;
}

/** The rotation intent of `target` as Redis holds it: the identifiers, and the pending list opened with the broker's KEK. */
export async function intentOf(
  b: TestBroker,
  target = 'vault',
): Promise<{ ids: Record<string, string> | null; pending: PendingSecret[] | null }> {
  const { redis, keys } = b.broker.deps;
  const [ids, sealed] = await Promise.all([redis.get(keys.rotationIntent(target)), redis.get(keys.rotationPending(target))]);
  return {
    ids: ids === null ? null : (JSON.parse(ids) as Record<string, string>),
    pending: sealed === null ? null : (JSON.parse(sealedOf(b).openPending(target, sealed)) as PendingSecret[]),
  };
}

/** Seals `value` as the broker seals a pending secret of `target` (to write an intent as an earlier build did). */
export const sealPendingAs = (b: TestBroker, value: string, target = 'vault'): string => sealedOf(b).sealPending(target, value);
