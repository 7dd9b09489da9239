import type { ComponentChildren } from 'preact';
import { useLocation } from 'preact-iso';
import { useState } from 'preact/hooks';
import { api } from '../api.ts';
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

  const signOut = async () => {
    setBusy(true);
    try {
      await api('DELETE', '/session');
    } catch {
      // A session that already ended is signed out all the same.
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
        </div>
      </header>
      <main id="main">{props.children}</main>
    </>
  );
}
