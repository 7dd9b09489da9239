import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { ApiError } from './api.ts';

export interface Polled<T> {
  data: T | undefined;
  error: ApiError | undefined;
  /** Fetch again now (after an action). */
  reload: () => void;
}

/**
 * Loads `load()` now and every `everyMs` while the page is visible (a hidden
 * tab stops asking), keeping the last good data through a failed refresh.
 * `key` names what is loaded: a new key starts over.
 */
export function usePoll<T>(load: () => Promise<T>, everyMs: number, key: string): Polled<T> {
  const [state, setState] = useState<{ key: string; data?: T; error?: ApiError }>({ key });
  const loadRef = useRef(load);
  loadRef.current = load;
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((n) => n + 1), []);

  useEffect(() => {
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = async () => {
      clearTimeout(timer);
      if (document.visibilityState === 'visible') {
        try {
          const data = await loadRef.current();
          if (!stopped) setState({ key, data });
        } catch (err) {
          const error = err instanceof ApiError ? err : new ApiError(0, 'client', String(err));
          if (!stopped) setState((s) => ({ key, data: s.key === key ? s.data : undefined, error }));
        }
      }
      if (!stopped) timer = setTimeout(run, everyMs);
    };
    const onVisible = () => {
      if (document.visibilityState === 'visible') void run();
    };
    document.addEventListener('visibilitychange', onVisible);
    void run();
    return () => {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener('visibilitychange', onVisible);
    };
  }, [key, everyMs, tick]);

  return state.key === key ? { data: state.data, error: state.error, reload } : { data: undefined, error: undefined, reload };
}

/** The current time, refreshed every `everyMs` (for "time left" columns). */
export function useNow(everyMs = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), everyMs);
    return () => clearInterval(t);
  }, [everyMs]);
  return now;
}

/** Sets the document title and moves focus to the page heading, so a screen reader hears where it landed. */
export function usePageHeading(title: string) {
  const ref = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    document.title = `${title} · jit-broker console`;
  }, [title]);
  useEffect(() => {
    ref.current?.focus({ preventScroll: true });
  }, []);
  return ref;
}
