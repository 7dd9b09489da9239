export interface Series {
  name: string;
  /** Class for the line colour (defined in styles.css). */
  tone: 'a' | 'b' | 'c';
  values: (number | null)[];
}

const W = 320;
const H = 120;
const PAD = { top: 8, right: 8, bottom: 18, left: 36 };

const fmt = (n: number) => (n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2).replace(/\.?0+$/, '') || '0');

/**
 * A small line chart in SVG: presentation attributes only (no inline style, so
 * the CSP needs no 'unsafe-inline'), and a text summary as its accessible name
 * for people who do not see it.
 */
export function LineChart(props: { title: string; unit: string; series: Series[]; times: string[]; windowLabel: string; floor: number }) {
  const all = props.series.flatMap((s) => s.values.filter((v): v is number => v !== null));
  // The y axis never shrinks below `floor`, so an idle broker draws a flat line, not noise blown up.
  const max = Math.max(props.floor, ...all) * 1.1;
  const n = Math.max(2, props.times.length);
  const x = (i: number) => PAD.left + (i / (n - 1)) * (W - PAD.left - PAD.right);
  const y = (v: number) => H - PAD.bottom - (v / max) * (H - PAD.top - PAD.bottom);
  const summary = props.series
    .map((s) => {
      const vals = s.values.filter((v): v is number => v !== null);
      const last = vals.at(-1);
      return `${s.name}: ${last === undefined ? 'no data' : `latest ${fmt(last)} ${props.unit}, peak ${fmt(Math.max(...vals))}`}`;
    })
    .join('; ');
  const label = `${props.title} over ${props.windowLabel}. ${summary}.`;

  return (
    <figure class="chart">
      <figcaption>
        {props.title} <span class="muted">({props.unit})</span>
      </figcaption>
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={label} preserveAspectRatio="none">
        <line class="axis" x1={PAD.left} y1={H - PAD.bottom} x2={W - PAD.right} y2={H - PAD.bottom} />
        <line class="axis" x1={PAD.left} y1={PAD.top} x2={PAD.left} y2={H - PAD.bottom} />
        <text class="tick" x={PAD.left - 4} y={PAD.top + 8} text-anchor="end">
          {fmt(max / 1.1)}
        </text>
        <text class="tick" x={PAD.left - 4} y={H - PAD.bottom} text-anchor="end">
          0
        </text>
        <text class="tick" x={W - PAD.right} y={H - 4} text-anchor="end">
          now
        </text>
        <text class="tick" x={PAD.left} y={H - 4}>
          −{props.windowLabel}
        </text>
        {props.series.map((s) => {
          const offset = n - s.values.length;
          const pts = s.values
            .map((v, i) => (v === null ? null : `${x(i + offset).toFixed(1)},${y(v).toFixed(1)}`))
            .filter(Boolean)
            .join(' ');
          return pts ? <polyline key={s.name} class={`line tone-${s.tone}`} points={pts} /> : null;
        })}
      </svg>
      <ul class="legend">
        {props.series.map((s) => (
          <li key={s.name}>
            <span class={`swatch tone-${s.tone}`} aria-hidden="true" />
            {s.name}
          </li>
        ))}
      </ul>
    </figure>
  );
}
