import { useCallback, useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { type Approval, api, type Page, seg, type Task } from '../api.ts';
import { Decide } from '../components/decide.tsx';
import { Forbidden, PageError } from '../components/problem.tsx';
import { formatTime, formatTtl } from '../format.ts';
import { usePageHeading, usePoll } from '../hooks.ts';
import { useSession } from '../session.ts';

/** Pending approvals, each with what it asks for and Approve / Reject. */
export function ApprovalsPage() {
  const session = useSession();
  const heading = usePageHeading('Approvals');
  const { data, error, reload } = usePoll(
    async () => (session.approver ? api<Page<Approval>>('GET', '/v1/approvals?status=pending&limit=100') : { items: [], nextCursor: null }),
    3000,
    session.approver ? 'approvals' : 'none',
  );
  const { cards: shown, append } = useSteadyList(data?.items, data?.nextCursor === null);
  const older = useOlder(data?.nextCursor ?? null, append);
  // Each live card's height, so that one leaving the list leaves a gap of its size (nothing below it moves up).
  const heights = useRef(new Map<string, number>());
  const purposes = usePurposes(shown.map((c) => c.approval));
  const [message, setMessage] = useState('');

  if (!session.approver) return <Forbidden what="approvals" needs="approvers" />;
  return (
    <>
      <h1 ref={heading} tabIndex={-1}>
        Pending approvals
      </h1>
      <p role="status" class="notice-line">
        {message}
      </p>
      {error && !data ? (
        <PageError error={error} what="approvals" needs="approvers" />
      ) : !data ? (
        <p class="loading">Loading approvals…</p>
      ) : shown.length === 0 ? (
        <p class="muted">Nothing waits for an approver.</p>
      ) : (
        <ul class="cards">
          {shown.map(({ approval: a, ended }) =>
            ended ? (
              // No longer pending: nothing left to read or press (the list shows pending approvals only), but its place
              // is kept until the page is loaded again, so no other card slides under the approver's pointer.
              <li
                key={a.approvalId}
                class="card-gap"
                aria-hidden="true"
                style={{ height: `${heights.current.get(a.approvalId) ?? 0}px` }}
              />
            ) : (
              <li
                key={a.approvalId}
                class="card"
                ref={(el) => {
                  if (el) heights.current.set(a.approvalId, el.offsetHeight);
                }}
              >
                <ApprovalFacts approval={a} purpose={a.purpose ?? purposes[a.taskId]} />
                <Decide
                  approval={a}
                  onDecided={(m) => {
                    setMessage(m);
                    reload();
                  }}
                />
              </li>
            ),
          )}
        </ul>
      )}
      {older.more && (
        <div class="more-line">
          <p class="muted">More requests wait than one page holds. Older ones are added at the end of the list, so that no card moves.</p>
          <button type="button" class="secondary" disabled={older.loading} onClick={older.load}>
            {older.loading ? 'Loading older requests…' : 'Show older requests'}
          </button>
          {older.error && (
            <p class="error" role="alert">
              {older.error}
            </p>
          )}
        </div>
      )}
    </>
  );
}

/**
 * The pending approvals beyond the polled first page (the newest 100): a flood of new requests must not hide an
 * older one from every approver. Each press reads the next page, from the first page's latest cursor, then from the
 * last page read; what arrives goes to the end of the list (useSteadyList), where it moves nothing.
 */
function useOlder(firstCursor: string | null, append: (items: Approval[]) => void) {
  const [cursor, setCursor] = useState<string | null | undefined>(undefined);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState('');
  // Not pressed yet: the first page's cursor, whatever the latest poll says.
  const next = cursor === undefined ? firstCursor : cursor;
  const load = async () => {
    if (!next || loading) return;
    setLoading(true);
    setError('');
    try {
      const page = await api<Page<Approval>>('GET', `/v1/approvals?status=pending&limit=100&cursor=${encodeURIComponent(next)}`);
      append(page.items);
      setCursor(page.nextCursor);
    } catch (err) {
      setError(`Could not read older requests: ${(err as Error).message}`);
    } finally {
      setLoading(false);
    }
  };
  return { more: next !== null, loading, error, load };
}

/** A card of the list: the approval as last read, and whether it has left the pending list since. */
interface Card {
  approval: Approval;
  ended: boolean;
}

/**
 * The pending list as cards that never move while the page is open. The broker lists newest first, so a request
 * arriving while an approver aimed at Approve slid every card down and put its own Approve under the pointer (an
 * agent could time that); one decided elsewhere or ended slid the next one up the same way. So the first load is
 * shown oldest first, requests that arrive later go to the end, and a card that leaves the list leaves an empty gap
 * of its size in its place until the page is loaded again.
 */
function useSteadyList(items: Approval[] | undefined, complete: boolean): { cards: Card[]; append: (older: Approval[]) => void } {
  // Derived during render (not in an effect), so a new read never shows for a frame in the old order.
  const cards = useRef<Card[]>([]);
  const [appended, setAppended] = useState(0);
  const append = useCallback((older: Approval[]) => {
    const known = new Set(cards.current.map((c) => c.approval.approvalId));
    const added = older.filter((a) => !known.has(a.approvalId)).reverse();
    if (added.length === 0) return;
    cards.current = [...cards.current, ...added.map((approval) => ({ approval, ended: false }))];
    setAppended((n) => n + 1);
  }, []);
  const shown = useMemo(() => {
    if (!items) return cards.current;
    const prev = cards.current;
    const now = new Map(items.map((a) => [a.approvalId, a]));
    const kept = prev.map((c) => {
      const a = now.get(c.approval.approvalId);
      // Out of a list cut at its first page (a flood of newer requests, or a card read from an older page), it may
      // well be pending still: it stays live, and the broker answers for it if it is not (its role, scopes and TTL
      // never change).
      return a ? { approval: a, ended: false } : { approval: c.approval, ended: complete || c.ended };
    });
    const known = new Set(prev.map((c) => c.approval.approvalId));
    const arrived = items.filter((a) => !known.has(a.approvalId)).reverse();
    cards.current = [...kept, ...arrived.map((a) => ({ approval: a, ended: false }))];
    return cards.current;
    // `appended` re-derives the list once older cards were added to it.
  }, [items, complete, appended]);
  return { cards: shown, append };
}

export function ApprovalFacts(props: { approval: Approval; purpose?: string }) {
  const a = props.approval;
  return (
    <dl class="facts compact">
      <dt>Task</dt>
      <dd>
        <a href={`/console/tasks/${seg(a.taskId)}`}>{a.taskId}</a>
      </dd>
      <dt>Purpose</dt>
      <dd>{props.purpose ?? '—'}</dd>
      <dt>Role</dt>
      <dd>
        <strong>{a.role}</strong>
      </dd>
      <dt>Scopes</dt>
      <dd>{a.scopes.length ? a.scopes.join(' ') : <span class="muted">none</span>}</dd>
      <dt>TTL</dt>
      <dd>
        <IssuedTtl approval={a} />
      </dd>
      <dt>Agent</dt>
      <dd class="identity-cell">
        <a href={`/console/agents/${seg(a.agent)}`}>{a.agent}</a>
      </dd>
      <dt>Requested</dt>
      <dd>{formatTime(a.requestedAt)}</dd>
    </dl>
  );
}

/**
 * What approving gives (`issuedTtlSeconds`), with what was asked when that differs: the card showed the TTL asked
 * for, so an AWS request for 60 s read "1 min" and was issued for STS's 15 min minimum.
 */
function IssuedTtl(props: { approval: Approval }) {
  const { ttlSeconds: asked, issuedTtlSeconds: issued } = props.approval;
  if (issued === undefined || issued === asked) return <>{formatTtl(asked)}</>;
  return (
    <>
      <strong>{formatTtl(issued)}</strong> <span class="muted">(asked for {formatTtl(asked)})</span>
    </>
  );
}

/**
 * The task purpose of approvals that do not carry it, read once per task. Only
 * admins may read any task (approvers may not), so for others it stays unknown.
 */
export function usePurposes(approvals: Approval[]): Record<string, string> {
  const { admin } = useSession();
  const [purposes, setPurposes] = useState<Record<string, string>>({});
  const wanted = admin ? [...new Set(approvals.filter((a) => !a.purpose).map((a) => a.taskId))].filter((id) => !(id in purposes)) : [];
  const key = wanted.join('\n');
  useEffect(() => {
    if (!key) return;
    for (const id of key.split('\n')) {
      api<Task>('GET', `/v1/tasks/${seg(id)}`).then(
        (t) => setPurposes((p) => ({ ...p, [id]: t.purpose })),
        () => setPurposes((p) => ({ ...p, [id]: '(not readable)' })),
      );
    }
  }, [key]);
  return purposes;
}
