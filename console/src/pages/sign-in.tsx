import { useEffect, useRef } from 'preact/hooks';

export type SignInReason = 'none' | 'expired' | 'signed-out' | 'unreachable';

const REASON: Record<SignInReason, string | undefined> = {
  none: undefined,
  expired: 'Your session has ended. Sign in again to go on where you were.',
  'signed-out': 'You are signed out.',
  unreachable: 'The broker could not be reached. Try again in a moment.',
};

/** Why the last sign-in failed, as /console/callback reports it (?signin_error=). */
const SIGNIN_ERROR: Record<string, string> = {
  provider_unavailable: 'The sign-in provider could not be reached.',
  provider_error: 'The sign-in provider did not complete the sign-in.',
  state_unknown: 'That sign-in link has expired or was already used.',
  browser_mismatch: 'The sign-in was started in another browser or its cookie was lost.',
  token_invalid: 'The broker does not accept the identity the provider returned.',
};

/**
 * Sign-in: the button sends the browser to /console/login, which redirects to
 * the provider; the provider sends it back to /console/callback, and that lands
 * on the page that was open (deep links survive).
 */
export function SignIn(props: { reason: SignInReason }) {
  const heading = useRef<HTMLHeadingElement>(null);
  const params = new URLSearchParams(location.search);
  const error = params.get('signin_error');
  const message = error ? (SIGNIN_ERROR[error] ?? 'The sign-in failed.') : REASON[props.reason];

  useEffect(() => {
    document.title = 'Sign in · jit-broker console';
    heading.current?.focus({ preventScroll: true });
  }, []);

  const go = (prompt?: 'login') => {
    const here = location.pathname.startsWith('/console/') ? location.pathname : '/console/tasks';
    const q = new URLSearchParams({ return: here === '/console/' ? '/console/tasks' : here });
    if (prompt) q.set('prompt', prompt);
    location.assign(`/console/login?${q}`);
  };

  return (
    <main id="main" class="sign-in">
      <h1 ref={heading} tabIndex={-1}>
        jit-broker console
      </h1>
      {message ? (
        <p class={error ? 'error' : 'notice'} role={error ? 'alert' : 'status'}>
          {message}
        </p>
      ) : (
        <p>Approve credential requests, watch tasks and stop agents.</p>
      )}
      <div class="actions">
        {/* After signing out, the provider asks for a login again, so another person can sign in here. */}
        <button type="button" onClick={() => go(props.reason === 'signed-out' ? 'login' : undefined)}>
          Sign in
        </button>
      </div>
    </main>
  );
}
