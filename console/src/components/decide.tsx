import { useState } from 'preact/hooks';
import { ApiError, type Approval, api, seg } from '../api.ts';

/**
 * Approve and Reject for one pending approval, with an optional reason that
 * goes into the audit record. The buttons' accessible names begin with their
 * action word and say what they decide.
 */
export function Decide(props: { approval: Approval; onDecided: (message: string) => void }) {
  const a = props.approval;
  const [reason, setReason] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();
  const id = `reason-${a.approvalId}`;
  const what = `${a.role} for task ${a.taskId}`;

  const decide = async (decision: 'approve' | 'reject') => {
    setBusy(true);
    setError(undefined);
    try {
      const out = await api<Approval>('POST', `/v1/approvals/${seg(a.approvalId)}`, {
        decision,
        ...(reason.trim() ? { reason: reason.trim() } : {}),
      });
      props.onDecided(`${out.status === 'approved' ? 'Approved' : 'Rejected'} ${what}.`);
    } catch (err) {
      setError(err instanceof ApiError ? `${err.message} (${err.code})` : String(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div class="decide">
      <label for={id}>Reason</label>
      <input id={id} type="text" maxLength={512} value={reason} onInput={(e) => setReason(e.currentTarget.value)} placeholder="optional" />
      <button type="button" aria-label={`Approve ${what}`} disabled={busy} onClick={() => decide('approve')}>
        Approve
      </button>
      <button type="button" class="danger" aria-label={`Reject ${what}`} disabled={busy} onClick={() => decide('reject')}>
        Reject
      </button>
      {error ? (
        <p class="error" role="alert">
          {error}
        </p>
      ) : null}
    </div>
  );
}
