import { DeleteAccessKeyCommand, ListAccessKeysCommand, UpdateAccessKeyCommand } from '@aws-sdk/client-iam';
import type { RotationJournal } from '../types.ts';
import { longestRunMs } from './clients.ts';
import type { AwsSettings } from './config.ts';
import type { RotateDeps } from './rotate.ts';
import { awsErrorCode, classify } from './upstream.ts';

/** IAM's CreateDate has whole seconds: a key made at 12:00:00.900 says 12:00:00. */
const CREATE_DATE_PRECISION_MS = 1000;

/**
 * How far apart the broker's clock (`creating`: its Redis-time estimate) and IAM's (CreateDate) may be for
 * the window to still find the rotation's key; it also covers the intent's write to Redis between taking
 * `creating` and sending the call. Small on purpose: every second of window is a second in which an
 * operator's own key would be taken for the broker's. With clocks further apart the broker's key falls
 * outside the window and is left alone (logged): the rotation then fails on IAM's two-key limit, which
 * says so, rather than delete what it cannot tell is its own.
 */
const CLOCK_SKEW_ALLOWANCE_MS = 5000;

/**
 * The CreateDates (IAM's clock, epoch ms) a key made by a CreateAccessKey sent at `creating` can carry:
 * from just before it (CreateDate is rounded down to the second) to the end of the call's possible
 * attempts (`longestRunMs`: about 33 s with the default timeout and retries), each end widened by the
 * clock allowance.
 */
export function createWindow(settings: AwsSettings, creating: number): { from: number; to: number } {
  return {
    from: creating - CREATE_DATE_PRECISION_MS - CLOCK_SKEW_ALLOWANCE_MS,
    to: creating + longestRunMs(settings) + CLOCK_SKEW_ALLOWANCE_MS,
  };
}

/**
 * Deactivates, then deletes, one access key of the broker's user, checking the rotation lock before each.
 * False when the key is already gone. Throws when it may still be active (the caller must not forget it);
 * a failed delete only leaves an inactive key, which the next rotation's removeInactiveKeys deletes.
 */
export async function retireKey(deps: RotateDeps, id: string, journal: RotationJournal): Promise<boolean> {
  const { clients, settings, logger } = deps;
  const UserName = settings.userName;
  await journal.fence();
  try {
    await clients.run((c) =>
      c.iam.send(new UpdateAccessKeyCommand({ AccessKeyId: id, Status: 'Inactive', ...(UserName ? { UserName } : {}) })),
    );
  } catch (err) {
    if (classify(err) === 'not_found') return false;
    throw err;
  }
  await journal.fence();
  await clients
    .run((c) => c.iam.send(new DeleteAccessKeyCommand({ AccessKeyId: id, ...(UserName ? { UserName } : {}) })))
    .catch((err) =>
      logger.warn(
        { accessKeyId: id, code: awsErrorCode(err) },
        'leftover access key deactivated but not deleted; the next rotation deletes it',
      ),
    );
  return true;
}

/**
 * An interrupted rotation that recorded `creating` and no `new` sent CreateAccessKey and never recorded
 * the answer: it was lost (a reset, a timeout, a 5xx after IAM made the key, an attempt before a retry
 * IAM refused), or the process died first. IAM may hold an active key nobody knows, valid for good and
 * one of the user's two. Retired here: each active key created inside the call's window (createWindow)
 * that is neither the key in use, nor the one that rotation was replacing, nor listed before its call.
 * Any other key is an operator's and is never touched, only logged. A failed listing or deactivation
 * throws: the rotation stops before its own intent replaces this one, so the key is not forgotten.
 */
export async function retireUnrecordedKeys(deps: RotateDeps, current: string, journal: RotationJournal): Promise<void> {
  const intent = journal.leftover;
  if (intent?.creating === undefined || intent.new) return;
  const { clients, settings, logger } = deps;
  const UserName = settings.userName;
  const { from, to } = createWindow(settings, intent.creating);
  const known = new Set([current, intent.old, ...(intent.existing ?? [])]);
  const listed = await clients.run((c) => c.iam.send(new ListAccessKeysCommand({ ...(UserName ? { UserName } : {}) })));
  for (const k of listed.AccessKeyMetadata ?? []) {
    const id = k.AccessKeyId;
    // Inactive keys are not valid; removeInactiveKeys deletes them next.
    if (!id || known.has(id) || k.Status !== 'Active') continue;
    const created = k.CreateDate?.getTime();
    if (created === undefined || created < from || created > to) {
      logger.warn(
        { accessKeyId: id, createDate: k.CreateDate?.toISOString(), window: [new Date(from).toISOString(), new Date(to).toISOString()] },
        'left alone an active access key the interrupted rotation cannot have made (not created while it asked IAM for one)',
      );
      continue;
    }
    if (await retireKey(deps, id, journal))
      logger.warn({ accessKeyId: id }, 'retired an access key an interrupted rotation made but never recorded (its answer was lost)');
  }
}
