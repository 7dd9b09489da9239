import { useLocation } from 'preact-iso';
import { api, type Page, seg, type Task } from '../api.ts';
import { Charts } from '../components/charts.tsx';
import { PageError } from '../components/problem.tsx';
import { Status } from '../components/status.tsx';
import { timeLeft } from '../format.ts';
import { useNow, usePageHeading, usePoll } from '../hooks.ts';

const STATUSES = [
  { value: 'open', label: 'Open' },
  { value: 'completed', label: 'Completed' },
  { value: 'expired', label: 'Expired' },
  { value: 'all', label: 'All' },
];

/**
 * Live tasks, newest first. Polled every 2 s rather than pushed: the list is
 * the broker's own GET /v1/tasks, which sees tasks opened on any instance
 * without a new event channel, and a hidden tab stops asking.
 */
export function TasksPage() {
  const heading = usePageHeading('Tasks');
  const { query, route } = useLocation();
  const status = STATUSES.some((s) => s.value === query.status) ? query.status! : 'open';
  const qs = new URLSearchParams({ limit: '100', ...(status === 'all' ? {} : { status }) });
  const { data, error } = usePoll(() => api<Page<Task>>('GET', `/v1/tasks?${qs}`), 2000, `tasks:${status}`);
  const now = useNow();

  return (
    <>
      <h1 ref={heading} tabIndex={-1}>
        Tasks
      </h1>
      <Charts />
      <section aria-labelledby="list-title">
        <div class="list-head">
          <h2 id="list-title">{STATUSES.find((s) => s.value === status)!.label} tasks</h2>
          <label>
            Show{' '}
            <select
              value={status}
              onChange={(e) => route(`/console/tasks${e.currentTarget.value === 'open' ? '' : `?status=${e.currentTarget.value}`}`, true)}
            >
              {STATUSES.map((s) => (
                <option key={s.value} value={s.value}>
                  {s.label}
                </option>
              ))}
            </select>
          </label>
        </div>
        {error && !data ? (
          <PageError error={error} what="the task list" needs="admins" />
        ) : !data ? (
          <p class="loading">Loading tasks…</p>
        ) : (
          <>
            <p class="muted small" role="status">
              {data.items.length === 0 ? 'No tasks.' : `${data.items.length}${data.nextCursor ? '+' : ''} tasks, newest first.`} Updates
              every 2 s.
            </p>
            {data.items.length > 0 ? <TaskTable tasks={data.items} now={now} /> : null}
          </>
        )}
      </section>
    </>
  );
}

export function TaskTable(props: { tasks: Task[]; now: number; hideAgent?: boolean }) {
  return (
    <div class="table-wrap">
      <table>
        <thead>
          <tr>
            <th scope="col">Task</th>
            {props.hideAgent ? null : <th scope="col">Agent</th>}
            <th scope="col">Tenant</th>
            <th scope="col">Purpose</th>
            <th scope="col">Status</th>
            <th scope="col">Deadline</th>
          </tr>
        </thead>
        <tbody>
          {props.tasks.map((t) => (
            <tr key={t.taskId}>
              <td>
                <a href={`/console/tasks/${seg(t.taskId)}`}>{t.taskId}</a>
              </td>
              {props.hideAgent ? null : (
                <td class="identity-cell">
                  <a href={`/console/agents/${seg(t.agent)}`}>{t.agent}</a>
                </td>
              )}
              <td>{t.tenant}</td>
              <td>{t.purpose}</td>
              <td>
                <Status value={t.status} />
              </td>
              <td>{t.status === 'open' ? timeLeft(t.expiresAt, props.now) : '—'}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
