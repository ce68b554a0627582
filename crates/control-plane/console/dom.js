// DOM building and formatting. Text always goes in as text nodes (never
// innerHTML), so nothing an agent or a stream reports can become markup.

const SVG_NS = 'http://www.w3.org/2000/svg';
const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'selected', 'required', 'multiple', 'readOnly']);

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'on') {
      for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    } else if (PROPS.has(k)) {
      el[k] = v;
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** An HTML element: h('a', {href: '#/x', class: 'y'}, 'text', child, [more]). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** Replace the children of `el`. */
export function fill(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}

const STATE_LABELS = {
  auth_failing: 'auth failing',
  version_refused: 'version refused',
};

/** A coloured badge for an agent state, a job state, a phase or a sink state. */
export function badge(state) {
  const key = String(state || 'unknown').replace(/[^a-z]+/g, '-');
  return h('span', { class: `badge b-${key}` }, STATE_LABELS[state] || String(state || 'unknown'));
}

export function num(n) {
  if (n === null || n === undefined) return '–';
  return Number(n).toLocaleString('en-US');
}

export function rate(n) {
  if (n === null || n === undefined) return '–';
  return n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(1);
}

/** "12 s ago" for an RFC 3339 time or milliseconds, with the time as a tooltip. */
export function ago(t) {
  if (!t) return h('span', {}, '–');
  const ms = typeof t === 'number' ? t : Date.parse(t);
  const secs = Math.max(0, Math.round((Date.now() - ms) / 1000));
  let text;
  if (secs < 90) text = `${secs} s ago`;
  else if (secs < 5400) text = `${Math.round(secs / 60)} min ago`;
  else if (secs < 172800) text = `${Math.round(secs / 3600)} h ago`;
  else text = `${Math.round(secs / 86400)} days ago`;
  return h('time', { datetime: new Date(ms).toISOString(), title: new Date(ms).toISOString() }, text);
}

/** A table in a scrolling wrapper; `rows` are arrays of cells. */
export function table(caption, headers, rows, empty) {
  if (!rows.length && empty) return h('p', { class: 'muted' }, empty);
  return h('div', { class: 'table-wrap', role: 'region', 'aria-label': caption, tabindex: 0 },
    h('table', {},
      h('caption', { class: 'sr-only' }, caption),
      h('thead', {}, h('tr', {}, headers.map(x => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows.map(r => h('tr', {}, r.map(c => h('td', {}, c)))))));
}

/** A definition list from [label, value] pairs. */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(p => p).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '–')]));
}

/** A status line for the outcome of an action. */
export function outcome(el, ok, text) {
  el.className = ok ? 'outcome ok' : 'outcome bad';
  fill(el, text);
}
