import { watch, type FSWatcher } from 'node:fs';

/**
 * Calls `onChange` once things are quiet for `debounceMs` after a change in
 * `dir` (editors and ConfigMap updates write several times per save), and on
 * SIGHUP. Returns the function that stops both.
 */
export function watchPolicyDir(dir: string, debounceMs: number, onChange: () => void): () => void {
  let timer: NodeJS.Timeout | undefined;
  const schedule = () => {
    clearTimeout(timer);
    timer = setTimeout(onChange, debounceMs);
    timer.unref();
  };
  let watcher: FSWatcher | undefined = watch(dir, { persistent: false }, schedule);
  // A watcher error (directory removed) must not crash the broker; SIGHUP still works.
  watcher.on('error', () => {
    watcher?.close();
    watcher = undefined;
  });
  process.on('SIGHUP', onChange);
  return () => {
    clearTimeout(timer);
    watcher?.close();
    process.off('SIGHUP', onChange);
  };
}
