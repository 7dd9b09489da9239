import { useRoute } from 'preact-iso';
import { useState } from 'preact/hooks';
import type { ComponentChildren } from 'preact';
import { type ApiError, type AuditRecord, api, type Evidence, type Lease, type Page, seg, type Task, type TreeNode } from '../api.ts';
import { LoadError, PageError } from '../components/problem.tsx';
import { Status } from '../components/status.tsx';
import { formatTime, timeLeft } from '../format.ts';
import { useNow, usePageHeading, usePoll } from '../hooks.ts';

/** One task: what it may do, its leases, its sub-tasks and the audit trail that shows what happened. */
export function TaskPage() {
  const { params } = useRoute();
  const taskId = params.taskId!;
  const heading = usePageHeading(`Task ${taskId}`);
  const { data: task, error } = usePoll(() => api<Task>('GET', `/v1/tasks/${seg(taskId)}`), 2000, `task:${taskId}`);
  const now = useNow();

  return (
    <>
      <p class="crumbs">
        <a href="/console/tasks">Tasks</a> /
      </p>
      <h1 ref={heading} tabIndex={-1}>
        Task <code>{taskId}</code>
      </h1>
      {error && !task ? (
        <PageError error={error} what={`task ${taskId}`} needs="admins" />
      ) : !task ? (
        <p class="loading">Loading task…</p>
      ) : (
        <>
          <TaskSummary task={task} now={now} />
          <TaskLeases task={task} now={now} />
          <EvidenceSections taskId={taskId} />
        </>
      )}
    </>
  );
}

function TaskSummary(props: { task: Task; now: number }) {
  const t = props.task;
  return (
    <section aria-labelledby="summary-title">
      <h2 id="summary-title" class="visually-hidden">
        Summary
      </h2>
      <dl class="facts">
        <dt>Status</dt>
        <dd>
          <Status value={t.status} />
        </dd>
        <dt>Agent</dt>
        <dd class="identity-cell">
          <a href={`/console/agents/${seg(t.agent)}`}>{t.agent}</a>
        </dd>
        <dt>Tenant</dt>
        <dd>{t.tenant}</dd>
        <dt>Purpose</dt>
        <dd>{t.purpose}</dd>
        <dt>Deadline</dt>
        <dd>
          {formatTime(t.expiresAt)} {t.status === 'open' ? <span class="muted">({timeLeft(t.expiresAt, props.now)})</span> : null}
        </dd>
        {t.endedAt ? (
          <>
            <dt>Ended</dt>
            <dd>{formatTime(t.endedAt)}</dd>
          </>
        ) : null}
        {t.parentTaskId ? (
          <>
            <dt>Parent task</dt>
            <dd>
              <a href={`/console/tasks/${seg(t.parentTaskId)}`}>{t.parentTaskId}</a>
            </dd>
          </>
        ) : null}
        <dt>Grants</dt>
        <dd>
          <ul class="plain">
            {t.grants.map((g) => (
              <li key={g.role}>
                <strong>{g.role}</strong> {g.scopes.length ? g.scopes.join(' ') : <span class="muted">(no scopes)</span>}{' '}
                <span class="muted">up to {g.maxTtlSeconds} s</span>
              </li>
            ))}
          </ul>
        </dd>
        {t.labels && Object.keys(t.labels).length ? (
          <>
            <dt>Labels</dt>
            <dd>
              {Object.entries(t.labels).map(([k, v]) => (
                <span key={k} class="label">
                  {k}={v}
                </span>
              ))}
            </dd>
          </>
        ) : null}
      </dl>
    </section>
  );
}

const ENDED = new Set(['revoked', 'expired', 'failed']);

/** The task's first leases (GET /v1/tasks/{id} holds 100), the rest from its lease list on request. */
function TaskLeases(props: { task: Task; now: number }) {
  const [more, setMore] = useState<{ items: Lease[]; nextCursor: string | null; error?: ApiError }>();
  const cursor = more ? more.nextCursor : (props.task.leasesNextCursor ?? null);
  const loadMore = async () => {
    try {
      const next = await api<Page<Lease>>(
        'GET',
        `/v1/tasks/${seg(props.task.taskId)}/leases?limit=500&cursor=${encodeURIComponent(cursor!)}`,
      );
      setMore({ items: [...(more?.items ?? []), ...next.items], nextCursor: next.nextCursor });
    } catch (err) {
      setMore({ items: more?.items ?? [], nextCursor: cursor, error: err as ApiError });
    }
  };
  return (
    <Leases leases={[...(props.task.leases ?? []), ...(more?.items ?? [])]} now={props.now}>
      {more?.error ? <LoadError error={more.error} /> : null}
      {cursor ? (
        <button type="button" class="secondary" onClick={loadMore}>
          Load more leases
        </button>
      ) : null}
    </Leases>
  );
}

export function Leases(props: { leases: Lease[]; now: number; title?: string; showTask?: boolean; children?: ComponentChildren }) {
  return (
    <section aria-labelledby="leases-title">
      <h2 id="leases-title">{props.title ?? 'Leases'}</h2>
      {props.leases.length === 0 ? (
        <p class="muted">No leases.</p>
      ) : (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Lease</th>
                {props.showTask ? <th scope="col">Task</th> : null}
                <th scope="col">Role</th>
                <th scope="col">Scopes</th>
                <th scope="col">Status</th>
                <th scope="col">Time left</th>
              </tr>
            </thead>
            <tbody>
              {props.leases.map((l) => (
                <tr key={l.leaseId}>
                  <td>
                    <code>{l.leaseId}</code>
                  </td>
                  {props.showTask ? (
                    <td>
                      <a href={`/console/tasks/${seg(l.taskId)}`}>{l.taskId}</a>
                    </td>
                  ) : null}
                  <td>{l.role}</td>
                  <td>{l.scopes.join(' ') || <span class="muted">none</span>}</td>
                  <td>
                    <Status value={l.status} />
                    {l.reason ? <span class="muted small"> {l.reason.replace(/_/g, ' ')}</span> : null}
                  </td>
                  <td>{ENDED.has(l.status) ? `ended ${formatTime(l.revokedAt ?? l.expiresAt)}` : timeLeft(l.expiresAt, props.now)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {props.children}
    </section>
  );
}

/** The sub-task tree and the audit trail, from GET /v1/tasks/{id}/evidence. */
function EvidenceSections(props: { taskId: string }) {
  const { data, error } = usePoll(() => api<Evidence>('GET', `/v1/tasks/${seg(props.taskId)}/evidence`), 5000, `evidence:${props.taskId}`);
  const [more, setMore] = useState<{ items: AuditRecord[]; nextCursor: string | null; error?: ApiError }>();
  // A tree over ~2 MB of task records comes in parts (treeNextCursor), loaded on request like the audit records.
  const [moreTree, setMoreTree] = useState<{ items: TreeNode[]; nextCursor: string | null; error?: ApiError }>();
  if (error && !data) {
    return (
      <section aria-labelledby="evidence-title">
        <h2 id="evidence-title">Sub-tasks and audit trail</h2>
        <LoadError error={error} />
      </section>
    );
  }
  if (!data) return <p class="loading">Loading the audit trail…</p>;
  const records = [...data.audit.items, ...(more?.items ?? [])];
  const cursor = more ? more.nextCursor : data.audit.nextCursor;
  const loadMore = async () => {
    try {
      const next = await api<Evidence>('GET', `/v1/tasks/${seg(props.taskId)}/evidence?cursor=${encodeURIComponent(cursor!)}`);
      setMore({ items: [...(more?.items ?? []), ...next.audit.items], nextCursor: next.audit.nextCursor });
    } catch (err) {
      setMore({ items: more?.items ?? [], nextCursor: cursor, error: err as ApiError });
    }
  };
  const treeCursor = moreTree ? moreTree.nextCursor : (data.treeNextCursor ?? null);
  const loadMoreTree = async () => {
    try {
      const next = await api<Evidence>('GET', `/v1/tasks/${seg(props.taskId)}/evidence?treeCursor=${encodeURIComponent(treeCursor!)}`);
      const items = Array.isArray(next.tree) ? next.tree : [next.tree];
      setMoreTree({ items: [...(moreTree?.items ?? []), ...items], nextCursor: next.treeNextCursor ?? null });
    } catch (err) {
      setMoreTree({ items: moreTree?.items ?? [], nextCursor: treeCursor, error: err as ApiError });
    }
  };
  const roots = [...(Array.isArray(data.tree) ? data.tree : [data.tree]), ...(moreTree?.items ?? [])];
  return (
    <>
      <section aria-labelledby="tree-title">
        <h2 id="tree-title">Sub-task tree</h2>
        <ul class="tree">
          {roots.map((n) => (
            <TreeItem key={n.taskId} node={n} chain={[]} current={props.taskId} />
          ))}
        </ul>
        {moreTree?.error ? <LoadError error={moreTree.error} /> : null}
        {treeCursor ? (
          <button type="button" class="secondary" onClick={loadMoreTree}>
            Load more sub-tasks
          </button>
        ) : null}
      </section>
      <section aria-labelledby="audit-title">
        <div class="list-head">
          <h2 id="audit-title">Audit trail</h2>
          <p class={`chain chain-${data.chain}`}>
            Chain check: <strong>{data.chain}</strong>
          </p>
        </div>
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">#</th>
                <th scope="col">Time</th>
                <th scope="col">Actor</th>
                <th scope="col">Action</th>
                <th scope="col">Decision</th>
                <th scope="col">Details</th>
              </tr>
            </thead>
            <tbody>
              {records.map((r) => (
                <tr key={r.seq}>
                  <td>{r.seq}</td>
                  <td>{formatTime(r.time)}</td>
                  <td class="identity-cell">{r.actor}</td>
                  <td>{r.action}</td>
                  <td>
                    <Status value={r.decision} />
                  </td>
                  <td>
                    {[r.role && `role ${r.role}`, r.leaseId && `lease ${r.leaseId}`, r.taskId !== props.taskId && r.taskId, r.reason]
                      .filter(Boolean)
                      .join(' · ')}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
        {more?.error ? <LoadError error={more.error} /> : null}
        {cursor ? (
          <button type="button" class="secondary" onClick={loadMore}>
            Load more audit records
          </button>
        ) : null}
      </section>
    </>
  );
}

/**
 * A task and its sub-tasks. `chain` is the agents that delegated down to this
 * node, nearest first: what the `act` claim of its tokens names (act.sub, then
 * act.act.sub, ...).
 */
function TreeItem(props: { node: TreeNode; chain: string[]; current: string }) {
  const n = props.node;
  const act = n.delegators ?? props.chain;
  return (
    <li>
      <div class="node">
        {n.taskId === props.current ? (
          <strong aria-current="page">{n.taskId}</strong>
        ) : (
          <a href={`/console/tasks/${seg(n.taskId)}`}>{n.taskId}</a>
        )}{' '}
        {n.status ? <Status value={n.status} /> : null} <span class="identity-cell">{n.agent}</span>
        {act.length ? <span class="act">act: {act.map((a, i) => (i === 0 ? a : ` ← ${a}`))}</span> : null}
      </div>
      {n.children?.length ? (
        <ul class="subtree">
          {n.children.map((c) => (
            <TreeItem key={c.taskId} node={c} chain={[n.agent, ...act]} current={props.current} />
          ))}
        </ul>
      ) : null}
    </li>
  );
}
