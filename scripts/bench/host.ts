/**
 * What the host's kernel does beside the bench: DAMON (the kernel's Data
 * Access MONitor) and its `kdamond` threads.
 *
 * On the VMs this bench runs on, a kdamond samples the accessed bits of all
 * physical memory every 500 ms (`operations: paddr`, a `pageout` scheme: the
 * host reclaiming the guest's cold pages) and takes one of the two cores for
 * 5-13 ms each time. Open-loop requests due then wait: the broker's p99 at
 * 1,000/s was 12.7-19.3 ms with it on and 4.8-6.6 ms with it off, the same
 * code minutes apart (docs/benchmarks.md, "The kernel's 500-ms stall"). The
 * bench does not touch it; it reports whether it is on and how much CPU its
 * threads took during each open-loop phase, so a tail can be read for what it
 * is.
 */
import { readdirSync, readFileSync } from 'node:fs';

const DAMON = '/sys/kernel/mm/damon/admin/kdamonds';

const read = (file: string): string | undefined => {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    return undefined;
  }
};

/** `on (paddr, sampling every 500 ms)`, `off`, or `absent` (no DAMON sysfs, or not Linux). */
export function damonState(): string {
  const n = Number(read(`${DAMON}/nr_kdamonds`) ?? 0);
  const on: string[] = [];
  for (let i = 0; i < n; i++) {
    if (read(`${DAMON}/${i}/state`) !== 'on') continue;
    const ctx = `${DAMON}/${i}/contexts/0`;
    const ops = read(`${ctx}/operations`) ?? '?';
    const sampleUs = Number(read(`${ctx}/monitoring_attrs/intervals/sample_us`));
    on.push(`${ops}, sampling every ${Number.isFinite(sampleUs) ? `${sampleUs / 1000} ms` : '?'}`);
  }
  if (on.length > 0) return `on (${on.join('; ')})`;
  return n > 0 ? 'off' : 'absent';
}

/**
 * CPU time (ms) that every kdamond thread has used so far; 0 where there is
 * none. From `/proc/<pid>/schedstat` (nanoseconds): the tick-sampled
 * utime/stime of `/proc/<pid>/stat` read 0 for these kernel threads here.
 */
export function kdamondCpuMs(): number {
  let total = 0;
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p));
  } catch {
    return 0;
  }
  for (const pid of pids) {
    if (!read(`/proc/${pid}/comm`)?.startsWith('kdamond')) continue;
    total += Number(read(`/proc/${pid}/schedstat`)?.split(' ')[0] ?? 0) / 1e6;
  }
  return total;
}
