import { ErrorBoundary, LocationProvider, Route, Router, useLocation } from 'preact-iso';
import { useEffect, useState } from 'preact/hooks';
import { ApiError, api, type Session, sessionEvents } from './api.ts';
import { Layout } from './components/layout.tsx';
import { NotFound } from './components/problem.tsx';
import { AgentPage } from './pages/agent.tsx';
import { ApprovalPage } from './pages/approval.tsx';
import { ApprovalsPage } from './pages/approvals.tsx';
import { SignIn, type SignInReason } from './pages/sign-in.tsx';
import { TaskPage } from './pages/task.tsx';
import { TasksPage } from './pages/tasks.tsx';
import { SessionContext } from './session.ts';

type State = { kind: 'loading' } | { kind: 'signed-in'; session: Session } | { kind: 'signed-out'; reason: SignInReason };

/** Loads the session, then shows the console; any 401 later (or the session's end) brings the sign-in page back. */
export function App() {
  const [state, setState] = useState<State>({ kind: 'loading' });

  useEffect(() => {
    api<Session | { signedIn: false }>('GET', '/session').then(
      (s) => setState(s.signedIn ? { kind: 'signed-in', session: s } : { kind: 'signed-out', reason: 'none' }),
      (err) => setState({ kind: 'signed-out', reason: err instanceof ApiError && err.status === 401 ? 'none' : 'unreachable' }),
    );
    const onSignedOut = () => setState((s) => (s.kind === 'signed-in' ? { kind: 'signed-out', reason: 'expired' } : s));
    sessionEvents.addEventListener('signed-out', onSignedOut);
    return () => sessionEvents.removeEventListener('signed-out', onSignedOut);
  }, []);

  // The session ends with the ID token: show it at that moment, not at the next click.
  useEffect(() => {
    if (state.kind !== 'signed-in') return undefined;
    const ms = new Date(state.session.expiresAt).getTime() - Date.now();
    const t = setTimeout(() => setState({ kind: 'signed-out', reason: 'expired' }), Math.max(0, Math.min(ms, 2 ** 31 - 1)));
    return () => clearTimeout(t);
  }, [state]);

  if (state.kind === 'loading') return <p class="loading">Loading…</p>;
  if (state.kind === 'signed-out') return <SignIn reason={state.reason} />;
  return (
    <SessionContext.Provider value={state.session}>
      <LocationProvider>
        <Layout onSignedOut={() => setState({ kind: 'signed-out', reason: 'signed-out' })}>
          <ErrorBoundary>
            <Router>
              <Route path="/console" component={Home} />
              <Route path="/console/tasks" component={TasksPage} />
              <Route path="/console/tasks/:taskId" component={TaskPage} />
              <Route path="/console/approvals" component={ApprovalsPage} />
              <Route path="/console/approvals/:approvalId" component={ApprovalPage} />
              <Route path="/console/agents/:agent" component={AgentPage} />
              <Route default component={NotFound} />
            </Router>
          </ErrorBoundary>
        </Layout>
      </LocationProvider>
    </SessionContext.Provider>
  );
}

/** /console/ lands on the tasks list. */
function Home() {
  const { route } = useLocation();
  useEffect(() => route('/console/tasks', true), [route]);
  return null;
}
