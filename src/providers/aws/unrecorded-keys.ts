import { type AccessKeyMetadata, DeleteAccessKeyCommand, UpdateAccessKeyCommand } from '@aws-sdk/client-iam';
import { conflict } from '../../errors.ts';
import type { RotationIds, RotationJournal } from '../types.ts';
import { longestRunMs } from './clients.ts';
import type { AwsSettings } from './config.ts';
import type { RotateDeps } from './rotate.ts';
import { awsErrorCode, classify } from './upstream.ts';

/** IAM's CreateDate has whole seconds: a key made at 12:00:00.900 says 12:00:00. */
const CREATE_DATE_PRECISION_MS = 1000;

/**
 * How far apart the broker's clock (`creating`, `until`: its Redis-time estimate) and IAM's (CreateDate)
 * may be for the window to still find the rotation's key. Small on purpose: every second of window is a
 * second in which an operator's own key would be taken for the broker's. With clocks further apart the
 * broker's key falls outside the window and is left alone (logged): the rotation then fails on IAM's
 * two-key limit, which says so, rather than touch what it cannot tell is its own.
 */
const CLOCK_SKEW_ALLOWANCE_MS = 5000;

/**
 * The cap of `until` − `creating`: the longest one CreateAccessKey may go on sending attempts, whatever the
 * timeout and retry settings (the defaults need 33.2 s: clients.ts longestRunMs). rotate.ts cuts the call
 * off at `until`. Every second of window is a second in which an operator's key made on the broker's user
 * is taken for the broker's, and one more second the next rotation waits before it may look.
 */
export const MAX_CREATE_WINDOW_MS = 60_000;

/**
 * How long after the window's end the next rotation waits before it lists the keys. IAM is eventually
 * consistent (AWS gives no bound; changes usually show within seconds), so a new key may be listed late,
 * and a last attempt may land at the window's very end. A listing that missed the lost key would then
 * name it among the keys that existed before the next CreateAccessKey, and nothing would ever retire it.
 * 30 s is several times the usual lag; a key listed later still is not covered (docs/operations.md).
 */
export const LISTING_LAG_MS = 30_000;

/** A CreateAccessKey call as the intent records it: sent at `creating`, no attempt after `until`. */
type CreateCall = { creating: number; until: number };

/** `until` for a CreateAccessKey sent at `creating`, recorded in the intent before the call. */
export function createDeadline(settings: AwsSettings, creating: number): number {
  return creating + Math.min(longestRunMs(settings), MAX_CREATE_WINDOW_MS);
}

/** The CreateDates (IAM's clock) a key made by `call` can carry: CreateDate rounds down, and the clocks may differ. */
export function createWindow(call: CreateCall): { from: number; to: number } {
  return { from: call.creating - CREATE_DATE_PRECISION_MS - CLOCK_SKEW_ALLOWANCE_MS, to: call.until + CLOCK_SKEW_ALLOWANCE_MS };
}

/** A lost CreateAccessKey to look for: its window, and the ids it cannot have made. */
export type LostCreate = { from: number; to: number; known: Set<string> };

/**
 * The interrupted rotation's CreateAccessKey whose answer never reached the intent (`creating`, no `new`),
 * or undefined. Until a listing taken now can be trusted to show any key it made (the window's end plus
 * LISTING_LAG_MS), throws 409 rotation_in_progress with Retry-After, before anything is done: this rotation
 * must not record its own intent over that one while the key may still be unseen.
 */
export function lostCreate(settings: AwsSettings, intent: RotationIds | undefined, now: number): LostCreate | undefined {
  if (intent?.creating === undefined || intent.new) return undefined;
  // No release writes `creating` without `until`; should one appear, its window comes from today's settings.
  const call = { creating: intent.creating, until: intent.until ?? intent.creating + longestRunMs(settings) };
  const window = createWindow(call);
  const waitMs = window.to + LISTING_LAG_MS - now;
  if (waitMs > 0) {
    const retryAfterSeconds = Math.ceil(waitMs / 1000);
    throw conflict(
      'rotation_in_progress',
      `An earlier rotation lost its CreateAccessKey answer; IAM can be checked for the key it may have made in ${retryAfterSeconds} s. Rotate again then.`,
      { retryAfterSeconds },
    );
  }
  return { ...window, known: new Set([intent.old ?? '', ...(intent.existing ?? [])]) };
}

/**
 * Deactivates each key of `listed` (a listing taken after `lost`'s window and LISTING_LAG_MS) that the lost
 * call can have made: active, created inside its window, and neither the key in use, nor the one that
 * rotation was replacing, nor listed before its call. Deactivated, not deleted: an operator who finds their
 * own key deactivated can reactivate it; the next rotation deletes it (rotate.ts removeInactiveKeys). Any
 * other key is an operator's and is never touched, only logged. Returns the ids deactivated; throws when one
 * may still be active.
 */
export async function deactivateLostKeys(
  deps: RotateDeps,
  current: string,
  lost: LostCreate,
  listed: AccessKeyMetadata[],
  journal: RotationJournal,
): Promise<string[]> {
  const done: string[] = [];
  for (const k of listed) {
    const id = k.AccessKeyId;
    if (!id || id === current || lost.known.has(id) || k.Status !== 'Active') continue;
    const created = k.CreateDate?.getTime();
    if (created === undefined || created < lost.from || created > lost.to) {
      deps.logger.warn(
        {
          accessKeyId: id,
          createDate: k.CreateDate?.toISOString(),
          window: [new Date(lost.from).toISOString(), new Date(lost.to).toISOString()],
        },
        'left alone an active access key the interrupted rotation cannot have made (not created while it asked IAM for one)',
      );
      continue;
    }
    if (!(await deactivateKey(deps, id, journal))) continue;
    deps.logger.warn(
      { accessKeyId: id, createDate: k.CreateDate?.toISOString() },
      'deactivated an access key an interrupted rotation made but never recorded (its answer was lost); the next rotation deletes it',
    );
    done.push(id);
  }
  return done;
}

/** Sets one key of the broker's user Inactive, checking the rotation lock first. False when it is already gone. */
async function deactivateKey(deps: RotateDeps, id: string, journal: RotationJournal): Promise<boolean> {
  const UserName = deps.settings.userName;
  await journal.fence();
  try {
    await deps.clients.run((c) =>
      c.iam.send(new UpdateAccessKeyCommand({ AccessKeyId: id, Status: 'Inactive', ...(UserName ? { UserName } : {}) })),
    );
    return true;
  } catch (err) {
    if (classify(err) === 'not_found') return false;
    throw err;
  }
}

/**
 * Deactivates, then deletes, a key an interrupted rotation recorded (so provably the broker's). False when
 * it is already gone. Throws when it may still be active (the caller must not forget it); a failed delete
 * only leaves an inactive key, which the next rotation's removeInactiveKeys deletes.
 */
export async function retireKey(deps: RotateDeps, id: string, journal: RotationJournal): Promise<boolean> {
  if (!(await deactivateKey(deps, id, journal))) return false;
  const UserName = deps.settings.userName;
  await journal.fence();
  await deps.clients
    .run((c) => c.iam.send(new DeleteAccessKeyCommand({ AccessKeyId: id, ...(UserName ? { UserName } : {}) })))
    .catch((err) =>
      deps.logger.warn(
        { accessKeyId: id, code: awsErrorCode(err) },
        'leftover access key deactivated but not deleted; the next rotation deletes it',
      ),
    );
  return true;
}

/**
 * The error a CreateAccessKey attempt throws instead of being sent past `until`: classified `other`, so not
 * retried, and taken for a call that may have been carried out (an earlier attempt may have been cut off).
 */
export function pastCreateWindow(): Error {
  return Object.assign(new Error('CreateAccessKey not sent: past the end of its recorded window'), {
    name: 'CreateWindowClosed',
    $fault: 'client',
  });
}
