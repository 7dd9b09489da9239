import { generateSecretId } from './routes/approle.ts';
import { secretRoutes } from './routes/secrets.ts';
import { sysRoutes } from './routes/sys.ts';
import { SYSTEM_MAX_TTL, tokenRoutes } from './routes/token.ts';
import { approleRoutes } from './routes/approle.ts';
import { dispatch, Front, type Dispatcher, type Fault, type Hold, makeHold, type RequestLogEntry } from './server.ts';
import { VaultState, type AwsCredentialType, type TokenEntry } from './state.ts';
import { uuid } from './util.ts';

export type { Fault, Hold, RequestLogEntry } from './server.ts';
export type { TokenEntry } from './state.ts';

export interface VaultEmulatorOptions {
  /** Port to listen on (default: a random free loopback port). */
  port?: number;
  /** Reject unknown request parameters with 400 (default true) instead of Vault's warning. */
  strictParams?: boolean;
  /** Namespaces that exist besides the root one (Enterprise feature), e.g. ["team-a"]. */
  namespaces?: string[];
  /** ACL policies: name → path patterns (exact, or a prefix ending in "*"). */
  policies?: Record<string, string[]>;
}

export interface AppRoleOptions {
  name: string;
  policies: string[];
  /** Seconds (default 1200 / 1800, like `token_ttl` / `token_max_ttl`). */
  tokenTtl?: number;
  tokenMaxTtl?: number;
  /** Seconds; 0 = secret-ids never expire (default). */
  secretIdTtl?: number;
  /** 0 = unlimited (default). */
  secretIdNumUses?: number;
  namespace?: string;
  mount?: string;
}

/** A copy of a token's state, for assertions. */
export type TokenView = Readonly<Omit<TokenEntry, 'id'>> & { ttl: number };

/** An in-process Vault HTTP API on a loopback port, plus what tests need to steer and inspect it. */
export interface VaultEmulator {
  /** Base address, e.g. http://127.0.0.1:40123 (no trailing slash, no /v1). */
  url: string;
  rootToken: string;
  state: VaultState;
  /** Every request answered, in order (path relative to its namespace). */
  requests: RequestLogEntry[];
  /** Requests no route matched or that crashed a handler; should stay empty in a passing test. */
  unhandled: string[];
  stop(): Promise<void>;
  seal(): void;
  unseal(): void;
  /** true: refuse new connections and reset open ones (an outage); false: accept again on the same port. */
  setDown(down: boolean): Promise<void>;
  /** The next `times` requests matching `path` answer with `status` and `errors`. */
  injectFault(fault: Omit<Fault, 'times' | 'errors'> & { times?: number; errors?: string[] }): void;
  /** The next `times` requests matching `path` take effect at once, but their answers wait for `release()`. */
  holdResponses(path: string | RegExp, times?: number): Hold;
  /** Moves the emulator's clock forward (token and lease expiry) without sleeping. */
  advanceTime(seconds: number): void;
  setPolicy(name: string, paths: string[]): void;
  addNamespace(ns: string): void;
  createAppRole(opts: AppRoleOptions): { roleId: string; secretId: string; secretIdAccessor: string };
  generateSecretId(roleName: string, opts?: { namespace?: string; mount?: string }): { secretId: string; secretIdAccessor: string };
  isSecretIdValid(roleName: string, secretId: string, opts?: { namespace?: string; mount?: string }): boolean;
  createDatabaseRole(name: string, opts?: { defaultTtl?: number; maxTtl?: number; namespace?: string }): void;
  createAwsRole(name: string, opts?: { credentialType?: AwsCredentialType; defaultTtl?: number; namespace?: string }): void;
  /** Creates an orphan service token as root would (policies as given plus "default"). */
  createToken(opts: {
    policies: string[];
    ttl?: number;
    explicitMaxTtl?: number;
    renewable?: boolean;
    numUses?: number;
    namespace?: string;
  }): { token: string; accessor: string };
  /** Revokes a token from outside (an operator running `vault token revoke`). */
  revokeToken(token: string): void;
  tokenByAccessor(accessor: string): TokenView | undefined;
  isTokenValid(token: string): boolean;
  isDbUserValid(username: string): boolean;
  isAwsKeyValid(accessKey: string): boolean;
  leaseExists(leaseId: string): boolean;
}

/**
 * Starts a strict, protocol-faithful Vault emulator (protocols.md section 1)
 * on a random loopback port. Talk to it with any Vault client (node-vault,
 * curl); steer it with the returned helpers.
 */
export async function startVaultEmulator(opts: VaultEmulatorOptions = {}): Promise<VaultEmulator> {
  const state = new VaultState();
  for (const ns of opts.namespaces ?? []) state.addNamespace(ns);
  for (const [name, paths] of Object.entries(opts.policies ?? {})) state.policies.set(name, paths);
  const root = state.mintToken({
    namespace: '',
    policies: ['root'],
    meta: null,
    displayName: 'root',
    numUses: 0,
    creationTtl: 0,
    expireAt: null,
    maxExpireAt: null,
    explicitMaxTtl: 0,
    renewable: false,
    orphan: true,
    parent: null,
    path: 'auth/token/root',
  });
  const d: Dispatcher = {
    state,
    routes: [...sysRoutes, ...tokenRoutes, ...approleRoutes, ...secretRoutes],
    strictParams: opts.strictParams ?? true,
    log: [],
    unhandled: [],
    faults: [],
    holds: [],
  };
  const front = new Front((req, res) => void dispatch(d, req, res));
  await front.start(opts.port ?? 0);

  const approle = (name: string, o: { namespace?: string; mount?: string } = {}) => {
    const r = state.space(o.namespace ?? '').approles.get(`${o.mount ?? 'approle'}/${name}`);
    if (!r) throw new Error(`emulator: no AppRole ${name}`);
    return r;
  };
  const view = (t: TokenEntry | undefined): TokenView | undefined => {
    if (!t) return undefined;
    const { id: _id, ...rest } = t;
    return { ...structuredClone(rest), ttl: t.expireAt === null ? 0 : Math.max(0, Math.round((t.expireAt - state.now()) / 1000)) };
  };

  return {
    url: `http://127.0.0.1:${front.port}`,
    rootToken: root.id,
    state,
    requests: d.log,
    unhandled: d.unhandled,
    stop: () => front.stop(),
    seal: () => {
      state.sealed = true;
    },
    unseal: () => {
      state.sealed = false;
    },
    setDown: (down) => (down ? front.down() : front.up()),
    injectFault: (f) => {
      d.faults.push({ times: 1, errors: [`injected ${f.status}`], ...f });
    },
    holdResponses: (path, times = 1) => {
      const h = makeHold(path, times);
      d.holds.push(h);
      return h;
    },
    advanceTime: (seconds) => {
      state.clockOffsetMs += seconds * 1000;
      state.sweep();
    },
    setPolicy: (name, paths) => {
      state.policies.set(name, paths);
    },
    addNamespace: (ns) => state.addNamespace(ns),
    createAppRole: (o) => {
      const space = state.space(o.namespace ?? '');
      const mount = o.mount ?? 'approle';
      space.approleMounts.add(mount);
      const role = {
        mount,
        name: o.name,
        roleId: uuid(),
        policies: o.policies,
        tokenTtl: o.tokenTtl ?? 1200,
        tokenMaxTtl: o.tokenMaxTtl ?? 1800,
        secretIdTtl: o.secretIdTtl ?? 0,
        secretIdNumUses: o.secretIdNumUses ?? 0,
        secretIds: new Map(),
      };
      space.approles.set(`${mount}/${o.name}`, role);
      const s = generateSecretId(state.now(), role);
      return { roleId: role.roleId, secretId: s.secretId, secretIdAccessor: s.accessor };
    },
    generateSecretId: (name, o) => {
      const s = generateSecretId(state.now(), approle(name, o));
      return { secretId: s.secretId, secretIdAccessor: s.accessor };
    },
    isSecretIdValid: (name, secretId, o) => {
      state.sweep();
      return approle(name, o).secretIds.has(secretId);
    },
    createDatabaseRole: (name, o = {}) => {
      state.space(o.namespace ?? '').dbRoles.set(name, { name, defaultTtl: o.defaultTtl ?? 3600, maxTtl: o.maxTtl ?? 86_400 });
    },
    createAwsRole: (name, o = {}) => {
      state
        .space(o.namespace ?? '')
        .awsRoles.set(name, { name, credentialType: o.credentialType ?? 'iam_user', defaultTtl: o.defaultTtl ?? 3600 });
    },
    createToken: (o) => {
      const now = state.now();
      const ttl = o.ttl ?? SYSTEM_MAX_TTL;
      const t = state.mintToken({
        namespace: o.namespace ?? '',
        policies: [...new Set([...o.policies, 'default'])].sort(),
        meta: null,
        displayName: 'token',
        numUses: o.numUses ?? 0,
        creationTtl: ttl,
        expireAt: now + ttl * 1000,
        maxExpireAt: now + (o.explicitMaxTtl ?? SYSTEM_MAX_TTL) * 1000,
        explicitMaxTtl: o.explicitMaxTtl ?? 0,
        renewable: o.renewable ?? true,
        orphan: true,
        parent: null,
        path: 'auth/token/create-orphan',
      });
      return { token: t.id, accessor: t.accessor };
    },
    revokeToken: (token) => state.revokeToken(token),
    tokenByAccessor: (accessor) => {
      state.sweep();
      const id = state.accessors.get(accessor);
      return view(id === undefined ? undefined : state.tokens.get(id));
    },
    isTokenValid: (token) => {
      state.sweep();
      return state.tokens.has(token);
    },
    isDbUserValid: (username) => {
      state.sweep();
      return state.dbUsers.get(username)?.valid === true;
    },
    isAwsKeyValid: (key) => {
      state.sweep();
      return state.awsKeys.get(key)?.valid === true;
    },
    leaseExists: (id) => {
      state.sweep();
      return state.leases.has(id);
    },
  };
}
