/**
 * Preloaded into the bench broker by `PROFILE_KIND=heap` (profile.ts):
 * samples every allocation, freed or not, and writes the profile to
 * HEAP_PROFILE_FILE when the process exits. `--heap-prof` keeps only what
 * is still alive at exit, which says nothing about the garbage a request
 * makes; the inspector's sampling can keep what the scavenger and the
 * major GC collected as well. HEAP_PROFILE_PROMOTED=1 leaves out what the
 * scavenger collected: what is left was promoted (or is still alive), the
 * bytes that fill the old generation and bring its mark-compacts.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';

const file = process.env.HEAP_PROFILE_FILE;
if (file) {
  const session = new Session();
  session.connect();
  session.post('HeapProfiler.startSampling', {
    samplingInterval: 8192,
    includeObjectsCollectedByMajorGC: true,
    includeObjectsCollectedByMinorGC: process.env.HEAP_PROFILE_PROMOTED !== '1',
  });
  // A session on this thread answers synchronously, so this works in 'exit'.
  process.on('exit', () => {
    session.post('HeapProfiler.stopSampling', (err, res) => {
      if (!err) writeFileSync(file, JSON.stringify(res.profile));
    });
  });
}
