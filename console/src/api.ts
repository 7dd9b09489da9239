/**
 * Calls to the broker from the page. Everything goes to /console/api with the
 * session cookie (HttpOnly: this code never sees it); state-changing calls add
 * the header a cross-site form cannot send. A 401 anywhere means the session
 * ended, and the app shows the sign-in page.
 */

export const CSRF_HEADER = 'x-jit-console';

/** An RFC 9457 problem from the broker, or a network failure (status 0). */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, detail: string) {
    super(detail);
    this.status = status;
    this.code = code;
  }
}

/** Fires `signed-out` when the broker says the session is gone. */
export const sessionEvents = new EventTarget();

export async function api<T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (method !== 'GET') headers[CSRF_HEADER] = '1';
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(`/console/api${path}`, {
      method,
      headers,
      credentials: 'same-origin',
      cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, 'network', 'The broker could not be reached.');
  }
  if (res.status === 204) return undefined as T;
  const data = (await res.json().catch(() => undefined)) as Record<string, unknown> | undefined;
  if (!res.ok) {
    if (res.status === 401) sessionEvents.dispatchEvent(new Event('signed-out'));
    const code = typeof data?.code === 'string' ? data.code : `http_${res.status}`;
    const detail = typeof data?.detail === 'string' ? data.detail : res.statusText;
    throw new ApiError(res.status, code, detail);
  }
  return data as T;
}

/** Path segment encoding for ids and identities (an identity holds `/` and `:`). */
export const seg = (s: string) => encodeURIComponent(s);

export interface Session {
  signedIn: true;
  identity: string;
  issuer: string;
  subject: string;
  name: string;
  admin: boolean;
  approver: boolean;
  expiresAt: string;
}

export interface Grant {
  role: string;
  scopes: string[];
  maxTtlSeconds: number;
}

export interface Lease {
  leaseId: string;
  taskId: string;
  role: string;
  provider: string;
  agent: string;
  scopes: string[];
  status: string;
  issuedAt: string;
  expiresAt: string;
  revocable: boolean;
  revokedAt?: string;
  reason?: string;
}

export interface Task {
  taskId: string;
  agent: string;
  tenant: string;
  purpose: string;
  status: 'open' | 'completed' | 'expired';
  expiresAt: string;
  grants: Grant[];
  labels?: Record<string, string>;
  parentTaskId?: string;
  depth?: number;
  endedAt?: string;
  leases?: Lease[];
  /** More leases than `leases` holds: the cursor for GET /v1/tasks/{id}/leases. */
  leasesNextCursor?: string | null;
}

export interface Page<T> {
  items: T[];
  nextCursor: string | null;
}

export interface Approval {
  approvalId: string;
  taskId: string;
  role: string;
  scopes: string[];
  ttlSeconds?: number;
  /** What approving gives: at most what a credential issued under it lives (absent from older brokers). */
  issuedTtlSeconds?: number;
  agent: string;
  status: string;
  /** ISO 8601 in lists; epoch ms from GET /v1/approvals/{id}. */
  requestedAt: string | number;
  /** The task's purpose, if the broker includes it (approvers may not read the task itself). */
  purpose?: string;
  decidedBy?: string;
  reason?: string;
}

/** A node of a task's sub-task tree (GET /v1/tasks/{id}/evidence). */
export interface TreeNode {
  taskId: string;
  agent: string;
  status?: string;
  purpose?: string;
  delegators?: string[];
  children?: TreeNode[];
}

export interface AuditRecord {
  seq: number;
  time: string;
  actor: string;
  action: string;
  decision: string;
  taskId?: string;
  role?: string;
  leaseId?: string;
  reason?: string;
  hash: string;
}

export interface Evidence {
  task: Task;
  tree: TreeNode | TreeNode[];
  /** The next part of a tree over ~2 MB of task records (`?treeCursor=`); null when `tree` is the rest. */
  treeNextCursor?: string | null;
  leases: Lease[];
  audit: Page<AuditRecord>;
  chain: 'intact' | 'broken';
}

export interface Quarantine {
  pattern: string;
  reason: string;
  by: string;
  at: string;
}

export interface MetricsPoint {
  t: string;
  issuedPerMinute: number;
  revokedPerMinute: number;
  revokeFailedPerMinute: number;
  lagP50: number | null;
  lagP95: number | null;
}
