import { useRoute } from 'preact-iso';
import { useState } from 'preact/hooks';
import { ApiError, api, type Lease, type Page, type Quarantine, seg, type Task } from '../api.ts';
import { Forbidden, LoadError, PageError } from '../components/problem.tsx';
import { formatTime } from '../format.ts';
import { useNow, usePageHeading, usePoll } from '../hooks.ts';
import { useSession } from '../session.ts';
import { Leases } from './task.tsx';
import { TaskTable } from './tasks.tsx';

const LIVE = new Set(['issuing', 'active', 'revoking', 'revoke_failed']);

/** Does a quarantine pattern (exact, or ending in `/*`) cover this identity? */
const covers = (pattern: string, id: string) =>
  pattern === id || (pattern.endsWith('/*') && id.length > pattern.length - 1 && id.startsWith(pattern.slice(0, -1)));

/** One agent: its tasks, its live leases, and the buttons that stop it. */
export function AgentPage() {
  const { params } = useRoute();
  const agent = params.agent!;
  const session = useSession();
  const heading = usePageHeading(`Agent ${agent}`);
  const key = session.admin ? agent : '';
  const none = { items: [], nextCursor: null };
  const tasks = usePoll(
    async () => (key ? api<Page<Task>>('GET', `/v1/tasks?agent=${encodeURIComponent(agent)}&limit=100`) : none),
    3000,
    `agent-tasks:${key}`,
  );
  const openIds = (tasks.data?.items ?? []).filter((t) => t.status === 'open').map((t) => t.taskId);
  const leases = usePoll(
    async () => {
      // One page of each open task's leases, of the most one call may ask for.
      const all = await Promise.all(
        openIds.map((id) => api<Page<Lease>>('GET', `/v1/tasks/${seg(id)}/leases?limit=500`).then((p) => p.items)),
      );
      return all.flat().filter((l: Lease) => LIVE.has(l.status));
    },
    3000,
    `agent-leases:${key}:${openIds.join(',')}`,
  );
  // The list is paged (50 by default): one page of the most there can be in one call.
  const quarantine = usePoll(
    async () => (key ? api<Page<Quarantine>>('GET', '/v1/admin/quarantine?limit=500') : none),
    5000,
    `quarantine:${key}`,
  );
  const now = useNow();

  if (!session.admin) return <Forbidden what="agents" needs="admins" />;
  const reload = () => {
    tasks.reload();
    leases.reload();
    quarantine.reload();
  };
  return (
    <>
      <p class="crumbs">
        <a href="/console/tasks">Tasks</a> / Agents /
      </p>
      <h1 ref={heading} tabIndex={-1} class="identity-cell">
        {agent}
      </h1>
      <StopControls agent={agent} quarantines={(quarantine.data?.items ?? []).filter((q) => covers(q.pattern, agent))} onChanged={reload} />
      {quarantine.error && !quarantine.data ? <LoadError error={quarantine.error} /> : null}
      {tasks.error && !tasks.data ? (
        <PageError error={tasks.error} what={`the tasks of ${agent}`} needs="admins" />
      ) : !tasks.data ? (
        <p class="loading">Loading tasks…</p>
      ) : (
        <>
          {leases.error && !leases.data ? <LoadError error={leases.error} /> : null}
          <Leases leases={leases.data ?? []} now={now} title="Live leases" showTask />
          <section aria-labelledby="agent-tasks">
            <h2 id="agent-tasks">Tasks</h2>
            {tasks.data.items.length ? <TaskTable tasks={tasks.data.items} now={now} hideAgent /> : <p class="muted">No tasks.</p>}
          </section>
        </>
      )}
    </>
  );
}

/** Revoke all, Quarantine (with a reason) and Lift quarantine; the first two ask first (window.confirm). */
function StopControls(props: { agent: string; quarantines: Quarantine[]; onChanged: () => void }) {
  // The broker takes the agent as an identity pattern: one ending in `/*` (a link to this page, or a task opened
  // before such agents were refused) stops every identity below it, so the page and its questions say so.
  const pattern = props.agent.endsWith('/*');
  const who = pattern ? `every identity matching the pattern ${props.agent}` : props.agent;
  const [reason, setReason] = useState('');
  const [busy, setBusy] = useState(false);
  const [message, setMessage] = useState<{ text: string; error?: boolean }>();
  const run = async (what: () => Promise<string>) => {
    setBusy(true);
    try {
      setMessage({ text: await what() });
      props.onChanged();
    } catch (err) {
      setMessage({ text: err instanceof ApiError ? `${err.message} (${err.code})` : String(err), error: true });
    } finally {
      setBusy(false);
    }
  };
  const revokeAll = () => {
    if (!window.confirm(`Revoke every open task and live lease of ${who}?`)) return;
    void run(async () => {
      const r = await api<{ tasks: number; leases: number }>('POST', '/v1/admin/revoke', { agent: props.agent });
      return `Revoked ${r.tasks} task${r.tasks === 1 ? '' : 's'} and ${r.leases} lease${r.leases === 1 ? '' : 's'}.`;
    });
  };
  const quarantine = () => {
    if (!window.confirm(`Quarantine ${who}? Every call it makes will be refused and its tasks ended.`)) return;
    void run(async () => {
      await api('POST', '/v1/admin/quarantine', { agent: props.agent, reason: reason.trim() || 'quarantined from the console' });
      setReason('');
      return `Quarantined ${props.agent}.`;
    });
  };
  const lift = (pattern: string) =>
    void run(async () => {
      await api('DELETE', `/v1/admin/quarantine/${seg(pattern)}`);
      return `Lifted the quarantine of ${pattern}.`;
    });

  return (
    <section class="card stop" aria-labelledby="stop-title">
      <h2 id="stop-title">Stop this agent</h2>
      {pattern ? (
        <p class="error">
          This is an identity pattern, not one agent: Revoke all and Quarantine act on every identity below{' '}
          <code>{props.agent.slice(0, -1)}</code>.
        </p>
      ) : null}
      {props.quarantines.length ? (
        <ul class="plain">
          {props.quarantines.map((q) => (
            <li key={q.pattern} class="quarantined">
              <strong>Quarantined</strong> ({q.pattern === props.agent ? 'this identity' : `pattern ${q.pattern}`}) since {formatTime(q.at)}{' '}
              by {q.by}: {q.reason}{' '}
              <button type="button" class="secondary" disabled={busy} onClick={() => lift(q.pattern)}>
                Lift quarantine
              </button>
            </li>
          ))}
        </ul>
      ) : (
        <p class="muted">Not quarantined.</p>
      )}
      <div class="actions">
        <button
          type="button"
          class="danger"
          disabled={busy}
          onClick={revokeAll}
          aria-label={`Revoke all tasks and leases of ${props.agent}`}
        >
          Revoke all
        </button>
        {props.quarantines.some((q) => q.pattern === props.agent) ? null : (
          <span class="inline-form">
            <label for="quarantine-reason">Quarantine reason</label>
            <input id="quarantine-reason" type="text" maxLength={512} value={reason} onInput={(e) => setReason(e.currentTarget.value)} />
            <button type="button" class="danger" disabled={busy} onClick={quarantine} aria-label={`Quarantine ${props.agent}`}>
              Quarantine
            </button>
          </span>
        )}
      </div>
      <p role="status" class={message?.error ? 'error' : 'notice-line'}>
        {message?.text ?? ''}
      </p>
    </section>
  );
}
