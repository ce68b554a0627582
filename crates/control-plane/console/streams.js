// Stream connections: the list, and one stream's page where an operator
// browses recent records through a read on demand (GET .../records). The
// connection's secrets arrive masked from the API; record keys, values and
// headers are shown as text nodes only, cut to a few hundred characters.

import { h, fill, num, table, facts, outcome } from './dom.js';
import { api } from './api.js';

/** Characters of a key or value shown in the table. */
const SHOWN = 300;

export function list(ctx) {
  const body = h('div', { id: 'streams-table' }, h('p', { class: 'muted' }, 'Loading…'));
  fill(ctx.main, h('h1', { tabindex: -1 }, 'Streams'),
    h('p', { class: 'muted' }, 'Stream connections, created with PUT /api/v1/streams/{name} (docs/CONTROL_PLANE.md, "Streams").'),
    body);
  api('GET', '/api/v1/streams').then(r => {
    const rows = r.streams.map(s => [h('a', { href: `#/streams/${encodeURIComponent(s.name)}` }, s.name), s.group, s.topic]);
    fill(body, table('Streams', ['stream', 'group', 'topic'], rows, 'No stream connection yet.'));
  }, e => fill(body, h('p', { class: 'field-error', role: 'alert' }, e.message)));
}

function shown(v) {
  if (v === null || v === undefined) return '∅';
  const text = typeof v === 'string' ? v : JSON.stringify(v);
  return text.length > SHOWN ? `${text.slice(0, SHOWN)}… (${num(text.length)} characters)` : text;
}

/** The query of the form's choice, or an error message. */
function query(f) {
  const p = new URLSearchParams();
  const v = id => f.querySelector(`#${id}`).value.trim();
  const mode = v('read-mode');
  if (mode === 'latest') p.set('latest', v('read-count') || '20');
  if (mode === 'offset') { p.set('partition', v('read-partition')); p.set('offset', v('read-offset')); }
  if (mode === 'offsets') { p.set('partition', v('read-partition')); p.set('offsets', v('read-offsets')); }
  if (mode === 'timestamp') {
    const ms = Date.parse(v('read-time'));
    if (Number.isNaN(ms)) return { error: 'give a time such as 2024-12-05T00:00:00Z' };
    p.set('timestamp', String(ms));
    if (v('read-partition')) p.set('partition', v('read-partition'));
  }
  p.set('max_records', v('read-max') || '100');
  return { q: p.toString() };
}

function recordRows(records) {
  return records.map(r => [
    String(r.partition), String(r.offset),
    r.timestamp === null ? '–' : new Date(r.timestamp).toISOString(),
    shown(r.key), shown(r.value),
    (r.headers || []).map(x => x.name).join(', ') || '–',
  ]);
}

export function page(ctx, name) {
  const about = h('div', { id: 'stream-facts' });
  const result = h('div', { id: 'stream-records' });
  const status = h('p', { id: 'stream-outcome', role: 'status' });
  const input = (id, label, attrs) => [h('label', { for: id }, label), h('input', { id, name: id, ...attrs })];
  const form = h('form', { class: 'toolbar', id: 'read-form' },
    h('label', { for: 'read-mode' }, 'Read'),
    h('select', { id: 'read-mode', name: 'read-mode' },
      h('option', { value: 'latest' }, 'latest N of each partition'),
      h('option', { value: 'offset' }, 'a partition from an offset'),
      h('option', { value: 'offsets' }, 'offsets and ranges'),
      h('option', { value: 'timestamp' }, 'from a time')),
    input('read-count', 'N', { type: 'number', min: 1, value: 20 }),
    input('read-partition', 'partition', { type: 'number', min: 0 }),
    input('read-offset', 'offset', { type: 'number', min: 0 }),
    input('read-offsets', 'offsets', { placeholder: '6,10-11,16' }),
    input('read-time', 'time', { placeholder: '2024-12-05T00:00:00Z' }),
    input('read-max', 'at most', { type: 'number', min: 1, max: 10000, value: 100 }),
    h('button', { type: 'submit', class: 'primary', id: 'read-go' }, 'Read'));
  form.addEventListener('submit', async e => {
    e.preventDefault();
    const { q, error } = query(form);
    if (error) return outcome(status, false, error);
    try {
      const r = await api('GET', `/api/v1/streams/${encodeURIComponent(name)}/records?${q}`);
      outcome(status, true, `${num(r.count)} records${r.truncated ? ' (more matched: raise "at most")' : ''}; watermarks ${r.partitions.map(p => `${p.partition}: ${p.low}–${p.high}`).join(', ')}`);
      fill(result, table(`Records of ${name}`, ['partition', 'offset', 'timestamp', 'key', 'value', 'headers'], recordRows(r.records), 'No records.'));
    } catch (err) {
      outcome(status, false, err.message);
    }
  });
  fill(ctx.main, h('h1', { tabindex: -1 }, `Stream ${name}`), about, form, status, result);
  api('GET', `/api/v1/streams/${encodeURIComponent(name)}`).then(c => {
    const sasl = c.security && c.security.sasl;
    fill(about, facts([
      ['group', c.group], ['bootstrap servers', c.bootstrap_servers], ['topic', c.topic],
      ['security', c.security ? c.security.protocol : '–'],
      sasl ? ['SASL user', `${sasl.username} (password ${sasl.password})`] : null,
      c.security && c.security.truststore ? ['truststore', `${c.security.truststore.format} (data ${c.security.truststore.data})`] : null,
    ]));
  }, e => fill(about, h('p', { class: 'field-error', role: 'alert' }, e.message)));
}
