// Poll jobs: the list, and one job's page (partitions, charts, agents,
// sink, and pause / resume / drain / delete).

import { h, fill, badge, num, rate, ago, table, facts, outcome } from './dom.js';
import { api } from './api.js';
import { lineChart } from './chart.js';

/** The charts show the history kept (at least 2, at most 10 minutes). */
function chartSpan(ring) {
  if (ring.length < 2) return 2 * 60 * 1000;
  return Math.min(10 * 60 * 1000, Math.max(2 * 60 * 1000, ring[ring.length - 1].t - ring[0].t));
}

function lastError(j) {
  if (j.error) return `${j.error.class}: ${j.error.message}`;
  const e = j.delivery && j.delivery.last_sink_error;
  if (e && j.delivery.sink_state !== 'ok') return `sink: ${e.message}`;
  return '–';
}

export function list(ctx) {
  const filter = h('input', { id: 'job-filter', type: 'search', placeholder: 'id, group, topic, state…' });
  const body = h('div', { id: 'jobs-table' });
  let last = null;
  const draw = snap => {
    const q = filter.value.trim().toLowerCase();
    const rows = snap.jobs
      .filter(j => !q || [j.id, j.group, j.topic, j.state].join(' ').toLowerCase().includes(q))
      .map(j => [
        h('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id), badge(j.state), j.group, j.topic,
        rate(j.records_per_sec), num(j.lag), num(j.delivery ? j.delivery.records_delivered : null), lastError(j),
      ]);
    fill(body, table('Poll jobs', ['job', 'state', 'group', 'topic', 'records/s', 'lag', 'delivered', 'last error'], rows,
      snap.jobs.length ? 'No job matches the filter.' : 'No poll job yet: create one.'));
  };
  filter.addEventListener('input', () => last && draw(last));
  fill(ctx.main, h('h1', { tabindex: -1 }, 'Poll jobs'),
    h('div', { class: 'toolbar' }, h('a', { href: '#/jobs/new', class: 'button primary', id: 'new-job' }, 'New job'),
      h('label', { for: 'job-filter' }, 'Filter'), filter),
    body);
  return snap => { last = snap; draw(snap); };
}

function sinkFacts(def, d) {
  const sink = def.sink;
  const where = sink.kind === 'jsonl' ? ['file', `${sink.path}${sink.fsync === false ? ' (no fsync)' : ''}`]
    : sink.kind === 'webhook' ? ['URL', sink.url]
    : sink.kind === 'kafka' ? ['stream connection', `${sink.connection} (partitioned ${sink.partitioning === 'source' ? 'as in the source' : 'by key'})`]
    : ['discard', 'records are dropped'];
  return facts([
    ['kind', sink.kind], where,
    sink.kind === 'webhook' ? ['headers', Object.keys(sink.headers || {}).join(', ') || 'none'] : null,
    ['value format', def.value_format],
    ['state', d ? badge(d.sink_state) : '–'],
    ['records delivered', num(d && d.records_delivered)],
    ['last delivery', d && d.last_delivered_at_ms ? ago(d.last_delivered_at_ms) : 'none yet'],
    ['batches waiting', num(d && d.queued_batches)],
    ['last sink error', d && d.last_sink_error ? `${d.last_sink_error.message}${d.last_sink_error.retryable ? ' (retrying)' : ''}` : 'none'],
  ]);
}

function specFacts(def) {
  const sp = def.spec;
  const sec = sp.security || {};
  return facts([
    ['group', def.group], ['bootstrap servers', sp.bootstrap_servers], ['topic', sp.topic],
    ['consumer group', sp.consumer_group],
    ['partitions', Array.isArray(sp.partitions) ? sp.partitions.join(', ') : 'all'],
    ['start', typeof sp.start === 'object' ? JSON.stringify(sp.start.offsets) : sp.start],
    ['security', `${sec.protocol}${sec.sasl ? `, SASL ${sec.sasl.mechanism} as ${sec.sasl.username}` : ''}${sec.truststore ? `, ${sec.truststore.format} truststore` : ''}`],
    ['batches', `${num(sp.max_records)} records, ${num(sp.max_bytes)} bytes, ${num(sp.max_wait_ms)} ms; window ${num(sp.window)}`],
  ]);
}

export function page(ctx, id) {
  const path = `/api/v1/jobs/${encodeURIComponent(id)}`;
  let view = null;
  const head = h('div');
  const status = h('p', { class: 'outcome', id: 'job-outcome', role: 'status', 'aria-live': 'polite' });
  const charts = h('section', { class: 'charts', 'aria-label': 'lag and records per second' });
  const parts = h('section', { 'aria-labelledby': 'jp' });
  const agentsEl = h('section', { 'aria-labelledby': 'ja' });
  const sinkEl = h('section', { class: 'card', 'aria-labelledby': 'js' });
  const specEl = h('section', { class: 'card', 'aria-labelledby': 'jd' });

  const act = async (label, method, suffix, body) => {
    status.className = 'outcome busy';
    fill(status, `${label}…`);
    try {
      const r = await api(method, `${path}${suffix}`, body);
      if (method === 'DELETE') {
        ctx.navigate('#/jobs');
        return;
      }
      view = r && r.job ? r.job : r;
      outcome(status, true, `${label}: ${r && r.message ? r.message : 'done'}`);
      drawDefinition();
      if (ctx.store.snap) draw(ctx.store.snap);
    } catch (e) {
      outcome(status, false, `${label}: ${e.message}`);
    }
  };
  const pause = h('button', { type: 'button', id: 'job-pause' }, 'Pause');
  const resume = h('button', { type: 'button', id: 'job-resume' }, 'Resume');
  const drain = h('button', { type: 'button', id: 'job-drain' }, 'Drain');
  const edit = h('a', { class: 'button', id: 'job-edit', href: `#/jobs/${encodeURIComponent(id)}/edit` }, 'Edit');
  const del = h('button', { type: 'button', class: 'danger', id: 'job-delete' }, 'Delete…');
  const delConfirm = h('button', { type: 'button', class: 'danger', id: 'job-delete-confirm', hidden: true }, 'Yes, delete this job');
  pause.addEventListener('click', () => act('Pause', 'POST', '/pause'));
  resume.addEventListener('click', () => act('Resume', 'POST', '/resume'));
  drain.addEventListener('click', () => act('Drain', 'POST', '/drain', { timeout_ms: 30000 }));
  del.addEventListener('click', () => { delConfirm.hidden = false; delConfirm.focus(); });
  delConfirm.addEventListener('click', () => act('Delete', 'DELETE', ''));

  function drawDefinition() {
    if (!view) return;
    fill(specEl, h('h2', { id: 'jd' }, 'Definition'), h('p', { class: 'muted' }, `defined in the ${view.defined_in}${view.defined_in === 'config' ? ' file: console changes are replaced at the next start' : ''}; updated ${view.updated_at}`), specFacts(view.definition));
  }

  function draw(snap) {
    const j = snap.jobs.find(x => x.id === id);
    if (!j) {
      fill(head, h('h1', { tabindex: -1 }, `No job ${id}`), h('p', {}, 'It was deleted, or never created.'));
      return;
    }
    pause.hidden = j.paused;
    resume.hidden = !j.paused;
    fill(head, h('p', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Poll jobs'), ' / '),
      h('h1', { tabindex: -1 }, j.id, ' ', h('span', { id: 'job-state' }, badge(j.state))),
      h('p', {}, `topic ${j.topic}, group ${j.group}, ${rate(j.records_per_sec)} records/s, lag `, h('strong', { id: 'job-lag' }, num(j.lag)),
        ', delivered ', h('strong', { id: 'job-delivered' }, num(j.delivery ? j.delivery.records_delivered : 0))),
      j.error ? h('p', { class: 'outcome bad' }, `${j.error.class}: ${j.error.message}`) : null);
    const ring = ctx.store.history.get(id) || [];
    const span = chartSpan(ring);
    fill(charts,
      lineChart('Lag (records not yet committed)', ring.map(p => ({ t: p.t, v: p.lag })), span, 'lag'),
      lineChart('Records/s relayed', ring.map(p => ({ t: p.t, v: p.rps })), span, 'rps'));
    const rates = ctx.store.partitionRates.get(id) || new Map();
    fill(parts, h('h2', { id: 'jp' }, 'Partitions'),
      table('Partitions', ['partition', 'agent', 'fetched', 'relayed', 'acked', 'committed', 'high watermark', 'lag', 'records/s'],
        j.partitions.map(p => [String(p.partition),
          h('span', {}, h('a', { href: `#/agents/${encodeURIComponent(p.agent_id)}` }, p.agent_name), ' ', badge(p.agent_state)),
          num(p.fetched), num(p.relayed), num(p.acked), num(p.committed), p.high_watermark < 0 ? 'unknown' : num(p.high_watermark), num(p.lag),
          rate(rates.get(p.partition) ? rates.get(p.partition).rate : null)]),
        'No agent reports this job yet.'));
    fill(agentsEl, h('h2', { id: 'ja' }, 'Agents'),
      table('Agents running this job', ['agent', 'agent state', 'phase', 'records/s', 'error'], j.agents.map(a => [
        h('a', { href: `#/agents/${encodeURIComponent(a.agent_id)}` }, a.agent_name), badge(a.agent_state), badge(a.phase),
        rate(a.records_per_sec), a.error ? `${a.error.class}: ${a.error.message}` : '–']), 'No agent has reported this job.'));
    if (view) fill(sinkEl, h('h2', { id: 'js' }, 'Sink'), sinkFacts(view.definition, j.delivery));
  }

  fill(ctx.main, head,
    h('div', { class: 'toolbar', role: 'group', 'aria-label': 'job actions' }, pause, resume, drain, edit, del, delConfirm),
    status, charts, parts, agentsEl, h('div', { class: 'two' }, sinkEl, specEl));
  api('GET', path).then(v => {
    view = v;
    drawDefinition();
    if (ctx.store.snap) draw(ctx.store.snap);
  }).catch(e => outcome(status, false, e.message));
  return draw;
}
