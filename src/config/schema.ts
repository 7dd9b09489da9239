import ipaddr from 'ipaddr.js';
import { z } from 'zod';
import { identityPatternSchema, roleNameSchema, secretSourceSchema } from './common.ts';
import { jwtRoleSchema, jwtSettingsSchema } from '../providers/jwt/config.ts';
import { awsRoleSchema, awsSettingsSchema } from '../providers/aws/config.ts';
import { vaultRoleSchema, vaultSettingsSchema } from '../providers/vault/config.ts';

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

export const trustSchema = z
  .strictObject({
    name: z
      .string()
      .min(1)
      .max(64)
      .regex(/^[A-Za-z0-9._-]+$/),
    kind: z.enum(['spiffe', 'oidc']),
    trustDomain: trustDomain.optional(),
    issuer: z.string().min(1).max(2048).optional(),
    audiences: z.array(z.string().min(1)).min(1),
    jwks: jwksSchema,
  })
  .superRefine((t, ctx) => {
    if (t.kind === 'spiffe' && !t.trustDomain) ctx.addIssue({ code: 'custom', path: ['trustDomain'], message: 'required for kind spiffe' });
    if (t.kind === 'spiffe' && t.issuer) ctx.addIssue({ code: 'custom', path: ['issuer'], message: 'only for kind oidc' });
    if (t.kind === 'oidc' && !t.issuer) ctx.addIssue({ code: 'custom', path: ['issuer'], message: 'required for kind oidc' });
    if (t.kind === 'oidc' && t.trustDomain) ctx.addIssue({ code: 'custom', path: ['trustDomain'], message: 'only for kind spiffe' });
  });
export type TrustConfig = z.infer<typeof trustSchema>;

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

export const roleSchema = z.discriminatedUnion('provider', [jwtRoleSchema, awsRoleSchema, vaultRoleSchema]);
export type RoleConfig = z.infer<typeof roleSchema>;

export const configSchema = z
  .strictObject({
    server: z.strictObject({
      port: z.int().min(0).max(65_535).default(8080),
      host: z.string().min(1).default('127.0.0.1'),
      publicUrl: z.url().transform((u) => u.replace(/\/+$/, '')),
      bodyLimitBytes: z.int().min(1024).max(1_048_576).default(65_536),
      /** How long to wait for in-flight requests on shutdown. */
      shutdownGraceMs: z.int().min(0).max(60_000).default(10_000),
      /** Rate limits (contract sections 2 and 3); see src/http/rate-limit.ts. */
      rateLimit: rateLimitSchema,
    }),
    redis: z.strictObject({
      url: z.string().regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL'),
      prefix: z
        .string()
        .min(1)
        .max(64)
        .regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, "_" and "-" only')
        .default('jit'),
    }),
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
    orchestrators: z.array(identityPatternSchema).default([]),
    admins: z.array(identityPatternSchema).default([]),
    approvers: z.array(identityPatternSchema).default([]),
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
      })
      .default({ maxTtlSeconds: 86_400, maxDelegationDepth: 3, maxGrants: 20 }),
    roles: z.record(roleNameSchema, roleSchema).refine((r) => Object.keys(r).length > 0, { message: 'at least one role is required' }),
    providers: z
      .strictObject({
        jwt: jwtSettingsSchema,
        aws: awsSettingsSchema.optional(),
        vault: vaultSettingsSchema.optional(),
      })
      .default({ jwt: { alg: 'ES256', retireGraceSeconds: 60, publishLeadSeconds: 5 } }),
    revocation: z
      .strictObject({
        /** Attempts before a lease is shown as revoke_failed (it is still retried by the reconciler). */
        attempts: z.int().min(1).max(100).default(8),
        backoffMs: z.int().min(10).max(60_000).default(500),
        reconcileIntervalMs: z.int().min(1000).max(3_600_000).default(30_000),
        concurrency: z.int().min(1).max(256).default(16),
        /** A job whose worker died is handed to another worker once its lock (this long) lapses. */
        lockMs: z.int().min(500).max(600_000).default(30_000),
        /** How often workers look for such stalled jobs. */
        stalledCheckMs: z.int().min(500).max(600_000).default(30_000),
        /** How often due leases and overdue tasks are turned into jobs. */
        sweepMs: z.int().min(10).max(60_000).default(100),
      })
      .default({
        attempts: 8,
        backoffMs: 500,
        reconcileIntervalMs: 30_000,
        concurrency: 16,
        lockMs: 30_000,
        stalledCheckMs: 30_000,
        sweepMs: 100,
      }),
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
      })
      .default({ schedule: {}, switchGraceMs: 2000 }),
  })
  .superRefine((c, ctx) => {
    const names = new Set<string>();
    c.trust.forEach((t, i) => {
      if (names.has(t.name)) ctx.addIssue({ code: 'custom', path: ['trust', i, 'name'], message: `duplicate trust name "${t.name}"` });
      names.add(t.name);
    });
    for (const [name, role] of Object.entries(c.roles)) {
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
