import { base62, uuid } from './util.ts';

/** A Vault service token. `expireAt` null = never expires (root tokens). */
export interface TokenEntry {
  id: string;
  accessor: string;
  namespace: string;
  policies: string[];
  meta: Record<string, string> | null;
  displayName: string;
  /** 0 = unlimited; otherwise uses left. */
  numUses: number;
  creationTime: number;
  creationTtl: number;
  expireAt: number | null;
  /** Hard cap from explicit_max_ttl or the auth method's max TTL; null = none. */
  maxExpireAt: number | null;
  explicitMaxTtl: number;
  renewable: boolean;
  orphan: boolean;
  parent: string | null;
  path: string;
  lastRenewal: number | null;
}

/** A secret lease (dynamic credential). Revoking it runs `onRevoke`. */
export interface LeaseEntry {
  id: string;
  namespace: string;
  path: string;
  tokenId: string;
  issueTime: number;
  expireAt: number;
  renewable: boolean;
  maxExpireAt: number;
  lastRenewal: number | null;
  onRevoke: () => void;
}

export interface AppRoleSecretId {
  secretId: string;
  accessor: string;
  creationTime: number;
  /** null = never. */
  expireAt: number | null;
  /** 0 = unlimited. */
  numUses: number;
  metadata: Record<string, string>;
  cidrList: string[];
}

export interface AppRoleEntry {
  mount: string;
  name: string;
  roleId: string;
  policies: string[];
  tokenTtl: number;
  tokenMaxTtl: number;
  secretIdTtl: number;
  secretIdNumUses: number;
  secretIds: Map<string, AppRoleSecretId>;
}

export interface DatabaseRole {
  name: string;
  defaultTtl: number;
  maxTtl: number;
}
export interface DatabaseUser {
  username: string;
  role: string;
  valid: boolean;
  leaseId: string;
}
export type AwsCredentialType = 'iam_user' | 'assumed_role' | 'federation_token' | 'session_token';
export interface AwsRole {
  name: string;
  credentialType: AwsCredentialType;
  defaultTtl: number;
}
export interface AwsKey {
  accessKey: string;
  role: string;
  valid: boolean;
  leaseId: string;
}

/** Per-namespace backends (auth and secret mounts live in a namespace). */
export interface Space {
  name: string;
  /** Suffix Vault appends to lease ids and accessors outside the root namespace. */
  nsId: string;
  /** AppRole roles keyed `<mount>/<role name>`. */
  approles: Map<string, AppRoleEntry>;
  approleMounts: Set<string>;
  dbRoles: Map<string, DatabaseRole>;
  awsRoles: Map<string, AwsRole>;
  /** KV version 1 mounted at `secret/`: full path → data. */
  kv: Map<string, Record<string, unknown>>;
}

/**
 * The emulator's whole world. Tokens and leases are global tables tagged with
 * their namespace; expiry is evaluated lazily against `now()` (real time plus
 * a test-controlled offset), before every request and every inspection.
 */
export class VaultState {
  sealed = false;
  clockOffsetMs = 0;
  readonly tokens = new Map<string, TokenEntry>();
  readonly accessors = new Map<string, string>();
  readonly leases = new Map<string, LeaseEntry>();
  readonly dbUsers = new Map<string, DatabaseUser>();
  readonly awsKeys = new Map<string, AwsKey>();
  /** ACL policies: name → path patterns (exact, or a prefix ending in `*`). `root` allows everything. */
  readonly policies = new Map<string, string[]>();
  readonly spaces = new Map<string, Space>();
  readonly clusterId = uuid();

  constructor() {
    this.spaces.set('', newSpace('', ''));
    // Vault's built-in default policy, reduced to the paths a client here can reach.
    this.policies.set('default', [
      'auth/token/lookup-self',
      'auth/token/renew-self',
      'auth/token/revoke-self',
      'sys/leases/renew',
      'sys/renew',
      'sys/leases/lookup',
      'cubbyhole/*',
    ]);
  }

  now(): number {
    return Date.now() + this.clockOffsetMs;
  }

  space(ns: string): Space {
    const s = this.spaces.get(ns);
    if (!s) throw new Error(`emulator: unknown namespace "${ns}"`);
    return s;
  }

  addNamespace(ns: string): void {
    if (!this.spaces.has(ns)) this.spaces.set(ns, newSpace(ns, base62(5)));
  }

  /** Revokes every token and lease whose time has passed (and everything hanging off them). */
  sweep(): void {
    const now = this.now();
    for (const t of [...this.tokens.values()]) if (t.expireAt !== null && t.expireAt <= now) this.revokeToken(t.id);
    for (const l of [...this.leases.values()]) if (l.expireAt <= now) this.revokeLease(l.id);
    for (const space of this.spaces.values()) {
      for (const role of space.approles.values()) {
        for (const [id, s] of role.secretIds) if (s.expireAt !== null && s.expireAt <= now) role.secretIds.delete(id);
      }
    }
  }

  /** Mints a token in `namespace`; ids look like Vault 1.10+ service tokens. */
  mintToken(fields: Omit<TokenEntry, 'id' | 'accessor' | 'creationTime' | 'lastRenewal'>): TokenEntry {
    const space = this.space(fields.namespace);
    const id = space.name ? `hvs.CAES${base62(60)}` : `hvs.${base62(24)}`;
    const accessor = space.nsId ? `${base62(24)}.${space.nsId}` : base62(24);
    const entry: TokenEntry = { ...fields, id, accessor, creationTime: this.now(), lastRenewal: null };
    this.tokens.set(id, entry);
    this.accessors.set(accessor, id);
    return entry;
  }

  /**
   * Revokes a token, its child tokens (recursively) and every lease created
   * with any of them — Vault's revoke-tree semantics.
   */
  revokeToken(id: string): void {
    const t = this.tokens.get(id);
    if (!t) return;
    this.tokens.delete(id);
    this.accessors.delete(t.accessor);
    for (const child of [...this.tokens.values()]) if (child.parent === id) this.revokeToken(child.id);
    for (const lease of [...this.leases.values()]) if (lease.tokenId === id) this.revokeLease(lease.id);
  }

  revokeLease(id: string): void {
    const l = this.leases.get(id);
    if (!l) return;
    this.leases.delete(id);
    l.onRevoke();
  }

  /** Creates a secret lease `<path>/<24 base62>[.<nsId>]` owned by `tokenId`. */
  addLease(ns: string, path: string, tokenId: string, ttl: number, maxTtl: number, renewable: boolean, onRevoke: () => void): LeaseEntry {
    const space = this.space(ns);
    const now = this.now();
    const id = `${path}/${base62(24)}${space.nsId ? `.${space.nsId}` : ''}`;
    const lease: LeaseEntry = {
      id,
      namespace: ns,
      path,
      tokenId,
      issueTime: now,
      expireAt: now + ttl * 1000,
      renewable,
      maxExpireAt: now + Math.max(ttl, maxTtl) * 1000,
      lastRenewal: null,
      onRevoke,
    };
    this.leases.set(id, lease);
    return lease;
  }
}

function newSpace(name: string, nsId: string): Space {
  return { name, nsId, approles: new Map(), approleMounts: new Set(['approle']), dbRoles: new Map(), awsRoles: new Map(), kv: new Map() };
}
