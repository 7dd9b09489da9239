/** Formatting shared by the pages. Times are shown in the viewer's locale and zone. */

const abs = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

export function toDate(v: string | number | undefined): Date | undefined {
  if (v === undefined) return undefined;
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? undefined : d;
}

export function formatTime(v: string | number | undefined): string {
  const d = toDate(v);
  return d ? abs.format(d) : '—';
}

/** "4 min 10 s", "2 h 5 min", "12 s". */
export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

/** Time left until `until`, or how long ago it passed. */
export function timeLeft(until: string | number | undefined, now: number): string {
  const d = toDate(until);
  if (!d) return '—';
  const ms = d.getTime() - now;
  return ms >= 0 ? `${formatDuration(ms)} left` : `ended ${formatDuration(-ms)} ago`;
}

/** A TTL an approver decides on: exact, so "2 d 0 h" is never shown for 2 d 0 h 59 min (`2 d 0 h (176,399 s)`). */
export function formatTtl(seconds: number | undefined): string {
  if (seconds === undefined) return 'grant default';
  const shown = formatDuration(seconds * 1000);
  return seconds < 3600 || (seconds % 60 === 0 && (seconds < 172_800 || seconds % 3600 === 0))
    ? shown
    : `${shown} (${seconds.toLocaleString('en-US')} s)`;
}
