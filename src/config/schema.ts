import ipaddr from 'ipaddr.js';
import { z } from 'zod';
import { spiffeProblem } from '../identity/spiffe-id.ts';
import { identityPatternSchema, roleNameSchema, secretSourceSchema } from './common.ts';
import { redisConfigSchema } from './redis.ts';
import type { ZodType } from 'zod';
import { jwtSettingsSchema, type JwtSettings } from '../providers/jwt/config.ts';
import { PROVIDERS, type RoleConfig } from '../providers/index.ts';
import { RESERVED_NAMES } from './roles.ts';
import { checkConsoleConfig, consoleSchema } from '../console/config.ts';
import { DEFAULT_METRICS_REFRESH_MS } from '../metrics.ts';
import { closest } from './suggest.ts';

/** What `rotation.schedule` may name: the targets `POST /v1/admin/rotate` takes. */
const ROTATION_TARGETS = ['signing-key', 'aws', 'vault'] as const;

const jwksSchema = z.union([
  z.strictObject({ file: z.string().min(1) }),
  z.strictObject({ uri: z.url() }),
  z.strictObject({ keys: z.array(z.record(z.string(), z.unknown())).min(1) }),
]);

const trustDomain = z
  .string()
  .min(1)
  .max(255)
  .regex(/^[a-z0-9._-]+$/, 'a trust domain is lowercase letters, digits, ".", "-" and "_"');

/**
 * Who may orchestrate, administer or approve. A SPIFFE pattern that is not canonical (`SPIFFE://...`, an
 * uppercase trust domain, a trailing slash) matches no workload, since only canonical IDs authenticate: such a
 * typo loaded silently and left the role to nobody. It stops startup instead, with the reason.
 */
const rolePatternSchema = identityPatternSchema.superRefine((p, ctx) => {
  const problem = spiffeProblem(p);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

export const trustSchema = z
  .strictObject({
    name: z
      .string()
      .min(1)
      .max(64)
      .regex(/^[A-Za-z0-9._-]+$/),
    kind: z.enum(['spiffe', 'oidc']),
    trustDomain: trustDomain.optional(),
    /**
     * oidc: the exact `iss` (required). The contract's example sets it on a spiffe entry too ("oidc
     * only"), so there it is accepted and ignored (the broker logs a warning at startup): a JWT-SVID's
     * trust entry is chosen by its SPIFFE ID's trust domain.
     */
    issuer: z.string().min(1).max(2048).optional(),
    audiences: z.array(z.string().min(1)).min(1),
    jwks: jwksSchema,
    /**
     * Each token is accepted once: it must carry a `jti`, remembered in Redis
     * until the token expires. Off by default, because JWT-SVIDs, Kubernetes
     * projected tokens and CI OIDC tokens are bearer tokens reused for their
     * whole lifetime; turn it on for an issuer that mints one token per call.
     */
    singleUse: z.boolean().default(false),
  })
  .superRefine((t, ctx) => {
    if (t.kind === 'spiffe' && !t.trustDomain) ctx.addIssue({ code: 'custom', path: ['trustDomain'], message: 'required for kind spiffe' });
    if (t.kind === 'oidc' && !t.issuer) ctx.addIssue({ code: 'custom', path: ['issuer'], message: 'required for kind oidc' });
    if (t.kind === 'oidc' && t.trustDomain) ctx.addIssue({ code: 'custom', path: ['trustDomain'], message: 'only for kind spiffe' });
  });
export type TrustConfig = z.infer<typeof trustSchema>;

export type { RoleConfig } from '../providers/index.ts';
/** A role: the shape its provider's descriptor gives (src/providers/index.ts lists them all). */
export const roleSchema = z.discriminatedUnion('provider', PROVIDERS.map((d) => d.roleSchema) as never) as unknown as ZodType<RoleConfig>;

/** `providers.<kind>` for every provider with connection settings; jwt (the built-in signer) always has defaults. */
const providerSettings = Object.fromEntries(
  PROVIDERS.flatMap((d) => (d.kind !== 'jwt' && d.settingsSchema ? [[d.kind, d.settingsSchema.optional()]] : [])),
) as Record<string, ZodType<unknown>>;
/** The most `tasks.maxSubtasks` may be (see there). */
export const MAX_SUBTASKS = 1000;

/** A budget: `perSecond` sustained, `burst` at once (default twice perSecond); perSecond 0 turns it off. */
function budget(perSecond: number) {
  return z
    .strictObject({
      perSecond: z.int().min(0).max(1_000_000).default(perSecond),
      burst: z.int().min(1).max(10_000_000).optional(),
    })
    .transform((b) => ({ perSecond: b.perSecond, burst: b.burst ?? Math.max(1, 2 * b.perSecond) }))
    .refine((b) => b.perSecond === 0 || b.burst >= b.perSecond, { message: 'burst must be at least perSecond', path: ['burst'] });
}

/** Express `trust proxy` names, or an address or CIDR. */
const proxyEntry = z
  .string()
  .min(1)
  .refine((v) => ['loopback', 'linklocal', 'uniquelocal'].includes(v) || ipaddr.isValid(v) || ipaddr.isValidCIDR(v), {
    message: 'must be loopback, linklocal, uniquelocal, an IP address or a CIDR range',
  });

const rateLimitSchema = z
  .strictObject({
    ...budget(50).in.shape,
    /** Per caller identity on /v1/introspect, instead of the identity budget. */
    introspect: budget(1000).prefault({}),
    /** Authentication failures per client address (IPv6: per /64); over it, refused before any signature check. */
    unauthenticated: budget(20).prefault({}),
    /** Reads of lists, tasks, evidence and the audit log one caller may have running at once per instance (0 = no bound). */
    concurrentReads: z.int().min(0).max(1000).default(16),
    /**
     * Which proxies may name the client in X-Forwarded-For (Express `trust proxy`): false (the socket
     * address is the client), a hop count, or addresses/CIDRs/loopback|linklocal|uniquelocal.
     */
    trustProxy: z.union([z.boolean(), z.int().min(0).max(32), proxyEntry, z.array(proxyEntry).min(1)]).default(false),
  })
  .transform(({ perSecond, burst, ...rest }) => ({ perSecond, burst: burst ?? Math.max(1, 2 * perSecond), ...rest }))
  .refine((b) => b.perSecond === 0 || b.burst >= b.perSecond, { message: 'burst must be at least perSecond', path: ['burst'] })
  .prefault({});
export type RateLimitConfig = z.infer<typeof rateLimitSchema>;

export const configSchema = z
  .strictObject({
    server: z.strictObject({
      port: z.int().min(0).max(65_535).default(8080),
      host: z.string().min(1).default('127.0.0.1'),
      publicUrl: z.url().transform((u) => u.replace(/\/+$/, '')),
      bodyLimitBytes: z.int().min(1024).max(1_048_576).default(65_536),
      /**
       * How long a client may take to send a request's headers, and its whole request (headers and body), before
       * the connection is closed. Node's defaults (60 s and 300 s) let a slow client hold a socket for minutes at the
       * cost of one rate-limit point. Only the receipt of the request: an answer that takes longer (an upstream call)
       * is not cut off.
       */
      headersTimeoutSeconds: z.int().min(1).max(300).default(10),
      requestTimeoutSeconds: z.int().min(1).max(3600).default(30),
      /** How long to wait for in-flight requests on shutdown. */
      shutdownGraceMs: z.int().min(0).max(60_000).default(10_000),
      /** Rate limits (contract sections 2 and 3); see src/http/rate-limit.ts. */
      rateLimit: rateLimitSchema,
      /**
       * How long the Redis-backed gauges of /metrics (active leases, seal ages, audit outboxes) reuse one
       * reading: /metrics is unauthenticated, and a reading is several commands per bucket (src/metrics.ts).
       */
      metricsRefreshSeconds: z
        .int()
        .min(1)
        .max(300)
        .default(DEFAULT_METRICS_REFRESH_MS / 1000),
    }),
    redis: redisConfigSchema,
    identity: z
      .strictObject({
        clockSkewSeconds: z.int().min(0).max(300).default(30),
        /** Identity tokens older than this (by `iat`) are refused even if `exp` is later. */
        maxTokenLifetimeSeconds: z.int().min(60).max(86_400).default(86_400),
        jwksCacheSeconds: z.int().min(1).max(86_400).default(300),
        jwksRefetchCooldownSeconds: z.int().min(0).max(3600).default(30),
      })
      .default({ clockSkewSeconds: 30, maxTokenLifetimeSeconds: 86_400, jwksCacheSeconds: 300, jwksRefetchCooldownSeconds: 30 }),
    trust: z.array(trustSchema).min(1),
    orchestrators: z.array(rolePatternSchema).default([]),
    admins: z.array(rolePatternSchema).default([]),
    approvers: z.array(rolePatternSchema).default([]),
    policies: z.string().min(1),
    tasks: z
      .strictObject({
        maxTtlSeconds: z
          .int()
          .min(1)
          .max(7 * 86_400)
          .default(86_400),
        maxDelegationDepth: z.int().min(0).max(10).default(3),
        maxGrants: z.int().min(1).max(100).default(20),
        /**
         * Sub-tasks a task tree may ever have, ended ones included: 1 to MAX_SUBTASKS, no "0 = no bound".
         * The evidence shows the whole tree and merges every task's audit index in Redis on each page
         * (task-audit-page.lua): Redis time grows with the tree (~2 ms a page at 51 tasks, ~15-25 ms at
         * 1,001, ~100-170 ms at 10,001), so a larger tree is one whose evidence cannot be served.
         */
        maxSubtasks: z
          .int()
          .min(1, 'must be 1 to 1000: the evidence of a task shows its whole tree, so a tree is bounded')
          .max(MAX_SUBTASKS, 'must be 1 to 1000: the evidence of a task shows its whole tree, so a tree is bounded')
          .default(50),
        /** Live leases one task may hold at once (0 = no bound). */
        maxLeases: z.int().min(0).max(10_000_000).default(1000),
        /**
         * Leases one task may ever have, ended ones included (0 = no bound): ended records are kept
         * for the retention period, so issuing and revoking in a loop would otherwise grow Redis without limit.
         */
        maxLeasesTotal: z.int().min(0).max(100_000_000).default(10_000),
        /**
         * Top-level tasks one opener (an orchestrator identity) may have open at once (0 = no bound). Sub-tasks
         * are bounded per tree (maxSubtasks); without this, one orchestrator could fill Redis with open tasks
         * (up to ~34 KB each) at its rate limit.
         */
        maxOpenTasks: z.int().min(0).max(100_000_000).default(10_000),
        /** Pending approvals one task may have at once (0 = no bound). */
        maxPendingApprovals: z.int().min(0).max(100_000).default(20),
        /** How long ended tasks, leases and approvals stay readable (seconds). */
        retentionSeconds: z
          .int()
          .min(60)
          .max(365 * 86_400)
          .default(7 * 86_400),
      })
      .prefault({}),
    roles: z.record(roleNameSchema, roleSchema).refine((r) => Object.keys(r).length > 0, { message: 'at least one role is required' }),
    providers: z.strictObject({ jwt: jwtSettingsSchema, ...providerSettings }).prefault({}) as unknown as ZodType<
      { jwt: JwtSettings } & Record<string, unknown>
    >,
    revocation: z
      .strictObject({
        /**
         * First retry delay of a failed revocation; it doubles (jittered) up to maxBackoffMs.
         * Revocations are retried until the upstream confirms or the credential has expired.
         */
        backoffMs: z.int().min(10).max(60_000).default(500),
        maxBackoffMs: z.int().min(100).max(3_600_000).default(30_000),
        /** How often the reconciler reads its work lists (ended tasks with live leases, revocations in progress). */
        reconcileIntervalMs: z.int().min(100).max(3_600_000).default(30_000),
        /**
         * How often a reconcile pass walks every live lease instead (and at start): a safety net for
         * records its work lists do not name (written by a version before them). Paced, but its cost
         * grows with the live leases.
         */
        fullReconcileIntervalMs: z.int().min(1000).max(604_800_000).default(3_600_000),
        concurrency: z.int().min(1).max(256).default(16),
        /** A job whose worker died is handed to another worker once its lock (this long) lapses. */
        lockMs: z.int().min(500).max(600_000).default(10_000),
        /** How often workers look for such stalled jobs. */
        stalledCheckMs: z.int().min(200).max(600_000).default(5000),
        /** How often due leases and overdue tasks are looked for. */
        sweepMs: z.int().min(10).max(60_000).default(100),
        /** Revocation queues (each its own hash slot on a Cluster); buckets are spread over them. */
        queues: z.int().min(1).max(64).default(1),
        /** An issuance not confirmed this long after its upstream call began is treated as interrupted (default per provider). */
        orphanMs: z.int().min(1000).max(3_600_000).optional(),
      })
      .prefault({}),
    audit: z
      .strictObject({
        retention: z
          .strictObject({
            maxAgeDays: z.number().min(0).max(36_500).default(30),
            maxRecords: z.int().min(1000).max(1_000_000_000).default(10_000_000),
          })
          .prefault({}),
        /** Records leave Redis only after they were appended here (JSON lines in chain order, rotated by size). */
        export: z
          .strictObject({
            file: z.string().min(1).default('./data/audit.jsonl'),
            maxFileBytes: z
              .int()
              .min(4096)
              .default(100 * 1024 * 1024),
          })
          .prefault({}),
        /**
         * How often the records are exported and each chain head HMAC-sealed (at most 60 s). Also the most of the
         * audit trail a Redis data loss can take (what was not yet exported), and the size of each pass: 5 s at
         * 2,000 issuances/s is ~10,000 records in ~2 s, where 30 s was ~60,000 in one ~11-s burst beside requests.
         */
        sealIntervalSeconds: z.int().min(1).max(60).default(5),
        /**
         * A chain without a seal for longer than this, while records follow its last one, is a failure:
         * `jit_audit_seal_age_seconds` past it, an error in the worker's log, `audit:verify` exits 1.
         * At least three seal intervals (a dead export-lock holder costs one lock TTL, 30 s).
         */
        sealMaxAgeSeconds: z.int().min(3).max(86_400).default(180),
        /** How often retention runs (the export, then the trim). */
        retentionIntervalSeconds: z.int().min(1).max(86_400).default(60),
      })
      .prefault({}),
    /**
     * Key-encryption key for every secret the broker keeps in Redis (signing
     * keys, rotated upstream secrets): base64 of 32 random bytes, from an env
     * variable or a file. Instances sharing a Redis must share it.
     */
    secrets: z
      .strictObject({
        kek: secretSourceSchema.optional(),
      })
      .default({}),
    rotation: z
      .strictObject({
        /** Scheduled rotation periods in seconds per target (signing-key, aws, vault); absent = on demand only. */
        schedule: z.record(z.string().min(1), z.int().min(1)).default({}),
        /** After announcing a rotated upstream secret, how long to wait before the old one is retired. */
        switchGraceMs: z.int().min(0).max(60_000).default(2000),
        /**
         * How often a worker looks for a rotation that died or failed half-way (its intent left in Redis,
         * its lock free) and rotates that target again, retiring what it left upstream; 0 = never.
         */
        resumeInterruptedSeconds: z.int().min(0).max(86_400).default(60),
      })
      .default({ schedule: {}, switchGraceMs: 2000, resumeInterruptedSeconds: 60 }),
    /** The web console's sign-in provider (contract section 10); absent = no console. */
    console: consoleSchema.optional(),
  })
  .superRefine((c, ctx) => {
    checkConsoleConfig(c, (path, message) => ctx.addIssue({ code: 'custom', path, message }));
    if (c.server.headersTimeoutSeconds > c.server.requestTimeoutSeconds)
      ctx.addIssue({
        code: 'custom',
        path: ['server', 'headersTimeoutSeconds'],
        message: `must be at most server.requestTimeoutSeconds (${c.server.requestTimeoutSeconds}): the headers are part of the request`,
      });
    if (c.audit.sealMaxAgeSeconds < 3 * c.audit.sealIntervalSeconds)
      ctx.addIssue({
        code: 'custom',
        path: ['audit', 'sealMaxAgeSeconds'],
        message: `must be at least 3 × audit.sealIntervalSeconds (${3 * c.audit.sealIntervalSeconds})`,
      });
    const names = new Set<string>();
    // A token's trust entry is picked by its trust domain (spiffe) or `iss` (oidc), then by its `aud`: entries of one
    // source must have disjoint audiences, or a token could be taken under either entry's name, keys and singleUse.
    const audiences = new Map<string, { name: string; audiences: string[] }[]>();
    c.trust.forEach((t, i) => {
      if (names.has(t.name)) ctx.addIssue({ code: 'custom', path: ['trust', i, 'name'], message: `duplicate trust name "${t.name}"` });
      names.add(t.name);
      const source = t.kind === 'spiffe' ? t.trustDomain : t.issuer;
      if (source === undefined) return;
      const earlier = audiences.get(`${t.kind} ${source}`) ?? [];
      for (const e of earlier) {
        const shared = t.audiences.find((a) => e.audiences.includes(a));
        if (shared !== undefined)
          ctx.addIssue({
            code: 'custom',
            path: ['trust', i, 'audiences'],
            message: `"${shared}" is also an audience of trust entry "${e.name}" for the same ${t.kind === 'spiffe' ? 'trust domain' : 'issuer'} "${source}": entries of one source need disjoint audiences`,
          });
      }
      audiences.set(`${t.kind} ${source}`, [...earlier, { name: t.name, audiences: t.audiences }]);
    });
    // A scheduled target the broker cannot rotate would only fail at each firing, in the worker's log: refuse it here.
    for (const target of Object.keys(c.rotation.schedule)) {
      const path = ['rotation', 'schedule', target];
      if (!(ROTATION_TARGETS as readonly string[]).includes(target)) {
        const near = closest(target, ROTATION_TARGETS);
        ctx.addIssue({
          code: 'custom',
          path,
          message: `unknown rotation target; one of ${ROTATION_TARGETS.join(', ')}${near ? ` (did you mean '${near}'?)` : ''}`,
        });
      } else if (target !== 'signing-key' && !c.providers[target as 'aws' | 'vault'])
        ctx.addIssue({ code: 'custom', path, message: `providers.${target} is not configured` });
    }
    for (const [name, role] of Object.entries(c.roles)) {
      if (RESERVED_NAMES.has(name)) ctx.addIssue({ code: 'custom', path: ['roles', name], message: `"${name}" cannot be a role name` });
      if (role.provider !== 'jwt' && !c.providers[role.provider]) {
        ctx.addIssue({
          code: 'custom',
          path: ['roles', name, 'provider'],
          message: `role uses provider "${role.provider}" but providers.${role.provider} is not configured`,
        });
      }
    }
  });

export type BrokerConfig = z.infer<typeof configSchema>;
