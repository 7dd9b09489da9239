import {
  type AccessKeyMetadata,
  CreateAccessKeyCommand,
  DeleteAccessKeyCommand,
  ListAccessKeysCommand,
  UpdateAccessKeyCommand,
} from '@aws-sdk/client-iam';
import { GetCallerIdentityCommand } from '@aws-sdk/client-sts';
import { setTimeout as sleep } from 'node:timers/promises';
import { BrokerError, badRequest, upstreamFailed } from '../../errors.ts';
import type { Logger } from '../../logger.ts';
import { noJournal, type RotationJournal, RotationLockLost, type RotationResult, stillHeld, wasUnanswered } from '../types.ts';
import type { AwsClients, ClientPair, StaticKeys } from './clients.ts';
import type { AwsSettings } from './config.ts';
import { createDeadline, deactivateLostKeys, lostCreate, pastCreateWindow, retireKey } from './unrecorded-keys.ts';
import { awsErrorCode, classify, maybeDone } from './upstream.ts';

const DISTRIBUTING = 'distributing the new key';

/** The rotation's failure for `step`, logged. */
type Fail = (step: string, err: unknown) => BrokerError;

export interface RotateDeps {
  settings: AwsSettings;
  clients: AwsClients;
  logger: Logger;
  /** The broker's clock (its Redis-time estimate): when CreateAccessKey was sent, for the intent. */
  clock: () => number;
}

/**
 * Rotates the broker's own IAM access key: create a new key, prove it works
 * (GetCallerIdentity, retried while IAM propagates it), switch to it,
 * deactivate the old key, delete it. Until the old key is deactivated every
 * failure switches back and deletes the new key, so a failure halfway leaves
 * the old key in use. Once the new key was handed to the other instances, the
 * old one is handed out again (sealed into Redis and announced) before the new
 * one is deleted; if that fails too, both keys are kept (every instance keeps
 * working, whichever it holds) and the rotation answers 502
 * rotation_incomplete. A failed final delete only leaves an inactive key,
 * which the next rotation removes first. A CreateAccessKey whose answer was
 * lost may have made a key nobody knows: the intent keeps when it was sent
 * and when its last attempt ended, and the next rotation, once IAM can be
 * trusted to list that key, deactivates the key created then
 * (unrecorded-keys.ts). Every rotation needs iam:ListAccessKeys for that.
 */
export async function rotateAccessKey(
  deps: RotateDeps,
  distribute: (secret: Record<string, string>) => Promise<void> = async () => {},
  journal: RotationJournal = noJournal,
): Promise<RotationResult> {
  const { settings, clients, logger } = deps;
  const old = clients.staticKeys;
  if (!old || !clients.rotatable)
    throw badRequest('rotation_unsupported', 'AWS key rotation needs providers.aws.credentials with a long-term access key.');
  const UserName = settings.userName;
  const fail: Fail = (step, err) => {
    logger.error({ step, code: awsErrorCode(err) }, 'aws access key rotation failed; the previous key is still in use');
    return upstreamFailed('rotation_failed', `Rotating the AWS access key failed at ${step}; the previous key is still in use.`, {
      cause: err,
    });
  };

  const existing = await beforeCreate(deps, old.accessKeyId, journal, fail);
  let created;
  try {
    created = await createKey(deps, old.accessKeyId, existing, journal);
  } catch (err) {
    if (err instanceof RotationLockLost) throw err; // the intent was not written, nothing was sent
    // Only a refusal (LimitExceeded, AccessDenied, ...) with no attempt left unanswered made nothing. Otherwise
    // IAM may hold a key whose id never reached us: the intent stays, for the next rotation to retire it.
    if (wasUnanswered(err) || maybeDone(err))
      logger.warn({ code: awsErrorCode(err) }, 'CreateAccessKey may have made a key whose answer was lost; the next rotation retires it');
    else await journal.clear();
    throw fail('CreateAccessKey', err);
  }
  if (!created?.AccessKeyId || !created.SecretAccessKey) throw fail('CreateAccessKey', new Error('incomplete CreateAccessKey response'));
  const fresh: StaticKeys = { accessKeyId: created.AccessKeyId, secretAccessKey: created.SecretAccessKey };
  const oldPair = clients.current;
  const newPair = clients.build(fresh, oldPair.generation + 1);
  // Whether `distribute` was called with the new key: the other instances (and Redis, for instances
  // started later) may hold it, so undoing must hand them the old key back before the new one is deleted.
  let handedOut = false;
  const undo = async (step: string, err: unknown) => {
    const lost = err instanceof RotationLockLost;
    // Sealed into Redis, the new key may be in use anywhere; unsealed (never handed out, or its sealing
    // is what a lapsed lock refused) it is this instance's alone, and this instance deletes it whatever
    // the lock: the rotation holding it may not know of it (its id may not have reached the intent).
    if (handedOut && !(lost && step === DISTRIBUTING)) {
      // Others may hold it: with the lock lost, the rotation holding it decides (it reads Redis and the intent).
      if (lost) return err;
      try {
        await distribute({ accessKeyId: old.accessKeyId, secretAccessKey: old.secretAccessKey });
      } catch (e) {
        if (e instanceof RotationLockLost) return e;
        // Nobody can tell which key each instance holds now: keep both keys working, this instance on the
        // one Redis most likely names (the new one, unless handing it out is what failed).
        if (step === DISTRIBUTING && clients.current === newPair) clients.use(old, clients.build(old, newPair.generation + 1));
        logger.error(
          { step, code: awsErrorCode(err), accessKeyId: fresh.accessKeyId, previous: old.accessKeyId },
          'aws access key rotation failed after the new key was handed out, and the old key could not be handed back: both keys stay active',
        );
        return upstreamFailed(
          'rotation_incomplete',
          `Rotating the AWS access key failed at ${step} and the other instances could not be switched back; both keys stay active.`,
          { cause: e },
        );
      }
    }
    if (clients.current === newPair) clients.use(old, clients.build(old, newPair.generation + 1));
    await clients
      .run((c) => c.iam.send(new DeleteAccessKeyCommand({ AccessKeyId: fresh.accessKeyId, ...(UserName ? { UserName } : {}) })))
      // The intent stays recorded when the delete fails: the next rotation retires the new key.
      .then(() => journal.clear())
      .catch((e) => logger.warn({ accessKeyId: fresh.accessKeyId, code: awsErrorCode(e) }, 'could not delete the unused new access key'));
    // A step that failed because another rotation took over (it retired this one's key, say) says so.
    if (lost || !(await stillHeld(journal).catch(() => true))) return lost ? err : new RotationLockLost();
    return fail(step, err);
  };

  try {
    await journal.record({ old: old.accessKeyId, new: fresh.accessKeyId });
    await verify(deps, newPair);
  } catch (err) {
    newPair.sts.destroy();
    newPair.iam.destroy();
    throw await undo('verifying the new key', err);
  }
  clients.use(fresh, newPair);
  try {
    // Every instance switches before the old key stops working.
    handedOut = true;
    await distribute({ accessKeyId: fresh.accessKeyId, secretAccessKey: fresh.secretAccessKey });
  } catch (err) {
    throw await undo(DISTRIBUTING, err);
  }
  try {
    await journal.fence();
    await clients.run((c) =>
      c.iam.send(new UpdateAccessKeyCommand({ AccessKeyId: old.accessKeyId, Status: 'Inactive', ...(UserName ? { UserName } : {}) })),
    );
  } catch (err) {
    throw await undo('UpdateAccessKey', err);
  }
  // The rotation has happened; a lock lost from here on only leaves the inactive old key to whoever holds it.
  if (!(await stillHeld(journal))) return rotated(fresh);
  await clients
    .run((c) => c.iam.send(new DeleteAccessKeyCommand({ AccessKeyId: old.accessKeyId, ...(UserName ? { UserName } : {}) })))
    .catch((err) =>
      logger.warn(
        { accessKeyId: old.accessKeyId, code: awsErrorCode(err) },
        'old access key deactivated but not deleted; the next rotation removes it',
      ),
    );
  // The old key is inactive at least (an inactive leftover is removed by the next rotation either way).
  await journal.clear();
  logger.info({ accessKeyId: fresh.accessKeyId, retired: old.accessKeyId }, 'aws access key rotated');
  return rotated(fresh);
}

const rotated = (fresh: StaticKeys): RotationResult => ({
  target: 'aws',
  rotated: ['iam-access-key'],
  detail: { accessKeyId: fresh.accessKeyId },
  secret: { accessKeyId: fresh.accessKeyId, secretAccessKey: fresh.secretAccessKey },
});

/** A new key is not usable everywhere at once: InvalidClientTokenId is retried for a while. */
async function verify(deps: RotateDeps, pair: ClientPair): Promise<void> {
  const { rotationVerifyAttempts: attempts, rotationVerifyDelayMs: delay } = deps.settings;
  for (let attempt = 1; ; attempt++) {
    try {
      await pair.sts.send(new GetCallerIdentityCommand({}));
      return;
    } catch (err) {
      const kind = classify(err);
      if (!(kind === 'auth' || kind === 'throttled' || kind === 'unavailable') || attempt >= attempts) throw err;
      await sleep(delay);
    }
  }
}

/**
 * Keys an interrupted rotation recorded (the one it was retiring, the one it
 * created) that this instance does not use: the core switched it to the key
 * Redis names, which is the one every instance uses. They are still active
 * (a process killed mid-rotation, or both kept by rotation_incomplete) and
 * would stay valid for good, and IAM allows only two keys per user. A key
 * that could not be deactivated throws: going on would replace the intent
 * that names it.
 */
async function retireLeftovers(deps: RotateDeps, current: string, journal: RotationJournal): Promise<void> {
  for (const id of new Set([journal.leftover?.old, journal.leftover?.new])) {
    if (!id || id === current) continue;
    if (await retireKey(deps, id, journal))
      deps.logger.warn({ accessKeyId: id }, 'retired an access key an interrupted rotation left active');
  }
}

/**
 * What comes before CreateAccessKey, on one listing of the user's keys (also the intent's `existing`, so a
 * key either is checked against an interrupted rotation's lost call or was not listed yet): retire what an
 * interrupted rotation left, deactivate the key its lost CreateAccessKey made, delete inactive keys. Any
 * failure throws before this rotation's intent replaces that one.
 */
async function beforeCreate(deps: RotateDeps, current: string, journal: RotationJournal, fail: Fail): Promise<string[]> {
  // Until a lost key can be looked for, 409 with nothing done: the interrupted rotation's intent stays.
  const lost = lostCreate(deps.settings, journal.leftover, deps.clock());
  let listed: AccessKeyMetadata[];
  try {
    await retireLeftovers(deps, current, journal);
    await journal.fence();
    listed = await listKeys(deps).catch((err) => {
      throw fail('ListAccessKeys (rotation needs iam:ListAccessKeys on the broker user)', err);
    });
    // Deactivated, not deleted (an operator's key in the window can be reactivated): with it the user
    // has two keys, so this rotation stops and the next deletes it.
    const deactivated = lost ? await deactivateLostKeys(deps, current, lost, listed, journal) : [];
    if (deactivated.length) {
      await journal.clear();
      throw upstreamFailed(
        'rotation_failed',
        `An earlier rotation's CreateAccessKey answer was lost; the key it made (${deactivated.join(', ')}) is now inactive, and the next rotation deletes it and rotates. The previous key is still in use.`,
      );
    }
  } catch (err) {
    if (err instanceof BrokerError) throw err; // RotationLockLost, or it says which step failed
    throw fail("retiring an interrupted rotation's keys", err);
  }
  return removeInactiveKeys(deps, current, listed);
}

/**
 * Records the intent, then calls CreateAccessKey. The new key's id is known only from IAM's answer: if
 * that never arrives (or this process dies first) the next rotation finds the key by its CreateDate, in
 * the window the intent records (unrecorded-keys.ts); no attempt is sent after its end, `until`.
 */
async function createKey(deps: RotateDeps, current: string, existing: string[], journal: RotationJournal) {
  const UserName = deps.settings.userName;
  const creating = deps.clock();
  const until = createDeadline(deps.settings, creating);
  await journal.record({ old: current, creating, until, existing });
  const deadline = AbortSignal.timeout(Math.max(0, until - deps.clock()));
  const call = (c: ClientPair) => {
    if (deadline.aborted) throw pastCreateWindow();
    return c.iam.send(new CreateAccessKeyCommand({ ...(UserName ? { UserName } : {}) }), { abortSignal: deadline });
  };
  return (await deps.clients.run(call)).AccessKey;
}

/** The broker user's keys; every rotation needs them (`existing`, a lost key, inactive leftovers). */
async function listKeys(deps: RotateDeps): Promise<AccessKeyMetadata[]> {
  const UserName = deps.settings.userName;
  const listed = await deps.clients.run((c) => c.iam.send(new ListAccessKeysCommand({ ...(UserName ? { UserName } : {}) })));
  return listed.AccessKeyMetadata ?? [];
}

/**
 * Deletes the inactive keys of `listed` other than the one in use: an earlier rotation that failed after
 * deactivating, or a lost key deactivated by the one before (IAM allows only two keys per user). Returns
 * the ids listed, for the intent: keys that exist before CreateAccessKey are not its.
 */
async function removeInactiveKeys(deps: RotateDeps, current: string, listed: AccessKeyMetadata[]): Promise<string[]> {
  const { clients, settings, logger } = deps;
  const UserName = settings.userName;
  try {
    for (const k of listed) {
      if (k.AccessKeyId && k.AccessKeyId !== current && k.Status === 'Inactive') {
        await clients.run((c) => c.iam.send(new DeleteAccessKeyCommand({ AccessKeyId: k.AccessKeyId, ...(UserName ? { UserName } : {}) })));
        logger.info({ accessKeyId: k.AccessKeyId }, 'deleted an inactive leftover access key before rotating');
      }
    }
  } catch (err) {
    logger.warn({ code: awsErrorCode(err) }, 'could not delete an inactive access key before rotating');
  }
  return listed.flatMap((k) => (k.AccessKeyId ? [k.AccessKeyId] : []));
}
