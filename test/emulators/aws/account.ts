import { randomBytes } from 'node:crypto';
import { accessDenied, invalidClientTokenId, AwsError } from './errors.ts';
import { parsePolicy, statementMatches, type PolicyDocument, type RequestContext } from './policy.ts';
import { isoSeconds } from './xml.ts';

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** An AWS-looking identifier: a 4-letter prefix and upper-case base32 (AKIA…, ASIA…, AROA…, AIDA…). */
export function awsId(prefix: string, length: number): string {
  return prefix + [...randomBytes(length)].map((b) => BASE32[b % 32]).join('');
}

export interface AccessKey {
  accessKeyId: string;
  secretAccessKey: string;
  userName: string;
  status: 'Active' | 'Inactive';
  createDate: number;
  /** Eventual consistency: the key answers InvalidClientTokenId for this many more requests. */
  invisibleFor: number;
}

export interface User {
  userName: string;
  userId: string;
  arn: string;
}

export interface Role {
  roleName: string;
  roleId: string;
  arn: string;
  path: string;
  maxSessionDuration: number;
  /** Principal ARNs allowed to assume the role; undefined = any user of the account. */
  trust: string[] | undefined;
  /** When set, AssumeRole must carry exactly this ExternalId. */
  externalId: string | undefined;
  createDate: number;
  inlinePolicies: Map<string, string>;
}

export interface Session {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  role: Role;
  sessionName: string;
  issuedAt: number;
  expiresAt: number;
  policy: PolicyDocument | undefined;
  policyText: string | undefined;
  tags: { Key: string; Value: string }[];
  transitiveTagKeys: string[];
  sourceIdentity: string | undefined;
  externalId: string | undefined;
  /** ARN of whoever called AssumeRole. */
  issuedTo: string;
}

/** Who signed a request. */
export type Principal = { kind: 'user'; user: User; key: AccessKey } | { kind: 'session'; session: Session };

/** Outcome of IAM policy evaluation for a session. */
export type Decision = 'allow' | 'implicit-deny' | 'explicit-deny';

/**
 * The emulated account: users with access keys, roles with inline policies,
 * and the STS sessions issued for them. Time comes from `clock` so tests can
 * let sessions expire without waiting.
 */
export class Account {
  readonly accountId: string;
  readonly clock: () => number;
  readonly users = new Map<string, User>();
  readonly keys = new Map<string, AccessKey>();
  readonly roles = new Map<string, Role>();
  readonly sessions = new Map<string, Session>();

  constructor(accountId: string, clock: () => number) {
    this.accountId = accountId;
    this.clock = clock;
  }

  createUser(userName: string): User {
    if (this.users.has(userName)) throw new AwsError('EntityAlreadyExists', 409, `User with name ${userName} already exists.`);
    const user = { userName, userId: awsId('AIDA', 17), arn: `arn:aws:iam::${this.accountId}:user/${userName}` };
    this.users.set(userName, user);
    return user;
  }

  createAccessKey(userName: string, invisibleFor = 0): AccessKey {
    const owned = [...this.keys.values()].filter((k) => k.userName === userName);
    if (owned.length >= 2) throw new AwsError('LimitExceeded', 409, 'Cannot exceed quota for AccessKeysPerUser: 2');
    const key: AccessKey = {
      accessKeyId: awsId('AKIA', 16),
      secretAccessKey: randomBytes(30).toString('base64'),
      userName,
      status: 'Active',
      createDate: this.clock(),
      invisibleFor,
    };
    this.keys.set(key.accessKeyId, key);
    return key;
  }

  createRole(roleName: string, opts: { maxSessionDuration?: number; trust?: string[]; externalId?: string; path?: string } = {}): Role {
    if (this.roles.has(roleName)) throw new AwsError('EntityAlreadyExists', 409, `Role with name ${roleName} already exists.`);
    const path = opts.path ?? '/';
    const role: Role = {
      roleName,
      roleId: awsId('AROA', 17),
      arn: `arn:aws:iam::${this.accountId}:role${path}${roleName}`,
      path,
      maxSessionDuration: opts.maxSessionDuration ?? 3600,
      trust: opts.trust,
      externalId: opts.externalId,
      createDate: this.clock(),
      inlinePolicies: new Map(),
    };
    this.roles.set(roleName, role);
    return role;
  }

  role(roleName: string): Role {
    const role = this.roles.get(roleName);
    if (!role) throw new AwsError('NoSuchEntity', 404, `The role with name ${roleName} cannot be found.`);
    return role;
  }

  /** Resolves the signer of a request from its access key id and security token. */
  principal(accessKeyId: string, securityToken: string | undefined): { principal: Principal; secret: string } {
    const key = this.keys.get(accessKeyId);
    if (key) {
      if (securityToken !== undefined || key.status !== 'Active') throw invalidClientTokenId();
      if (key.invisibleFor > 0) {
        key.invisibleFor--;
        throw invalidClientTokenId();
      }
      return { principal: { kind: 'user', user: this.users.get(key.userName)!, key }, secret: key.secretAccessKey };
    }
    const session = this.sessions.get(accessKeyId);
    if (!session || securityToken !== session.sessionToken) throw invalidClientTokenId();
    return { principal: { kind: 'session', session }, secret: session.secretAccessKey };
  }

  /** Called after the signature checked out: an expired session is refused the way STS does. */
  checkNotExpired(principal: Principal): void {
    if (principal.kind === 'session' && this.clock() >= principal.session.expiresAt) {
      throw new AwsError('ExpiredToken', 400, 'The security token included in the request is expired');
    }
  }

  /** ARN the principal acts as (what GetCallerIdentity reports). */
  arnOf(p: Principal): string {
    return p.kind === 'user'
      ? p.user.arn
      : `arn:aws:sts::${this.accountId}:assumed-role/${p.session.role.roleName}/${p.session.sessionName}`;
  }

  userIdOf(p: Principal): string {
    return p.kind === 'user' ? p.user.userId : `${p.session.role.roleId}:${p.session.sessionName}`;
  }

  /**
   * Evaluates a request made with session credentials: any matching Deny in
   * the role's inline policies or the session policy wins; otherwise the
   * session policy (when present) must allow it. The role's own permissions
   * are taken as allow-all: the emulator models revocation and scoping down,
   * not the role's permission set.
   */
  evaluate(session: Session, action: string, resource: string): Decision {
    const ctx: RequestContext = {
      action,
      resource,
      keys: {
        'aws:userid': `${session.role.roleId}:${session.sessionName}`,
        'aws:tokenissuetime': isoSeconds(session.issuedAt),
        // The request's time to the millisecond (the strict reading): truncated to the second, a bound that is
        // not a whole second (DateLessThan 10:00:00.500Z) would still hold at 10:00:00.700.
        'aws:currenttime': new Date(this.clock()).toISOString(),
        ...(session.sourceIdentity ? { 'aws:sourceidentity': session.sourceIdentity } : {}),
        ...Object.fromEntries(session.tags.map((t) => [`aws:principaltag/${t.Key.toLowerCase()}`, t.Value])),
      },
    };
    const identity = [...session.role.inlinePolicies.values()].map((text) => parsePolicy(text));
    const all = [...identity, ...(session.policy ? [session.policy] : [])];
    if (all.some((p) => p.Statement.some((s) => s.Effect === 'Deny' && statementMatches(s, ctx)))) return 'explicit-deny';
    if (session.policy && !session.policy.Statement.some((s) => s.Effect === 'Allow' && statementMatches(s, ctx))) return 'implicit-deny';
    return 'allow';
  }

  /** Throws AccessDenied unless the principal may perform the action (users are the broker's admins). */
  authorize(p: Principal, action: string, resource: string): void {
    if (p.kind === 'user') return;
    const decision = this.evaluate(p.session, action, resource);
    if (decision === 'allow') return;
    const why =
      decision === 'explicit-deny' ? 'with an explicit deny in an identity-based policy' : 'because no session policy allows the action';
    throw accessDenied(`User: ${this.arnOf(p)} is not authorized to perform: ${action} on resource: ${resource} ${why}`);
  }
}
