// A small line chart in SVG, drawn from the page's bounded history.

import { s, h } from './dom.js';

const W = 640;
const H = 180;
const PAD = { l: 56, r: 12, t: 12, b: 24 };

function nice(max) {
  if (max <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 5, 10]) if (m * p >= max) return m * p;
  return 10 * p;
}

function label(v) {
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  return String(Math.round(v * 10) / 10);
}

/** `points` are [{t, v}] (v null: unknown); `span` is the time axis in ms. */
export function lineChart(title, points, span, cls) {
  const now = points.length ? points[points.length - 1].t : Date.now();
  const known = points.filter(p => p.v !== null && p.v !== undefined);
  const max = nice(Math.max(0, ...known.map(p => p.v)));
  const x = t => PAD.l + ((t - (now - span)) / span) * (W - PAD.l - PAD.r);
  const y = v => H - PAD.b - (v / max) * (H - PAD.t - PAD.b);
  const grid = [0, 0.5, 1].map(f => [
    s('line', { x1: PAD.l, x2: W - PAD.r, y1: y(max * f), y2: y(max * f), class: 'grid' }),
    s('text', { x: PAD.l - 6, y: y(max * f) + 4, class: 'axis', 'text-anchor': 'end' }, label(max * f)),
  ]);
  const ticks = [span, span / 2, 0].map(ago => s('text', { x: x(now - ago), y: H - 6, class: 'axis', 'text-anchor': ago === span ? 'start' : ago === 0 ? 'end' : 'middle' },
    ago === 0 ? 'now' : ago >= 60000 ? `-${Math.round(ago / 6000) / 10} min` : `-${Math.round(ago / 1000)} s`));
  const line = known.length > 1
    ? s('polyline', { points: known.map(p => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(' '), class: `line ${cls}` })
    : null;
  const last = known.length ? known[known.length - 1].v : null;
  return h('figure', { class: 'chart' },
    h('figcaption', {}, title, ': ', h('strong', {}, last === null ? 'unknown' : label(last))),
    s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title} over the last ${Math.round(span / 60000)} minutes, now ${last === null ? 'unknown' : label(last)}` },
      grid, ticks, line));
}
