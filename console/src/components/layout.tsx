import type { ComponentChildren } from 'preact';
import { useLocation } from 'preact-iso';
import { useState } from 'preact/hooks';
import { ApiError, api } from '../api.ts';
import { useSession } from '../session.ts';

const NAV = [
  { href: '/console/tasks', label: 'Tasks' },
  { href: '/console/approvals', label: 'Approvals' },
];

/** Header with navigation and the signed-in person; the page below it. */
export function Layout(props: { children: ComponentChildren; onSignedOut: () => void }) {
  const session = useSession();
  const { path } = useLocation();
  const [busy, setBusy] = useState(false);
  const [failed, setFailed] = useState<string>();

  const signOut = async () => {
    setBusy(true);
    setFailed(undefined);
    try {
      await api('DELETE', '/session');
    } catch (err) {
      // A session that already ended (401) is signed out all the same; any other failure left it alive, and
      // saying "signed out" then would leave the next person at this browser signed in as this one.
      if (!(err instanceof ApiError && err.status === 401)) {
        setFailed(err instanceof ApiError ? `Sign-out failed: ${err.message} (${err.code})` : `Sign-out failed: ${String(err)}`);
        setBusy(false);
        return;
      }
    }
    props.onSignedOut();
  };

  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href="/console/tasks">
          jit-broker console
        </a>
        <nav aria-label="Console">
          <ul>
            {NAV.map((n) => (
              <li key={n.href}>
                <a href={n.href} aria-current={path === n.href || path.startsWith(`${n.href}/`) ? 'page' : undefined}>
                  {n.label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <div class="who">
          <span class="identity" title={session.identity}>
            {session.name}
            <span class="roles">{[session.admin && 'admin', session.approver && 'approver'].filter(Boolean).join(', ') || 'no role'}</span>
          </span>
          <button type="button" class="secondary" onClick={signOut} disabled={busy}>
            Sign out
          </button>
          {failed ? (
            <span class="error" role="alert">
              {failed}
            </span>
          ) : null}
        </div>
      </header>
      <main id="main">{props.children}</main>
    </>
  );
}
