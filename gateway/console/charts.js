// Small live charts: a ring of samples per series, drawn as an inline SVG polyline.

const KEEP = 60;
const series = new Map();

/** Records `value` for `name` (one sample per refresh); returns the samples kept. */
export function record(name, value) {
  const points = series.get(name) ?? [];
  points.push(value);
  if (points.length > KEEP) points.shift();
  series.set(name, points);
  return points;
}

/** Per-refresh differences of a counter's samples (its rate per refresh). */
export function rates(points) {
  return points.slice(1).map((v, i) => Math.max(0, v - points[i]));
}

/** An SVG sparkline of `points`, or an empty string with fewer than two. */
export function sparkline(points) {
  if (points.length < 2) return '';
  const max = Math.max(...points, 1);
  const step = 100 / (KEEP - 1);
  const offset = 100 - step * (points.length - 1);
  const coords = points.map((v, i) => `${(offset + i * step).toFixed(1)},${(30 - (v / max) * 28).toFixed(1)}`);
  return `<svg viewBox="0 0 100 32" preserveAspectRatio="none" aria-hidden="true"><polyline points="${coords.join(' ')}"/></svg>`;
}
