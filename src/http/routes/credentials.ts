import { Router } from 'express';
import { publicApproval } from '../../approvals/approval-service.ts';
import { z } from 'zod';
import type { Services } from '../services.ts';
import { identityOf, validBody, validParam } from '../middleware.ts';
import { sendJson } from '../send-json.ts';
import { approvalDecisionSchema, credentialRequestSchema, leaseIdSchema } from '../schemas.ts';
import { publicLease } from '../../tasks/task-service.ts';

const approvalIdSchema = z.string().regex(/^[a-f0-9]{32}$/, 'must be 32 lowercase hex characters');

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
    const leaseId = validParam(leaseIdSchema, req.params.leaseId, 'leaseId');
    const { lease, taskStatus } = await s.leases.get(identityOf(res), leaseId);
    res.json(publicLease(lease, taskStatus));
  });
  r.delete('/v1/leases/:leaseId', async (req, res) => {
    const leaseId = validParam(leaseIdSchema, req.params.leaseId, 'leaseId');
    res.status(202).json(await s.leases.revoke(identityOf(res), leaseId));
  });
  r.get('/v1/approvals/:approvalId', async (req, res) => {
    const id = validParam(approvalIdSchema, req.params.approvalId, 'approvalId');
    res.json(publicApproval(await s.approvals.get(identityOf(res), id)));
  });
  r.post('/v1/approvals/:approvalId', async (req, res) => {
    const id = validParam(approvalIdSchema, req.params.approvalId, 'approvalId');
    const body = validBody(approvalDecisionSchema, req.body);
    res.json(publicApproval(await s.approvals.decide(identityOf(res), id, body.decision, body.reason)));
  });
  return r;
}
