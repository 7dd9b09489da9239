import type { ApiError } from '../api.ts';
import { usePageHeading } from '../hooks.ts';
import { useSession } from '../session.ts';

/** The page for something this person may not see: who they are, and what it takes. */
export function Forbidden(props: { what: string; needs?: string; detail?: string }) {
  const session = useSession();
  const heading = usePageHeading('Not allowed');
  return (
    <section class="problem" aria-labelledby="problem-title">
      <h1 id="problem-title" ref={heading} tabIndex={-1}>
        You may not see this page
      </h1>
      <p>
        You are signed in as <code>{session.identity}</code>, which may not see {props.what}.
        {props.needs ? ` It takes an identity listed in \`${props.needs}\` in the broker's config.` : ''}
      </p>
      {props.detail ? <p class="muted">The broker said: {props.detail}</p> : null}
      <p>
        <a href="/console/tasks">Back to tasks</a>
      </p>
    </section>
  );
}

export function NotFound(props: { what?: string }) {
  const heading = usePageHeading('Not found');
  return (
    <section class="problem" aria-labelledby="problem-title">
      <h1 id="problem-title" ref={heading} tabIndex={-1}>
        Not found
      </h1>
      <p>{props.what ?? 'There is no console page at this address.'}</p>
      <p>
        <a href="/console/tasks">Back to tasks</a>
      </p>
    </section>
  );
}

/** A failed load, shown where the data would be; 403 and 404 get their own pages instead. */
export function LoadError(props: { error: ApiError }) {
  return (
    <p class="error" role="alert">
      Could not load this: {props.error.message} <span class="muted">({props.error.code})</span>
    </p>
  );
}

/** Picks the page for an error of a page's main data. */
export function PageError(props: { error: ApiError; what: string; needs?: string }) {
  if (props.error.status === 403) return <Forbidden what={props.what} needs={props.needs} detail={props.error.message} />;
  if (props.error.status === 404 && props.error.code !== 'route_not_found') return <NotFound what={props.error.message} />;
  return <LoadError error={props.error} />;
}
