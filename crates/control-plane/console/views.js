// Views of agents and groups: the overview, the agents list, one agent
// (with its commands), the agent groups and the audit log.

import { h, fill, badge, num, rate, ago, table, facts, outcome } from './dom.js';
import { api, download } from './api.js';
import { securityFields, readSecurity, renderTest } from './form.js';

const AGENT_STATES = ['connected', 'draining', 'reconnecting', 'auth_failing', 'version_refused', 'refused', 'gone'];
const BAD_AGENT = new Set(['auth_failing', 'version_refused', 'refused', 'gone']);

/** Whether a job's lag grew over the last minute of its history. */
function lagGrowing(store, job) {
  const ring = store.history.get(job.id) || [];
  if (job.lag === null || job.lag <= 0 || ring.length < 3) return false;
  const now = ring[ring.length - 1];
  const then = ring.find(p => now.t - p.t <= 60000 && p.lag !== null);
  return then !== undefined && then !== now && now.lag > then.lag;
}

/** What needs attention first, most urgent first. */
function attention(store, snap) {
  const items = [];
  for (const a of snap.agents) {
    if (BAD_AGENT.has(a.status.state)) {
      const rank = a.status.state === 'gone' ? 2 : 1;
      items.push([rank, h('li', {}, badge(a.status.state), ' agent ', h('a', { href: `#/agents/${encodeURIComponent(a.id)}` }, a.name), `: ${a.status.reason}`)]);
    }
  }
  for (const f of snap.auth_failures) {
    items.push([1, h('li', {}, badge('auth_failing'), ` ${f.principal} refused ${f.count} time(s), last from ${f.last_remote_addr}: ${f.last_error}`)]);
  }
  for (const j of snap.jobs) {
    const link = h('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id);
    if (j.state === 'sink refusing') {
      const e = j.delivery && j.delivery.last_sink_error;
      items.push([1, h('li', {}, badge('sink refusing'), ' job ', link, `: the sink refuses batches${e ? `: ${e.message}` : ''}`)]);
    } else if (j.state === 'failing') {
      items.push([1, h('li', {}, badge('failing'), ' job ', link, `: ${j.error ? `${j.error.class}: ${j.error.message}` : 'failing'}`)]);
    } else if (j.state === 'sink retrying') {
      items.push([3, h('li', {}, badge('sink retrying'), ' job ', link, ': deliveries are being retried')]);
    } else if (j.state === 'no agent') {
      items.push([3, h('li', {}, badge('no agent'), ' job ', link, `: no connected agent of group ${j.group} runs it`)]);
    }
    if (lagGrowing(store, j)) {
      items.push([2, h('li', {}, badge('lag growing'), ' job ', link, `: lag ${num(j.lag)} and growing over the last minute`)]);
    }
  }
  items.sort((a, b) => a[0] - b[0]);
  return items.map(i => i[1]);
}

export function overview(ctx) {
  const tiles = h('div', { class: 'tiles' });
  const todo = h('section', { 'aria-labelledby': 'att' });
  const groups = h('section', { 'aria-labelledby': 'grp' });
  const jobsBy = h('section', { 'aria-labelledby': 'jst' });
  fill(ctx.main, h('h1', { tabindex: -1 }, 'Overview'), tiles, todo, groups, jobsBy);
  return snap => {
    const connected = snap.agents.filter(a => a.status.state === 'connected').length;
    const rps = snap.jobs.reduce((n, j) => n + (j.paused ? 0 : j.records_per_sec), 0);
    const failing = snap.jobs.filter(j => j.delivery && j.delivery.sink_state !== 'ok').length;
    const running = snap.jobs.filter(j => j.state === 'running').length;
    fill(tiles,
      tile('Agents connected', `${connected} / ${snap.agents.length}`, '#/agents'),
      tile('Jobs running', `${running} / ${snap.jobs.length}`, '#/jobs'),
      tile('Records/s relayed', rate(rps), '#/jobs'),
      tile('Deliveries failing', String(failing), '#/jobs', failing > 0));
    const items = attention(ctx.store, snap);
    fill(todo, h('h2', { id: 'att' }, 'Needs attention'),
      items.length ? h('ul', { class: 'attention' }, items) : h('p', { class: 'muted' }, 'Nothing: every agent is connected and every job delivers.'));
    fill(groups, h('h2', { id: 'grp' }, 'Agent groups'),
      table('Agents of each group by state', ['group', 'agents', ...AGENT_STATES.map(s => s.replace('_', ' ')), 'jobs'],
        snap.groups.map(g => [
          h('a', { href: '#/groups' }, g.id), String(g.agents.total),
          ...AGENT_STATES.map(s => String(g.agents.states[s] || 0)),
          String(snap.jobs.filter(j => j.group === g.id).length),
        ])));
    const byState = new Map();
    for (const j of snap.jobs) byState.set(j.state, (byState.get(j.state) || 0) + 1);
    fill(jobsBy, h('h2', { id: 'jst' }, 'Poll jobs by state'),
      table('Jobs by state', ['state', 'jobs'], [...byState].map(([s, n]) => [badge(s), String(n)]), 'No poll jobs yet.'));
  };
}

function tile(label, value, href, alarm) {
  return h('a', { class: alarm ? 'tile alarm' : 'tile', href }, h('span', { class: 'tile-value' }, value), h('span', { class: 'tile-label' }, label));
}

/** agent id -> [{job, partitions: [n]}] from the jobs' partition lines. */
function partitionsByAgent(snap) {
  const m = new Map();
  for (const j of snap.jobs) {
    for (const p of j.partitions) {
      if (!m.has(p.agent_id)) m.set(p.agent_id, new Map());
      const jm = m.get(p.agent_id);
      if (!jm.has(j.id)) jm.set(j.id, []);
      jm.get(j.id).push(p.partition);
    }
  }
  return m;
}

function heldText(held) {
  if (!held) return '–';
  return [...held].map(([job, ps]) => `${job}: ${ps.sort((a, b) => a - b).join(', ')}`).join('; ');
}

export function agents(ctx) {
  const filter = h('input', { id: 'agent-filter', type: 'search', placeholder: 'name, group, state, host…' });
  const list = h('div', { id: 'agents-table' });
  const failures = h('section', { 'aria-labelledby': 'af' });
  const draw = snap => {
    const q = filter.value.trim().toLowerCase();
    const held = partitionsByAgent(snap);
    const rows = snap.agents
      .filter(a => !q || [a.name, a.id, a.group, a.status.state, a.host.hostname, a.version].join(' ').toLowerCase().includes(q))
      .map(a => [
        h('a', { href: `#/agents/${encodeURIComponent(a.id)}` }, a.name),
        a.group,
        h('span', {}, badge(a.status.state), h('span', { class: 'reason' }, a.status.reason)),
        a.version,
        `${a.host.hostname} (${a.host.os}/${a.host.arch})`,
        a.sessions > 0 ? ago(a.connected_since) : '–',
        ago(a.last_seen),
        a.jobs.length ? a.jobs.map(j => `${j.job_id} (${j.phase})`).join(', ') : '–',
        heldText(held.get(a.id)),
      ]);
    fill(list, h('p', { class: 'muted' }, `${rows.length} of ${snap.agents.length} agents`),
      table('Agents', ['agent', 'group', 'state and reason', 'version', 'host', 'connected since', 'last heartbeat', 'jobs', 'partitions held'], rows,
        snap.agents.length ? 'No agent matches the filter.' : 'No agent has connected yet. Start one with a profile of this control plane (control-plane init prints it).'));
    fill(failures, snap.auth_failures.length ? [h('h2', { id: 'af' }, 'Refused logins'),
      table('Refused agent logins', ['credentials', 'count', 'first', 'last', 'from', 'error'],
        snap.auth_failures.map(f => [f.principal, String(f.count), ago(f.first_at), ago(f.last_at), f.last_remote_addr, f.last_error]))] : []);
  };
  let last = null;
  filter.addEventListener('input', () => last && draw(last));
  fill(ctx.main, h('h1', { tabindex: -1 }, 'Agents'),
    h('div', { class: 'toolbar' }, h('label', { for: 'agent-filter' }, 'Filter'), filter), list, failures);
  return snap => { last = snap; draw(snap); };
}

export function agent(ctx, id) {
  const head = h('div');
  const details = h('section', { 'aria-labelledby': 'ad' });
  const jobsEl = h('section', { 'aria-labelledby': 'aj' });
  const result = h('div', { id: 'command-result', role: 'status', 'aria-live': 'polite' });
  const running = h('p', { class: 'outcome', id: 'command-outcome', role: 'status' });

  async function command(label, method, path, body, after) {
    running.className = 'outcome busy';
    fill(running, `${label}…`);
    fill(result);
    try {
      const r = await api(method, path, body);
      outcome(running, r.ok !== false, `${label}: ${r.message || 'done'}`);
      if (after) after(r);
    } catch (e) {
      outcome(running, false, `${label}: ${e.message}`);
    }
  }

  const base = `/api/v1/agents/${encodeURIComponent(id)}`;
  const confirmRestart = h('button', { type: 'button', class: 'danger', hidden: true, id: 'restart-confirm' }, 'Yes, restart it');
  const restart = h('button', { type: 'button', id: 'restart' }, 'Restart…');
  restart.addEventListener('click', () => { confirmRestart.hidden = false; confirmRestart.focus(); });
  confirmRestart.addEventListener('click', () => {
    confirmRestart.hidden = true;
    command('Restart', 'POST', `${base}/restart`);
  });
  const level = h('select', { id: 'log-level' }, ['error', 'warn', 'info', 'debug', 'trace'].map(l => h('option', { value: l, selected: l === 'info' }, l)));
  const setLevel = h('button', { type: 'button', id: 'set-log-level' }, 'Set log level');
  setLevel.addEventListener('click', () => command('Log level', 'PUT', `${base}/log-level`, { level: level.value }));
  const diag = h('button', { type: 'button', id: 'diagnostics' }, 'Download diagnostics');
  diag.addEventListener('click', () => command('Diagnostics', 'GET', `${base}/diagnostics`, undefined, r => {
    download(`diagnostics-${id}.json`, r);
  }));

  const sec = securityFields('t', null);
  const bootstrap = h('input', { id: 't-bootstrap', name: 'bootstrap_servers', placeholder: 'cell-1.streaming.<region>.oci.oraclecloud.com:9092', required: true });
  const topic = h('input', { id: 't-topic', name: 'topic', placeholder: 'USERS' });
  const testBtn = h('button', { type: 'submit', class: 'primary', id: 'agent-test' }, 'Test connection');
  const testForm = h('form', { class: 'card', id: 'agent-test-form' },
    h('h3', {}, 'Test a stream connection through this agent'),
    h('div', { class: 'field' }, h('label', { for: 't-bootstrap' }, 'Bootstrap servers'), bootstrap),
    h('div', { class: 'field' }, h('label', { for: 't-topic' }, 'Topic'), topic),
    sec.element, h('div', { class: 'actions' }, testBtn));
  testForm.addEventListener('submit', async e => {
    e.preventDefault();
    testBtn.disabled = true;
    const body = { bootstrap_servers: bootstrap.value.trim(), security: await readSecurity(sec), timeout_ms: 15000 };
    if (topic.value.trim()) body.topic = topic.value.trim();
    await command('Connection test', 'POST', `${base}/test-connection`, body, r => fill(result, renderTest(r)));
    testBtn.disabled = false;
  });

  fill(ctx.main, head,
    h('div', { class: 'two' }, h('div', {}, details, jobsEl),
      h('section', { 'aria-labelledby': 'aa' }, h('h2', { id: 'aa' }, 'Commands'),
        h('div', { class: 'toolbar' }, restart, confirmRestart,
          h('label', { for: 'log-level' }, 'Log level'), level, setLevel, diag),
        running, testForm, result)));

  return snap => {
    const a = snap.agents.find(x => x.id === id);
    if (!a) {
      fill(head, h('h1', { tabindex: -1 }, 'Unknown agent'), h('p', {}, `No agent ${id} is known to this control plane.`));
      return;
    }
    fill(head, h('p', { class: 'crumbs' }, h('a', { href: '#/agents' }, 'Agents'), ' / '),
      h('h1', { tabindex: -1 }, a.name, ' ', badge(a.status.state)), h('p', { class: 'reason' }, a.status.reason));
    fill(details, h('h2', { id: 'ad' }, 'Agent'), facts([
      ['id', a.id], ['group', a.group], ['version', `${a.version} (protocol ${a.protocol_version})`],
      ['host', `${a.host.hostname} (${a.host.os}/${a.host.arch})`], ['proxy', a.proxy || 'none'],
      ['credentials', a.principal], ['address', a.remote_addr],
      ['connected since', a.sessions > 0 ? ago(a.connected_since) : '–'], ['last heartbeat', ago(a.last_seen)],
      ['uptime', a.uptime_secs === null ? '–' : `${num(a.uptime_secs)} s`], ['sessions', String(a.sessions)],
      a.disconnected_at ? ['disconnected', h('span', {}, ago(a.disconnected_at), ` (${a.disconnect_reason})`)] : null,
    ]));
    const held = partitionsByAgent(snap).get(a.id);
    fill(jobsEl, h('h2', { id: 'aj' }, 'Jobs and partitions'),
      table('Jobs of this agent', ['job', 'phase', 'partitions held', 'error'], a.jobs.map(j => [
        h('a', { href: `#/jobs/${encodeURIComponent(j.job_id)}` }, j.job_id), badge(j.phase),
        held && held.get(j.job_id) ? held.get(j.job_id).sort((x, y) => x - y).join(', ') : '–',
        j.error ? `${j.error.class}: ${j.error.message}` : '–',
      ]), 'This agent runs no job.'));
  };
}

export function groups(ctx) {
  const list = h('div');
  fill(ctx.main, h('h1', { tabindex: -1 }, 'Agent groups'),
    h('p', { class: 'note' }, 'Agent groups and agent credentials come from the control plane\'s configuration file (control-plane.toml: [[groups]], [[users]], [[oauth_clients]]); add or change them there and restart the control plane. The console shows them and runs jobs on them.'),
    list);
  return snap => {
    fill(list, snap.groups.map(g => {
      const agents = snap.agents.filter(a => a.group === g.id);
      const jobs = snap.jobs.filter(j => j.group === g.id);
      return h('section', { class: 'card', 'aria-label': `group ${g.id}` },
        h('h2', {}, g.id),
        h('p', {}, `${g.agents.total} agent(s): `, Object.entries(g.agents.states).filter(([, n]) => n > 0).map(([s, n]) => h('span', {}, badge(s), ` ${n} `))),
        h('h3', {}, 'Agents'),
        agents.length ? h('ul', {}, agents.map(a => h('li', {}, h('a', { href: `#/agents/${encodeURIComponent(a.id)}` }, a.name), ' ', badge(a.status.state)))) : h('p', { class: 'muted' }, 'No agent yet.'),
        h('h3', {}, 'Poll jobs'),
        jobs.length ? h('ul', {}, jobs.map(j => h('li', {}, h('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id), ' ', badge(j.state)))) : h('p', { class: 'muted' }, 'No job yet.'));
    }));
  };
}

export function audit(ctx) {
  const who = h('input', { id: 'f-who', type: 'search' });
  const action = h('select', { id: 'f-action' }, h('option', { value: '' }, 'any'));
  const target = h('input', { id: 'f-target', type: 'search', placeholder: 'job:users, agent:…' });
  const ok = h('select', { id: 'f-ok' }, h('option', { value: '' }, 'any'), h('option', { value: 'ok' }, 'succeeded'), h('option', { value: 'failed' }, 'failed'));
  const text = h('input', { id: 'f-text', type: 'search' });
  const refresh = h('button', { type: 'button', id: 'audit-refresh' }, 'Refresh');
  const list = h('div', { id: 'audit-table' });
  let entries = [];
  const draw = () => {
    const q = text.value.trim().toLowerCase();
    const rows = entries.filter(e =>
      (!who.value || e.who.toLowerCase().includes(who.value.toLowerCase())) &&
      (!action.value || e.action === action.value) &&
      (!target.value || e.target.includes(target.value)) &&
      (!ok.value || (ok.value === 'ok') === e.ok) &&
      (!q || JSON.stringify(e).toLowerCase().includes(q)));
    fill(list, h('p', { class: 'muted' }, `${rows.length} of ${entries.length} entries (newest first)`),
      table('Audit log', ['when', 'who', 'action', 'target', 'outcome', 'message', 'parameters'], rows.map(e => [
        h('time', { datetime: e.at, title: e.at }, e.at.replace('T', ' ').replace('Z', '')), e.who, e.action, e.target,
        badge(e.ok ? 'ok' : 'failed'), e.message,
        Object.keys(e.params || {}).length ? h('details', {}, h('summary', {}, 'show'), h('pre', {}, JSON.stringify(e.params, null, 1))) : '–',
      ]), 'Nothing recorded yet.'));
  };
  const load = async () => {
    try {
      entries = (await api('GET', '/api/v1/audit?limit=1000')).entries;
    } catch (e) {
      fill(list, h('p', { class: 'outcome bad' }, e.message));
      return;
    }
    const actions = [...new Set(entries.map(e => e.action))].sort();
    const chosen = action.value;
    fill(action, h('option', { value: '' }, 'any'), actions.map(a => h('option', { value: a, selected: a === chosen }, a)));
    draw();
  };
  for (const el of [who, target, text]) el.addEventListener('input', draw);
  for (const el of [action, ok]) el.addEventListener('change', draw);
  refresh.addEventListener('click', load);
  fill(ctx.main, h('h1', { tabindex: -1 }, 'Audit log'),
    h('form', { class: 'toolbar filters', role: 'search', on: { submit: e => e.preventDefault() } },
      field('f-who', 'Who', who), field('f-action', 'Action', action), field('f-target', 'Target', target),
      field('f-ok', 'Outcome', ok), field('f-text', 'Text', text), refresh),
    list);
  load();
  ctx.every(10000, load);
  return null;
}

function field(id, label, input) {
  return h('div', { class: 'field' }, h('label', { for: id }, label), input);
}
