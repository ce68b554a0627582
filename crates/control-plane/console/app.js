// The console's entry point: login, the live event stream, the bounded
// history the charts draw, and the router (views by URL fragment).

import { h, fill } from './dom.js';
import { api, setCsrf, whenLoggedOut } from './api.js';
import * as views from './views.js';
import * as jobs from './jobs.js';
import * as streams from './streams.js';
import { jobForm } from './form.js';

/** Seconds of history kept per job for the charts (a ring per job). */
const HISTORY_SECONDS = 600;

const main = document.getElementById('main');
const top = document.getElementById('top');
const live = document.getElementById('live');

/** What every view reads: the session, the latest snapshot, the history. */
const store = {
  session: null,
  snap: null,
  /** job id -> [{t, lag, rps}] oldest first, at most HISTORY_SECONDS long. */
  history: new Map(),
  /** job id -> partition -> {t, relayed, rate}: per-partition rates. */
  partitionRates: new Map(),
};

let events = null;
let retry = null;
/** The current view's refresh, called with each snapshot. */
let update = null;
/** Timers of the current view, cleared when it changes. */
let timers = [];

function setLive(text, ok) {
  live.textContent = text;
  live.className = ok ? 'live on' : 'live off';
}

function record(snap) {
  const t = Date.parse(snap.at);
  const keep = new Set();
  for (const j of snap.jobs) {
    keep.add(j.id);
    let ring = store.history.get(j.id);
    if (!ring) store.history.set(j.id, (ring = []));
    ring.push({ t, lag: j.lag, rps: j.records_per_sec });
    while (ring.length && t - ring[0].t > HISTORY_SECONDS * 1000) ring.shift();
    let parts = store.partitionRates.get(j.id);
    if (!parts) store.partitionRates.set(j.id, (parts = new Map()));
    for (const p of j.partitions) {
      const prev = parts.get(p.partition);
      let r = null;
      if (prev && t > prev.t && p.relayed >= prev.relayed) r = ((p.relayed - prev.relayed) * 1000) / (t - prev.t);
      parts.set(p.partition, { t, relayed: p.relayed, rate: r ?? (prev ? prev.rate : null) });
    }
  }
  for (const id of [...store.history.keys()]) {
    if (!keep.has(id)) {
      store.history.delete(id);
      store.partitionRates.delete(id);
    }
  }
}

/** Run `fn` (which redraws parts of the view) and give the focus back to
 *  the same control if it was redrawn, so keyboard users keep their place. */
function keepFocus(fn) {
  const a = document.activeElement;
  let key = null;
  if (a && a !== main && main.contains(a)) {
    if (a.id) key = `#${CSS.escape(a.id)}`;
    else if (a.getAttribute('href')) key = `[href="${CSS.escape(a.getAttribute('href'))}"]`;
  }
  fn();
  if (key && !document.contains(a)) {
    const b = main.querySelector(key);
    if (b) b.focus();
  }
}

function startEvents() {
  stopEvents();
  events = new EventSource('/api/v1/events');
  events.addEventListener('snapshot', e => {
    const snap = JSON.parse(e.data);
    store.snap = snap;
    record(snap);
    setLive('live', true);
    if (update) keepFocus(() => update(snap));
  });
  events.addEventListener('open', () => setLive('live', true));
  events.addEventListener('error', () => {
    setLive('reconnecting…', false);
    if (events && events.readyState === EventSource.CLOSED) {
      // The server refused the stream: logged out, or too many streams.
      checkSession().then(ok => {
        if (ok) retry = setTimeout(startEvents, 5000);
      });
    }
  });
}

function stopEvents() {
  if (events) events.close();
  events = null;
  clearTimeout(retry);
}

async function checkSession() {
  try {
    const s = await api('GET', '/console/session');
    started(s);
    return true;
  } catch {
    showLogin('Your session has ended; log in again.');
    return false;
  }
}

function started(session) {
  store.session = session;
  setCsrf(session.csrf);
  document.getElementById('who').textContent = `signed in as ${session.name}`;
  top.hidden = false;
}

function showLogin(message) {
  stopEvents();
  store.session = null;
  store.snap = null;
  setCsrf(null);
  top.hidden = true;
  update = null;
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true, 'aria-describedby': 'login-error' });
  const error = h('p', { class: 'field-error', id: 'login-error', role: 'alert' }, message || '');
  const button = h('button', { type: 'submit', class: 'primary' }, 'Log in');
  const form = h('form', { class: 'login card', id: 'login-form' },
    h('h1', {}, 'Connectivity console'),
    h('label', { for: 'token' }, 'Console token'),
    input, error, button,
    h('p', { class: 'muted' }, 'A token of a [[console_tokens]] entry in control-plane.toml. It becomes a session cookie for 12 hours; the page keeps nothing else.'));
  form.addEventListener('submit', async e => {
    e.preventDefault();
    button.disabled = true;
    const ok = await login(input.value, error);
    button.disabled = false;
    if (ok) {
      if (!location.hash || location.hash === '#/login') location.hash = '#/overview';
      else route();
    }
  });
  fill(main, form);
  input.focus();
}

async function login(token, errorEl) {
  try {
    const s = await api('POST', '/console/login', { token });
    started(s);
    startEvents();
    return true;
  } catch (e) {
    if (errorEl) errorEl.textContent = e.message;
    return false;
  }
}

async function logout() {
  try { await api('POST', '/console/logout'); } catch { /* the session is gone either way */ }
  history.replaceState(null, '', '#/overview');
  showLogin('Logged out.');
}

const ROUTES = [
  [/^#\/overview$/, views.overview],
  [/^#\/agents$/, views.agents],
  [/^#\/agents\/([^/]+)$/, views.agent],
  [/^#\/jobs$/, jobs.list],
  [/^#\/jobs\/new$/, ctx => jobForm(ctx, null)],
  [/^#\/jobs\/([^/]+)\/edit$/, (ctx, id) => jobForm(ctx, id)],
  [/^#\/jobs\/([^/]+)$/, jobs.page],
  [/^#\/streams$/, streams.list],
  [/^#\/streams\/([^/]+)$/, streams.page],
  [/^#\/groups$/, views.groups],
  [/^#\/audit$/, views.audit],
];

function route() {
  if (!store.session) return;
  for (const t of timers) clearInterval(t);
  timers = [];
  update = null;
  const hash = location.hash || '#/overview';
  for (const a of document.querySelectorAll('#nav a')) {
    const current = hash === a.getAttribute('href') || hash.startsWith(`${a.getAttribute('href')}/`);
    if (current) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const ctx = {
    main,
    store,
    every: (ms, fn) => timers.push(setInterval(fn, ms)),
    navigate: to => { location.hash = to; },
  };
  for (const [re, view] of ROUTES) {
    const m = hash.match(re);
    if (m) {
      fill(main);
      update = view(ctx, ...m.slice(1).map(decodeURIComponent)) || null;
      if (update && store.snap) update(store.snap);
      const title = main.querySelector('h1');
      document.title = `${title ? title.textContent : 'Console'} · Connectivity console`;
      return;
    }
  }
  location.replace('#/overview');
}

async function boot() {
  whenLoggedOut(() => showLogin('Your session has ended; log in again.'));
  document.getElementById('logout').addEventListener('click', logout);
  window.addEventListener('hashchange', route);
  // A login link (`/console/#token=...`, printed by the demo): the token
  // is taken out of the address bar and history at once.
  if (location.hash.startsWith('#token=')) {
    const token = decodeURIComponent(location.hash.slice('#token='.length));
    history.replaceState(null, '', `${location.pathname}#/overview`);
    if (await login(token, null)) return route();
    return showLogin('The login link was refused; enter the console token.');
  }
  try {
    started(await api('GET', '/console/session'));
    startEvents();
    route();
  } catch {
    showLogin();
  }
}

boot();
