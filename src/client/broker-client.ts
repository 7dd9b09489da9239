import { CredentialCache } from './credential-cache.ts';
import { ApprovalPendingError, BrokerUnreachableError, JitError } from './errors.ts';
import { type CallOptions, Transport, plainHttpOrigin } from './http.ts';
import { tokenSource, type TokenInput } from './token-source.ts';
import type {
  Approval,
  ApprovalFilter,
  AuditFilter,
  AuditRecord,
  AuditSeals,
  CompleteTaskResult,
  CredentialRequest,
  CredentialResponse,
  Evidence,
  EvidenceParams,
  Introspection,
  IssuedCredential,
  Lease,
  OpenTaskRequest,
  Page,
  PageParams,
  PendingApproval,
  Quarantine,
  RevokeResult,
  RevokeSelector,
  Task,
  TaskDetail,
  TaskLeasesParams,
  TaskFilter,
  TokenExchangeResult,
} from './types.ts';

/** Where the broker is when nothing says otherwise (`npm start`'s default). */
export const DEFAULT_BROKER_URL = 'http://127.0.0.1:8080';

/** Options of {@link BrokerClient}; everything has a default. */
export interface BrokerClientOptions {
  /** Broker base URL; default `JIT_BROKER_URL`, else http://127.0.0.1:8080. */
  url?: string;
  /** The caller's workload JWT, or a function returning the current one; default `JIT_TOKEN`. */
  token?: TokenInput;
  /** A file holding the workload JWT, re-read on every request; default `JIT_TOKEN_FILE`. */
  tokenFile?: string;
  /** Per request; default 15000. */
  timeoutMs?: number;
  /**
   * Cached credentials are replaced this long before they expire (default 60),
   * at most a quarter of their lifetime before.
   */
  refreshMarginSeconds?: number;
  /** Environment to read the defaults from; default `process.env`. */
  env?: NodeJS.ProcessEnv;
  /** A fetch implementation (default the global one). */
  fetch?: typeof fetch;
  /** The clock the credential cache decides by (milliseconds since the epoch); for tests. */
  now?: () => number;
  /**
   * Told the broker's origin when `url` is plain http to another host (the identity token and the credentials
   * would cross the network unencrypted). Default: a Node process warning, code `JIT_PLAIN_HTTP`, once per host.
   */
  onPlainHttp?: (origin: string) => void;
}

/** Hosts already warned about by the default `onPlainHttp`: once each per process, not once per client. */
const warnedHosts = new Set<string>();
const warnPlainHttp = (origin: string) => {
  if (warnedHosts.has(origin)) return;
  warnedHosts.add(origin);
  process.emitWarning(
    `the broker URL ${origin} is plain http to another host: the identity token and the credentials cross the network unencrypted (use https)`,
    { code: 'JIT_PLAIN_HTTP' },
  );
};

/** Options for waiting on an approver. */
export interface WaitOptions {
  /** Between polls of the approval; default 2000. */
  intervalMs?: number;
  /** Give up (throwing ApprovalPendingError) after this long; default: wait until decided or the task ends. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Called once when the request turns out to wait for an approver (to tell the person at the terminal). */
  onPending?: (approvalId: string) => void;
}

const enc = encodeURIComponent;

/**
 * A typed client for the broker's HTTP API. Every call carries the caller's
 * workload identity; errors are {@link BrokerResponseError} (the broker said
 * no, or failed), {@link BrokerUnreachableError} (no answer) or
 * {@link ClientConfigError} (no identity configured).
 *
 * ```ts
 * const broker = new BrokerClient();               // JIT_BROKER_URL, JIT_TOKEN / JIT_TOKEN_FILE
 * const cred = await broker.getCredential({ taskId, role: 'tickets-api' });
 * fetch(url, { headers: { authorization: `Bearer ${cred.credentials.access_token}` } });
 * ```
 */
export class BrokerClient {
  readonly url: string;
  private readonly http: Transport;
  private readonly cache: CredentialCache;
  private readonly now: () => number;
  /** Credential requests not yet answered, or answered after close() and not yet revoked (settled, never rejected). */
  private readonly issuing = new Set<Promise<unknown>>();
  private closed = false;

  constructor(opts: BrokerClientOptions = {}) {
    const env = opts.env ?? process.env;
    this.now = opts.now ?? Date.now;
    this.http = new Transport({
      baseUrl: opts.url ?? (env.JIT_BROKER_URL || DEFAULT_BROKER_URL),
      token: tokenSource({ token: opts.token, tokenFile: opts.tokenFile, env }),
      fetch: opts.fetch,
      timeoutMs: opts.timeoutMs ?? 15_000,
      userAgent: 'jit-broker-client',
    });
    this.url = this.http.baseUrl;
    const plain = plainHttpOrigin(this.url);
    if (plain) (opts.onPlainHttp ?? warnPlainHttp)(plain);
    this.cache = new CredentialCache({ marginSeconds: opts.refreshMarginSeconds ?? 60, now: this.now });
  }

  // ---- operations (no identity needed)

  /** `GET /healthz`. */
  async health(): Promise<{ status: string }> {
    return (await this.answer<{ status: string }>('health', 'GET', '/healthz', { auth: false })).body;
  }

  /** `GET /readyz`: `ready` false (503) is an answer, not an error. */
  async ready(): Promise<{ ready: boolean; status: string; checks?: Record<string, boolean> }> {
    const a = await this.answer<{ status: string; checks?: Record<string, boolean> }>('ready', 'GET', '/readyz', {
      auth: false,
      accept: (s) => s === 200 || s === 503,
    });
    return { ready: a.status === 200, ...a.body };
  }

  /** RFC 8414 metadata. */
  async metadata(): Promise<Record<string, unknown>> {
    return (await this.answer<Record<string, unknown>>('metadata', 'GET', '/.well-known/oauth-authorization-server', { auth: false })).body;
  }

  /** The public keys minted tokens are signed with. */
  async jwks(): Promise<{ keys: Record<string, unknown>[] }> {
    return (await this.answer<{ keys: Record<string, unknown>[] }>('jwks', 'GET', '/.well-known/jwks.json', { auth: false })).body;
  }

  // ---- tasks

  /** `POST /v1/tasks` (orchestrators; a task's agent with `parentTaskId`). Repeating the same request answers the same task. */
  async openTask(req: OpenTaskRequest): Promise<Task> {
    // A sub-task's id is `<parentTaskId>~<name>` (contract section 3); without a name the broker picks one.
    const asked = req.taskId === undefined ? undefined : req.parentTaskId === undefined ? req.taskId : `${req.parentTaskId}~${req.taskId}`;
    return (await this.answer<Task>('task', 'POST', '/v1/tasks', { json: req }, asked)).body;
  }

  /** `GET /v1/tasks/{id}`: the task and its first 100 leases (`taskLeases` pages them all). */
  async getTask(taskId: string): Promise<TaskDetail> {
    return (await this.answer<TaskDetail>('task', 'GET', `/v1/tasks/${enc(taskId)}`, {}, taskId)).body;
  }

  /** `GET /v1/tasks/{id}/leases`: one page of a task's leases (with `tree`, its sub-tasks' too), in issue order. */
  async taskLeases(taskId: string, params: TaskLeasesParams = {}): Promise<Page<Lease>> {
    return (await this.answer<Page<Lease>>('page', 'GET', `/v1/tasks/${enc(taskId)}/leases`, { query: { ...params } })).body;
  }

  /** `POST /v1/tasks/{id}/complete`: every lease is revoked. Idempotent. */
  async completeTask(taskId: string): Promise<CompleteTaskResult> {
    const done = (await this.answer<CompleteTaskResult>('completed', 'POST', `/v1/tasks/${enc(taskId)}/complete`, {}, taskId)).body;
    // Its leases and its sub-tasks' (`<taskId>~...`) are revoked: none of them is handed out from the cache again.
    this.cache.forget((c) => c.taskId === taskId || c.taskId.startsWith(`${taskId}~`));
    return done;
  }

  /** `GET /v1/tasks`: one page, newest first. */
  async listTasks(filter: TaskFilter = {}): Promise<Page<Task>> {
    return (await this.answer<Page<Task>>('page', 'GET', '/v1/tasks', { query: { ...filter } })).body;
  }

  /** `GET /v1/tasks/{id}/evidence`: task, sub-tasks, leases, audit records and whether their chain is intact. */
  async taskEvidence(taskId: string, page: EvidenceParams = {}): Promise<Evidence> {
    return (await this.answer<Evidence>('evidence', 'GET', `/v1/tasks/${enc(taskId)}/evidence`, { query: { ...page } }, taskId)).body;
  }

  // ---- credentials and leases

  /** `POST /v1/credentials` as is: a credential (201), or a pending approval (202). Not cached. */
  async requestCredential(req: CredentialRequest, opts: { signal?: AbortSignal } = {}): Promise<CredentialResponse> {
    return this.guarded(() => this.ask(req, opts));
  }

  /**
   * What `issue` answers, unless the client was closed meanwhile: then the credential is revoked and
   * `client_closed` thrown. close() waits for it either way.
   */
  private guarded<T extends CredentialResponse>(issue: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(closedError());
    const answer = (async () => {
      const r = await issue();
      if (this.closed && !isPending(r)) {
        await this.revokeLease(r.leaseId).catch(() => undefined);
        throw closedError();
      }
      return r;
    })();
    const settled = answer.then(
      () => undefined,
      () => undefined,
    );
    this.issuing.add(settled);
    void settled.then(() => this.issuing.delete(settled));
    return answer;
  }

  private async ask(req: CredentialRequest, opts: { signal?: AbortSignal }): Promise<CredentialResponse> {
    const { status, body } = await this.http.call<unknown>('POST', '/v1/credentials', { json: req, signal: opts.signal });
    if (isPending(body as CredentialResponse) || isCredential(body)) return body as CredentialResponse;
    // Not the broker's API (a wrong URL, a proxy's page, a broken broker): never a credential to use. A lease it
    // names is given back, in case it is one; the caller sees the broker failed (exit 3), not a mistake of its own.
    const leaseId = (body as { leaseId?: unknown } | null)?.leaseId;
    if (typeof leaseId === 'string' && leaseId) await this.revokeLease(leaseId).catch(() => undefined);
    throw new BrokerUnreachableError(
      'bad_response',
      `POST /v1/credentials: the broker answered ${status} with something that is not a credential`,
    );
  }

  /**
   * A credential for `req`, from the cache while it has more than the refresh
   * margin left, else a new one. A role that needs approval throws
   * {@link ApprovalPendingError}, or with `waitForApproval` waits for the
   * approver and then asks again.
   */
  async getCredential<C = Record<string, unknown>>(
    req: CredentialRequest,
    opts: { waitForApproval?: boolean | WaitOptions; fresh?: boolean } = {},
  ): Promise<IssuedCredential<C>> {
    const issue = () => this.issue(req, opts.waitForApproval);
    // Also here, not only around the request: a credential answered just before close() is not handed out after it.
    return (await this.guarded(() => (opts.fresh ? issue() : this.cache.get(req, issue)))) as IssuedCredential<C>;
  }

  private async issue(req: CredentialRequest, wait: boolean | WaitOptions | undefined): Promise<IssuedCredential> {
    const first = await this.requestCredential(req);
    if (!isPending(first)) return first;
    if (!wait) throw new ApprovalPendingError(first.approvalId);
    const w = wait === true ? {} : wait;
    w.onPending?.(first.approvalId);
    await this.waitForApproval(first.approvalId, w);
    // Decided: the same request now answers 201 (approved) or 403 approval_rejected.
    const again = await this.requestCredential(req, { signal: w.signal });
    if (isPending(again)) throw new ApprovalPendingError(again.approvalId);
    return again;
  }

  /** `GET /v1/leases/{id}` (no secrets). */
  async getLease(leaseId: string): Promise<Lease> {
    return (await this.answer<Lease>('lease', 'GET', `/v1/leases/${enc(leaseId)}`, {}, leaseId)).body;
  }

  /** `DELETE /v1/leases/{id}`: revoke one credential early (the worker cuts it off upstream). */
  async revokeLease(leaseId: string): Promise<{ leaseId: string; status: string }> {
    const r = (await this.answer<{ leaseId: string; status: string }>('lease', 'DELETE', `/v1/leases/${enc(leaseId)}`, {}, leaseId)).body;
    // Given back: the next getCredential for the same request asks the broker for a new one.
    this.cache.forget((c) => c.leaseId === leaseId);
    return r;
  }

  /** Revokes every credential this client has cached (for example when the agent shuts down) and forgets them. */
  async revokeCached(): Promise<void> {
    const held = this.cache.held();
    this.cache.clear();
    await Promise.allSettled(held.map((c) => this.revokeLease(c.leaseId)));
  }

  /**
   * For a process that is ending (a signal, its input closed, a crash): gives back every credential the client
   * holds, including those still being issued, and issues no more. Credential requests already sent are waited
   * for up to `waitMs` (default 3000) and what they answer is revoked, not handed out (their callers get a
   * `JitError` `client_closed`, as does every later `getCredential`/`requestCredential`); one answered later is
   * revoked when it arrives, if the process still runs. Never throws; other calls keep working.
   */
  async close(opts: { waitMs?: number } = {}): Promise<void> {
    this.closed = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<void>((r) => {
      timer = setTimeout(r, opts.waitMs ?? 3000);
    });
    await Promise.all([this.revokeCached(), Promise.race([Promise.all(this.issuing), deadline])]);
    clearTimeout(timer);
  }

  // ---- approvals

  /** `GET /v1/approvals/{id}`. */
  async getApproval(approvalId: string): Promise<Approval> {
    // waitForApproval polls this: `{}` has no status, so it was "decided" at once and the request asked again.
    return (await this.answer<Approval>('approval', 'GET', `/v1/approvals/${enc(approvalId)}`, {}, approvalId)).body;
  }

  /** `GET /v1/approvals`: one page. */
  async listApprovals(filter: ApprovalFilter = {}): Promise<Page<Approval>> {
    return (await this.answer<Page<Approval>>('page', 'GET', '/v1/approvals', { query: { ...filter } })).body;
  }

  /** `POST /v1/approvals/{id}` with `approve` (approvers). */
  approve(approvalId: string, reason?: string): Promise<Approval> {
    return this.decide(approvalId, 'approve', reason);
  }

  /** `POST /v1/approvals/{id}` with `reject` (approvers). */
  reject(approvalId: string, reason?: string): Promise<Approval> {
    return this.decide(approvalId, 'reject', reason);
  }

  private async decide(approvalId: string, decision: 'approve' | 'reject', reason?: string): Promise<Approval> {
    const json = reason === undefined ? { decision } : { decision, reason };
    return (await this.answer<Approval>('approval', 'POST', `/v1/approvals/${enc(approvalId)}`, { json }, approvalId)).body;
  }

  /** Polls an approval until it is no longer pending; answers the decided approval. */
  async waitForApproval(approvalId: string, opts: WaitOptions = {}): Promise<Approval> {
    const interval = opts.intervalMs ?? 2000;
    // A wait of this process: monotonic, so a step of the wall clock neither ends it at once nor makes it an hour long.
    const deadline = opts.timeoutMs === undefined ? Number.POSITIVE_INFINITY : performance.now() + opts.timeoutMs;
    for (;;) {
      opts.signal?.throwIfAborted();
      const a = await this.getApproval(approvalId);
      if (a.status !== 'pending') return a;
      if (performance.now() + interval > deadline) throw new ApprovalPendingError(approvalId);
      await sleep(interval, opts.signal);
    }
  }

  // ---- admin

  /** `POST /v1/admin/rotate`: `signing-key` or a provider name; `immediate` for a compromised signing key. */
  async rotate(target: string, opts: { immediate?: boolean } = {}): Promise<Record<string, unknown>> {
    const json = opts.immediate ? { target, immediate: true } : { target };
    return (await this.answer<Record<string, unknown>>('rotated', 'POST', '/v1/admin/rotate', { json }, target)).body;
  }

  /** `POST /v1/admin/policy/reload`: every instance reloads the Cedar policies. */
  async reloadPolicy(): Promise<Record<string, unknown>> {
    return (await this.answer<Record<string, unknown>>('reloaded', 'POST', '/v1/admin/policy/reload', { json: {} })).body;
  }

  /** `POST /v1/admin/revoke`: end every open task matching one selector, and revoke its leases. */
  async revokeAll(selector: RevokeSelector): Promise<RevokeResult> {
    return (await this.answer<RevokeResult>('ended', 'POST', '/v1/admin/revoke', { json: selector })).body;
  }

  /** `POST /v1/admin/quarantine`: refuse every call by identities matching `agent`, and end their tasks. */
  async quarantine(agent: string, reason: string): Promise<Record<string, unknown>> {
    return (await this.answer<Record<string, unknown>>('quarantined', 'POST', '/v1/admin/quarantine', { json: { agent, reason } }, agent))
      .body;
  }

  /** `DELETE /v1/admin/quarantine/{pattern}`. */
  async unquarantine(agent: string): Promise<{ pattern: string; lifted: true }> {
    return (await this.answer<{ pattern: string; lifted: true }>('lifted', 'DELETE', `/v1/admin/quarantine/${enc(agent)}`, {}, agent)).body;
  }

  /** `GET /v1/admin/quarantine`: what is in force. */
  async listQuarantines(page: PageParams = {}): Promise<Page<Quarantine>> {
    return (await this.answer<Page<Quarantine>>('page', 'GET', '/v1/admin/quarantine', { query: { ...page } })).body;
  }

  // ---- audit

  /** `GET /v1/audit`: one page, oldest first. */
  async queryAudit(filter: AuditFilter = {}): Promise<Page<AuditRecord>> {
    return (await this.answer<Page<AuditRecord>>('page', 'GET', '/v1/audit', { query: { ...filter } })).body;
  }

  /** `GET /v1/admin/audit/seals` (admins): each chain's newest valid seal, its age, and whether that is too old. */
  async auditSeals(): Promise<AuditSeals> {
    // `{}` crashed audit verify with a TypeError (no `chains`) instead of saying the broker failed.
    return (await this.answer<AuditSeals>('seals', 'GET', '/v1/admin/audit/seals')).body;
  }

  // ---- OAuth

  /** RFC 8693 token exchange at `POST /v1/token`, the caller's identity as `subject_token`. */
  async exchangeToken(req: {
    taskId: string;
    audience: string;
    scope?: string[];
    requestedTokenType?: string;
  }): Promise<TokenExchangeResult> {
    const subject = await this.http.identity();
    const form = {
      grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
      subject_token: subject,
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      audience: req.audience,
      scope: req.scope?.join(' '),
      requested_token_type: req.requestedTokenType,
      task_id: req.taskId,
    };
    return (await this.answer<TokenExchangeResult>('token', 'POST', '/v1/token', { form, auth: false })).body;
  }

  /** RFC 7662 introspection of a token the broker minted. */
  async introspect(token: string): Promise<Introspection> {
    return (await this.answer<Introspection>('introspection', 'POST', '/v1/introspect', { form: { token } })).body;
  }

  /**
   * One call whose 2xx answer must be `kind` (see {@link ANSWERS}), about `asked` when given (the id in the path
   * or the request): anything else is BrokerUnreachableError bad_response, the CLI's exit 3.
   */
  private async answer<T>(kind: AnswerKind, method: string, path: string, opts: CallOptions = {}, asked?: string) {
    const a = await this.http.call<unknown>(method, path, opts);
    return { ...a, body: shapedAs<T>(kind, a.body, `${method} ${path}`, asked) };
  }

  /**
   * Every item of a paginated list, fetching pages as the loop goes:
   * `for await (const t of broker.paginate((cursor) => broker.listTasks({ status: 'open', cursor })))`.
   */
  async *paginate<T>(page: (cursor: string | undefined) => Promise<Page<T>>): AsyncGenerator<T> {
    const next = nextCursorCheck();
    let cursor: string | undefined;
    do {
      const p = await page(cursor);
      yield* p.items;
      cursor = next(p.nextCursor);
    } while (cursor);
  }
}

/** Whether a credential answer is a 202 pending approval. */
export function isPending(r: CredentialResponse): r is PendingApproval {
  if (typeof r !== 'object' || r === null) return false;
  return (r as PendingApproval).status === 'pending' && typeof (r as PendingApproval).approvalId === 'string' && !('leaseId' in r);
}

function closedError(): JitError {
  return new JitError('client_closed', 'the client was closed: it issues no more credentials');
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener('abort', abort);
      resolve();
    }
    function abort() {
      clearTimeout(t);
      reject(signal!.reason);
    }
    signal?.addEventListener('abort', abort, { once: true });
  });
}

type Json = Record<string, unknown>;
const str = (v: unknown): v is string => typeof v === 'string';
const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const obj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * What each answer must at least be: the fields the contract (docs/openapi.yaml's `required`) promises that a
 * caller reads, and `id`, what names the object asked for (compared with the id in the path or the request).
 * `[]`, `{}`, `null`, nothing, or another object than the one asked for (a wrong URL, a proxy's answer, a broken
 * or hostile broker) is the broker failing (exit 3 bad_response), never an answer with every field missing or
 * about something else: the CLI printed nothing, or the wrong object, and exited 0 on it.
 */
const ANSWERS = {
  health: { what: 'a health answer', ok: (b: Json) => str(b.status) },
  ready: { what: 'a readiness answer', ok: (b: Json) => str(b.status) && obj(b.checks) },
  metadata: {
    what: 'authorization server metadata',
    ok: (b: Json) =>
      str(b.issuer) && str(b.token_endpoint) && str(b.introspection_endpoint) && str(b.jwks_uri) && Array.isArray(b.grant_types_supported),
  },
  jwks: { what: 'a JWK set', ok: (b: Json) => Array.isArray(b.keys) },
  task: { what: 'a task', ok: (b: Json) => str(b.taskId) && str(b.status), id: (b: Json) => b.taskId },
  completed: {
    what: 'a completed task',
    ok: (b: Json) => str(b.taskId) && b.status === 'completed' && num(b.leases),
    id: (b: Json) => b.taskId,
  },
  // `chain` is a verdict: only the broker's two words count (anything else read as "broken" told an operator the
  // records were tampered with when what failed was the answer).
  evidence: {
    what: 'task evidence',
    ok: (b: Json) => (b.chain === 'intact' || b.chain === 'broken') && obj(b.task) && obj(b.audit) && Array.isArray(b.audit.items),
    id: (b: Json) => (b.task as Json).taskId,
  },
  // A lease, and what revoking one answers (`leaseId` and `status`).
  lease: { what: 'a lease', ok: (b: Json) => str(b.leaseId) && b.leaseId !== '' && str(b.status), id: (b: Json) => b.leaseId },
  approval: { what: 'an approval', ok: (b: Json) => str(b.approvalId) && str(b.status), id: (b: Json) => b.approvalId },
  // One page of a list (`{ "items": [...], "nextCursor" }`, null on the last page): `{}` or `[]` was an empty list
  // (exit 0, as if there were nothing to list), and a TypeError for every paging loop (`--all`, `paginate`).
  page: { what: 'a page of a list', ok: (b: Json) => Array.isArray(b.items) && (str(b.nextCursor) || b.nextCursor === null) },
  seals: { what: 'audit seals', ok: (b: Json) => num(b.maxSealAgeSeconds) && Array.isArray(b.chains) },
  ended: { what: 'what the kill switch ended', ok: (b: Json) => num(b.tasks) && num(b.leases) },
  quarantined: {
    what: 'a quarantine',
    ok: (b: Json) => str(b.pattern) && num(b.tasks) && num(b.leases) && num(b.approvedLeases),
    id: (b: Json) => b.pattern,
  },
  lifted: { what: 'a lifted quarantine', ok: (b: Json) => str(b.pattern) && b.lifted === true, id: (b: Json) => b.pattern },
  rotated: { what: 'a rotation', ok: (b: Json) => str(b.target) && Array.isArray(b.rotated), id: (b: Json) => b.target },
  reloaded: { what: 'a policy reload', ok: (b: Json) => b.reloaded === true && num(b.policies) && str(b.version) },
  token: { what: 'an access token', ok: (b: Json) => str(b.access_token) && b.access_token !== '' && str(b.token_type) },
  introspection: { what: 'an introspection answer', ok: (b: Json) => typeof b.active === 'boolean' },
} satisfies Record<string, { what: string; ok: (b: Json) => boolean; id?: (b: Json) => unknown }>;
type AnswerKind = keyof typeof ANSWERS;

/** `body` if it is an answer of `kind` (about `asked`, when given) to the call `where`; else bad_response. */
function shapedAs<T>(kind: AnswerKind, body: unknown, where: string, asked?: string): T {
  const shape: { what: string; ok: (b: Json) => boolean; id?: (b: Json) => unknown } = ANSWERS[kind];
  if (!obj(body) || !shape.ok(body))
    throw new BrokerUnreachableError('bad_response', `${where}: the broker answered something that is not ${shape.what}`);
  if (asked !== undefined && shape.id && shape.id(body) !== asked)
    // Not echoed: what a hostile answer names is not printed to the terminal.
    throw new BrokerUnreachableError('bad_response', `${where}: the broker answered ${shape.what} other than the one asked for`);
  return body as T;
}

/** An issued credential as the broker answers one: its lease, and the credential itself as an object. */
function isCredential(r: unknown): r is IssuedCredential {
  if (typeof r !== 'object' || r === null || Array.isArray(r)) return false;
  const c = r as Partial<IssuedCredential>;
  return (
    typeof c.leaseId === 'string' &&
    c.leaseId !== '' &&
    typeof c.credentials === 'object' &&
    c.credentials !== null &&
    !Array.isArray(c.credentials)
  );
}

/**
 * The cursor to read next, refusing one already read: the broker's cursors move forward, so a repeated one is a
 * broken or hostile broker, which would keep a paging loop (`--all`, `audit export` into a file) going for ever.
 * One cursor check per paging loop.
 */
export function nextCursorCheck(): (cursor: string | null | undefined) => string | undefined {
  const seen = new Set<string>();
  return (cursor) => {
    if (cursor === null || cursor === undefined || cursor === '') return undefined;
    if (seen.has(cursor)) throw new BrokerUnreachableError('bad_response', 'the broker answered the same page cursor twice');
    seen.add(cursor);
    return cursor;
  };
}
