import { randomUUID } from 'node:crypto';
import { preparsePolicySet, statefulIsAuthorized, type AuthorizationAnswer } from '@cedar-policy/cedar-wasm/nodejs';
import { silentLogger, type Logger } from '../logger.ts';
import { sliceByScope, type PolicySlice } from './compile.ts';
import { DecisionCache } from './decision-cache.ts';
import { PolicyLoadError } from './errors.ts';
import { loadPolicySet, type LoadedPolicy, type LoadedPolicySet } from './load.ts';
import { POLICY_ACTIONS, resourceKey } from './policy-ast.ts';
import { toCedarCall } from './request.ts';
import type { PolicyAction, PolicyDecision, PolicyEngine, PolicyRequest } from './types.ts';
import { watchPolicyDir } from './watch.ts';

/** Options for {@link createCedarEngine}. */
export interface CedarEngineOptions {
  /** Directory of `*.cedar` files. */
  dir: string;
  logger?: Logger;
  /** Reload when a file in `dir` changes and on SIGHUP. Default false. */
  watch?: boolean;
  /** Quiet period after the last change before reloading. Default 250 ms. */
  debounceMs?: number;
  /** Decisions remembered per policy set (0 turns the cache off). Default 4096. */
  cacheSize?: number;
}

/** The Cedar policy engine, with what it knows about the set in force. */
export interface CedarPolicyEngine extends PolicyEngine {
  /** The set in force: files, policies with file and line, warnings. */
  readonly policySet: LoadedPolicySet;
  /** A policy of the set in force by id (to show where a decision came from). */
  policy(id: string): LoadedPolicy | undefined;
}

/** A slice as handed to Cedar, under the id Cedar keeps it by. */
type CedarSlice = PolicySlice & { readonly cedarId: string };

/** Everything `authorize` needs about one policy set; replaced as a whole on reload. */
interface ActiveSet {
  readonly loaded: LoadedPolicySet;
  readonly byId: ReadonlyMap<string, LoadedPolicy>;
  readonly slices: ReadonlyMap<PolicyAction, { anyResource: CedarSlice; byResource: ReadonlyMap<string, CedarSlice> }>;
  readonly cedarIds: readonly string[];
  readonly cache: DecisionCache;
}

const deny = (errors: string[], policies: string[] = []): PolicyDecision => ({ allowed: false, policies, errors });

/**
 * Loads the policy directory and answers authorization questions against it.
 *
 * The set is parsed, validated and handed to Cedar once per load (Cedar keeps
 * it preparsed), never per request. `authorize` is synchronous, so each call
 * runs entirely against one set: a reload prepares the new set under fresh
 * Cedar ids and then replaces one reference. A set that does not load is
 * refused with a {@link PolicyLoadError} and the old set stays in force.
 *
 * Decisions: no applicable permit means deny, a forbid wins over any permit,
 * and errors never permit. Cedar skips a policy whose evaluation errors; for a
 * permit that is what we want, but a skipped forbid would fail open (`forbid
 * ... when { principal.claims.risk == "high" }` for a token without that
 * claim), so here an erroring forbid denies.
 */
export async function createCedarEngine(opts: CedarEngineOptions): Promise<CedarPolicyEngine> {
  const logger = opts.logger ?? silentLogger;
  const instance = randomUUID();
  const cacheSize = opts.cacheSize ?? 4096;
  // Two Cedar slots used in turn: the one being prepared is never the one in force.
  let generation = 0;
  const slotIds: string[][] = [[], []];
  let active = activate(await loadPolicySet(opts.dir));
  let closed = false;
  let pending: Promise<unknown> = Promise.resolve();
  logLoaded(active.loaded, 'policy set loaded');

  function activate(loaded: LoadedPolicySet): ActiveSet {
    const slot = generation++ % 2;
    // Whatever this slot held is two sets old: release Cedar's copy first.
    release(slotIds[slot] ?? []);
    const ids: string[] = [];
    slotIds[slot] = ids;
    const toCedar = (s: PolicySlice): CedarSlice => {
      const cedarId = `${instance}/${slot}/${s.name}`;
      const answer = preparsePolicySet(cedarId, { staticPolicies: s.policies });
      if (answer.type === 'failure') {
        throw new PolicyLoadError(
          answer.errors.map((e) => ({ code: 'ERR_POLICY_PARSE' as const, file: loaded.dir, line: 0, column: 0, message: e.message })),
        );
      }
      ids.push(cedarId);
      return { ...s, cedarId };
    };
    const slices = new Map(
      [...sliceByScope(loaded)].map(([action, a]) => [
        action,
        {
          anyResource: toCedar(a.anyResource),
          byResource: new Map([...a.byResource].map(([r, s]) => [r, toCedar(s)])),
        },
      ]),
    );
    return { loaded, slices, cedarIds: ids, byId: new Map(loaded.policies.map((p) => [p.id, p])), cache: new DecisionCache(cacheSize) };
  }

  function release(ids: readonly string[]): void {
    for (const id of ids) preparsePolicySet(id, { staticPolicies: {} });
  }

  function logLoaded(loaded: LoadedPolicySet, msg: string): void {
    logger.info({ dir: loaded.dir, policies: loaded.policies.length, files: loaded.files, version: loaded.version }, msg);
    for (const w of loaded.warnings) logger.warn({ warning: w }, 'policy warning');
  }

  async function reload(): Promise<{ policies: number; version: string }> {
    if (closed) throw new Error('policy engine is closed');
    // One reload at a time, in call order; the swap itself is one assignment.
    const run = pending.then(async () => {
      const loaded = await loadPolicySet(opts.dir);
      if (closed) return loaded;
      active = activate(loaded);
      logLoaded(loaded, 'policy set reloaded');
      return loaded;
    });
    pending = run.catch(() => undefined);
    const loaded = await run;
    return { policies: loaded.policies.length, version: loaded.version };
  }

  function authorize(req: PolicyRequest): PolicyDecision {
    const set = active;
    if (closed) return deny(['policy engine is closed']);
    const slices = POLICY_ACTIONS.includes(req.action) ? set.slices.get(req.action) : undefined;
    if (!slices) return deny([`unknown action "${String(req.action)}"`]);
    const slice = slices.byResource.get(resourceKey(req.resource.type, req.resource.id)) ?? slices.anyResource;
    if (slice.count === 0) return deny([]);
    let call;
    try {
      call = toCedarCall(req, slice.projections, slice.cedarId);
    } catch (err) {
      return deny([`request could not be evaluated: ${(err as Error).message}`]);
    }
    return set.cache.get(call, () => decide(set, call));
  }

  function decide(set: ActiveSet, call: Parameters<typeof statefulIsAuthorized>[0]): PolicyDecision {
    let answer: AuthorizationAnswer;
    try {
      answer = statefulIsAuthorized(call);
    } catch (err) {
      return deny([`request could not be evaluated: ${(err as Error).message}`]);
    }
    if (answer.type === 'failure') return deny(answer.errors.map((e) => `request could not be evaluated: ${e.message}`));
    const { decision, diagnostics } = answer.response;
    const errors = diagnostics.errors.map((e) => `${e.policyId}: ${e.error.message}`);
    const erroredForbids = diagnostics.errors.map((e) => e.policyId).filter((id) => set.byId.get(id)?.effect === 'forbid');
    if (erroredForbids.length > 0) return deny(errors, [...new Set(erroredForbids)]);
    return { allowed: decision === 'allow', policies: diagnostics.reason, errors };
  }

  const stopWatching = opts.watch
    ? watchPolicyDir(opts.dir, opts.debounceMs ?? 250, () => {
        reload().catch((err: unknown) => {
          logger.error(
            { err: err instanceof Error ? err.message : String(err), version: active.loaded.version },
            'policy reload refused; the previous set stays in force',
          );
        });
      })
    : () => undefined;

  return {
    authorize,
    reload,
    get version() {
      return active.loaded.version;
    },
    get policySet() {
      return active.loaded;
    },
    policy: (id) => active.byId.get(id),
    async close() {
      if (closed) return;
      closed = true;
      stopWatching();
      await pending;
      release(slotIds.flat());
    },
  };
}
