/**
 * Preloaded into the bench broker by scripts/bench/alloc.ts (`--import`):
 * the first SIGUSR2 opens a window, the second closes it and writes what the
 * heap did in between to GC_WINDOW_FILE (JSON). V8's GCProfiler records every
 * GC's space sizes before and after, so bytes allocated in the young
 * generation (what sets how often it is scavenged) and bytes promoted to the
 * old one (what sets how often a mark-compact comes) are exact counts, not
 * samples. SIGWINCH writes a heap snapshot (a full GC first) to
 * GC_WINDOW_FILE.<n>.heapsnapshot, to diff what stays alive across a load.
 * GC_WINDOW_SAMPLE=all also takes a sampling heap profile over the window
 * (one sample per 8 KiB, freed objects included: where the bytes are
 * allocated); =promoted leaves out what the scavenger freed (what was
 * promoted, or is still alive). Written to GC_WINDOW_FILE.heapprofile.
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { GCProfiler, getHeapSpaceStatistics, writeHeapSnapshot } from 'node:v8';

/** GCProfiler's space entries are camelCase, getHeapSpaceStatistics's snake_case. */
type Spaces = ({ spaceName: string; spaceUsedSize: number } | { space_name: string; space_used_size: number })[];
const used = (s: Spaces, name: string): number => {
  for (const x of s) {
    if ('spaceName' in x && x.spaceName === name) return x.spaceUsedSize;
    if ('space_name' in x && x.space_name === name) return x.space_used_size;
  }
  return 0;
};
const young = (s: Spaces): number => used(s, 'new_space') + used(s, 'new_large_object_space');
const old = (s: Spaces): number => used(s, 'old_space') + used(s, 'large_object_space');

const file = process.env.GC_WINDOW_FILE;
if (file) {
  let profiler: GCProfiler | undefined;
  let start: { spaces: Spaces; cpu: NodeJS.CpuUsage; at: number } | undefined;
  let snapshots = 0;
  const sample = process.env.GC_WINDOW_SAMPLE;
  const session = sample ? new Session() : undefined;
  session?.connect();
  process.on('SIGWINCH', () => {
    snapshots += 1;
    writeHeapSnapshot(`${file}.${snapshots}.heapsnapshot`);
  });
  process.on('SIGUSR2', () => {
    if (!profiler) {
      profiler = new GCProfiler();
      start = { spaces: getHeapSpaceStatistics() as unknown as Spaces, cpu: process.cpuUsage(), at: performance.now() };
      profiler.start();
      session?.post('HeapProfiler.startSampling', {
        samplingInterval: 8192,
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: sample === 'all',
      });
      return;
    }
    const stats = profiler.stop()?.statistics ?? [];
    const end = getHeapSpaceStatistics() as unknown as Spaces;
    profiler = undefined;
    // A session on this thread answers synchronously.
    session?.post('HeapProfiler.stopSampling', (err, res) => {
      if (!err) writeFileSync(`${file}.heapprofile`, JSON.stringify(res.profile));
    });
    let prev = start!.spaces;
    let allocated = 0;
    let promoted = 0;
    let oldDirect = 0;
    let scavenges = 0;
    let scavengeMs = 0;
    const majors: { oldBeforeMB: number; oldAfterMB: number; ms: number }[] = [];
    for (const g of stats) {
      const before = g.beforeGC.heapSpaceStatistics as unknown as Spaces;
      const after = g.afterGC.heapSpaceStatistics as unknown as Spaces;
      allocated += young(before) - young(prev);
      oldDirect += Math.max(0, old(before) - old(prev));
      if (g.gcType === 'Scavenge' || g.gcType === 'MinorMarkSweep') {
        scavenges += 1;
        scavengeMs += g.cost / 1000;
        promoted += old(after) - old(before);
      } else if (g.gcType === 'MarkSweepCompact') {
        majors.push({ oldBeforeMB: old(before) / 2 ** 20, oldAfterMB: old(after) / 2 ** 20, ms: g.cost / 1000 });
      }
      prev = after;
    }
    allocated += young(end) - young(prev);
    oldDirect += Math.max(0, old(end) - old(prev));
    const cpu = process.cpuUsage(start!.cpu);
    writeFileSync(
      file,
      JSON.stringify({
        seconds: (performance.now() - start!.at) / 1000,
        cpuMs: (cpu.user + cpu.system) / 1000,
        allocated,
        promoted,
        oldDirect,
        scavenges,
        scavengeMs,
        majors,
        oldStartMB: old(start!.spaces) / 2 ** 20,
        oldEndMB: old(end) / 2 ** 20,
      }),
    );
  });
}
