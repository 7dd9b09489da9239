import { useRoute } from 'preact-iso';
import { useState } from 'preact/hooks';
import { type Approval, api, seg } from '../api.ts';
import { Decide } from '../components/decide.tsx';
import { PageError } from '../components/problem.tsx';
import { Status } from '../components/status.tsx';
import { formatTime } from '../format.ts';
import { usePageHeading, usePoll } from '../hooks.ts';
import { useSession } from '../session.ts';
import { ApprovalFacts, usePurposes } from './approvals.tsx';

/** One approval by its id: the link an approver is sent ("please approve …"). */
export function ApprovalPage() {
  const { params } = useRoute();
  const approvalId = params.approvalId!;
  const session = useSession();
  const heading = usePageHeading('Approval');
  const { data, error, reload } = usePoll(() => api<Approval>('GET', `/v1/approvals/${seg(approvalId)}`), 3000, `approval:${approvalId}`);
  const purposes = usePurposes(data ? [data] : []);
  const [message, setMessage] = useState('');

  return (
    <>
      <p class="crumbs">
        <a href="/console/approvals">Approvals</a> /
      </p>
      <h1 ref={heading} tabIndex={-1}>
        Approval <code>{approvalId}</code>
      </h1>
      <p role="status" class="notice-line">
        {message}
      </p>
      {error && !data ? (
        <PageError error={error} what="this approval" needs="approvers" />
      ) : !data ? (
        <p class="loading">Loading approval…</p>
      ) : (
        <div class="card">
          <p>
            Status: <Status value={data.status} />
            {data.decidedBy ? (
              <span class="muted">
                {' '}
                by {data.decidedBy}
                {data.reason ? `: ${data.reason}` : ''}
              </span>
            ) : null}
          </p>
          <ApprovalFacts approval={data} purpose={data.purpose ?? purposes[data.taskId]} />
          {data.status === 'pending' && session.approver ? (
            <Decide
              approval={data}
              onDecided={(m) => {
                setMessage(m);
                reload();
              }}
            />
          ) : null}
          {data.status !== 'pending' ? <p class="muted small">Decided {formatTime((data as { decidedAt?: number }).decidedAt)}.</p> : null}
        </div>
      )}
    </>
  );
}
