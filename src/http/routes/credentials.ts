import { Router } from 'express';
import { publicApproval } from '../../approvals/approval-service.ts';
import type { Services } from '../services.ts';
import { identityOf, validBody } from '../middleware.ts';
import { sendJson } from '../send-json.ts';
import { approvalDecisionSchema, credentialRequestSchema, leaseIdSchema } from '../schemas.ts';
import { publicLease } from '../../tasks/task-service.ts';
import { notFound } from '../../errors.ts';

/**
 * A lease or approval id from the path, or undefined when it is not of the form the broker issues. Such ids
 * are opaque to clients (the contract never says what one looks like), so one of another form is an unknown
 * lease or approval (404), not malformed input (400); it never reaches a Redis key.
 */
function issuedId(value: unknown): string | undefined {
  return leaseIdSchema.safeParse(value).success ? (value as string) : undefined;
}
const noLease = () => notFound('lease_not_found', 'No such lease.');
const noApproval = () => notFound('approval_not_found', 'No such approval.');

/** Credentials, leases and approvals (contract section 3). */
export function credentialRoutes(s: Services): Router {
  const r = Router();
  r.post('/v1/credentials', async (req, res) => {
    const body = validBody(credentialRequestSchema, req.body);
    const out = await s.credentials.request(identityOf(res), body);
    res.setHeader('Cache-Control', 'no-store');
    sendJson(res, 'approvalId' in out ? 202 : 201, out);
  });
  r.get('/v1/leases/:leaseId', async (req, res) => {
    const leaseId = issuedId(req.params.leaseId);
    if (leaseId === undefined) throw noLease();
    const { lease, taskStatus } = await s.leases.get(identityOf(res), leaseId);
    res.json(publicLease(lease, taskStatus));
  });
  r.delete('/v1/leases/:leaseId', async (req, res) => {
    const leaseId = issuedId(req.params.leaseId);
    if (leaseId === undefined) throw noLease();
    res.status(202).json(await s.leases.revoke(identityOf(res), leaseId));
  });
  r.get('/v1/approvals/:approvalId', async (req, res) => {
    const id = issuedId(req.params.approvalId);
    if (id === undefined) throw noApproval();
    res.json(publicApproval(await s.approvals.get(identityOf(res), id)));
  });
  r.post('/v1/approvals/:approvalId', async (req, res) => {
    // Not 404 at once: a caller outside `approvers` is refused (403) whatever the id, as for an issued one.
    const id = issuedId(req.params.approvalId);
    const body = validBody(approvalDecisionSchema, req.body);
    res.json(publicApproval(await s.approvals.decide(identityOf(res), id, body.decision, body.reason)));
  });
  return r;
}
