// The job form (create and edit, every field of docs/JOBS.md and
// docs/DELIVERY.md), the security fields it shares with the agent's
// connection test, and the step-by-step report of a connection test.
//
// Secrets: the API shows a stored secret as "******" and keeps the stored
// value when "******" comes back, so an edit never needs, and the page
// never holds, a stored secret.

import { h, fill, badge, outcome } from './dom.js';
import { api } from './api.js';

const MASK = '******';

/** A labelled field whose API errors show next to it. `fields` maps the
 *  API's dotted field name to the field, for errors. */
function row(fields, id, name, label, input, hint) {
  const error = h('p', { class: 'field-error', id: `err-${id}`, role: 'alert' });
  const hintEl = hint ? h('p', { class: 'hint', id: `hint-${id}` }, hint) : null;
  input.id = id;
  if (!input.name) input.name = name;
  input.setAttribute('aria-describedby', [hintEl ? `hint-${id}` : null, `err-${id}`].filter(Boolean).join(' '));
  const el = h('div', { class: 'field', 'data-field': name }, h('label', { for: id }, label), input, hintEl, error);
  if (fields) fields.set(name, { input, error, el });
  return el;
}

function select(options, value) {
  return h('select', {}, options.map(o => Array.isArray(o) ? h('option', { value: o[0], selected: o[0] === value }, o[1]) : h('option', { value: o, selected: o === value }, o)));
}

/** Protocol, SASL and TLS fields; `prefix` makes ids unique, `existing` is
 *  a stored (masked) security object when editing. */
export function securityFields(prefix, existing, fields) {
  const ex = existing || { protocol: 'SASL_SSL' };
  const p = `${prefix}-sec`;
  const protocol = select(['SASL_SSL', 'SSL', 'SASL_PLAINTEXT', 'PLAINTEXT'], ex.protocol || 'SASL_SSL');
  const mechanism = select(['PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512'], (ex.sasl && ex.sasl.mechanism) || 'PLAIN');
  const username = h('input', { value: (ex.sasl && ex.sasl.username) || '', autocomplete: 'off', spellcheck: 'false' });
  const password = h('input', { type: 'password', value: (ex.sasl && ex.sasl.password) || '', autocomplete: 'new-password' });
  const ts = ex.truststore || null;
  const format = select([['', 'none: the agent host\'s CAs'], ['pem', 'PEM'], ['jks', 'JKS'], ['pkcs12', 'PKCS#12']], ts ? ts.format : '');
  const file = h('input', { type: 'file', accept: '.jks,.p12,.pfx,.pem,.crt,.cert,.cer' });
  const tsPassword = h('input', { type: 'password', value: (ts && ts.password) || '', autocomplete: 'new-password' });
  const cert = h('textarea', { rows: 3, spellcheck: 'false' });
  cert.value = ex.client_cert_pem || '';
  const key = h('textarea', { rows: 3, spellcheck: 'false' });
  key.value = ex.client_key_pem || '';
  const sasl = h('fieldset', {}, h('legend', {}, 'SASL'),
    row(fields, `${p}-mech`, 'spec.security.sasl.mechanism', 'Mechanism', mechanism),
    row(fields, `${p}-user`, 'spec.security.sasl.username', 'Username', username, 'OCI Streaming: <tenancy>/<user>/<stream pool OCID>'),
    row(fields, `${p}-pass`, 'spec.security.sasl.password', 'Password', password, existing ? 'OCI Streaming: an auth token. ****** keeps the stored password.' : 'OCI Streaming: an auth token'));
  const tls = h('fieldset', {}, h('legend', {}, 'TLS'),
    row(fields, `${p}-tsformat`, 'spec.security.truststore', 'Truststore', format, 'Optional; the broker\'s certificate is always verified.'),
    row(fields, `${p}-tsfile`, 'spec.security.truststore.data', ts ? 'Truststore file (empty: keep the stored one)' : 'Truststore file', file, 'app_streaming_truststore.jks, a .p12, or a PEM file'),
    row(fields, `${p}-tspass`, 'spec.security.truststore.password', 'Truststore password', tsPassword, 'JKS: optional (without it, no integrity check); PKCS#12: required'),
    h('details', {}, h('summary', {}, 'Client certificate (mutual TLS)'),
      row(fields, `${p}-cert`, 'spec.security.client_cert_pem', 'Client certificate (PEM)', cert),
      row(fields, `${p}-key`, 'spec.security.client_key_pem', 'Client key (PEM)', key, existing && ex.client_key_pem ? '****** keeps the stored key' : null)));
  const sync = () => {
    sasl.hidden = !protocol.value.startsWith('SASL_');
    tls.hidden = !protocol.value.endsWith('SSL');
  };
  protocol.addEventListener('change', sync);
  sync();
  const element = h('div', { class: 'security' }, row(fields, `${p}-protocol`, 'spec.security.protocol', 'Security protocol', protocol, 'OCI Streaming: SASL_SSL'), sasl, tls);
  return { element, protocol, mechanism, username, password, format, file, tsPassword, cert, key, stored: ts };
}

function fileData(file, binary) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onerror = () => reject(r.error);
    r.onload = () => {
      if (!binary) return resolve(r.result);
      const bytes = new Uint8Array(r.result);
      let s = '';
      for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      resolve(btoa(s));
    };
    if (binary) r.readAsArrayBuffer(file); else r.readAsText(file);
  });
}

/** The security object of the API from the fields. */
export async function readSecurity(sec) {
  const out = { protocol: sec.protocol.value };
  if (out.protocol.startsWith('SASL_')) {
    out.sasl = { mechanism: sec.mechanism.value, username: sec.username.value, password: sec.password.value };
  }
  if (out.protocol.endsWith('SSL')) {
    const format = sec.format.value;
    if (format) {
      const f = sec.file.files && sec.file.files[0];
      let data;
      if (f) data = await fileData(f, format !== 'pem');
      else if (sec.stored && sec.stored.format === format) data = sec.stored.data;
      else data = '';
      out.truststore = { format, data };
      if (sec.tsPassword.value) out.truststore.password = sec.tsPassword.value;
    }
    if (sec.cert.value.trim()) out.client_cert_pem = sec.cert.value;
    if (sec.key.value.trim()) out.client_key_pem = sec.key.value;
  }
  return out;
}

function hasMask(v) {
  if (v === MASK) return true;
  if (v && typeof v === 'object') return Object.values(v).some(hasMask);
  return false;
}

/** A connection test's answer, step by step, as the API returns it. */
export function renderTest(r) {
  const rep = r.report || { steps: [] };
  return h('div', { class: 'test-report', id: 'test-report' },
    h('p', {}, badge(r.ok ? 'passed' : 'failed'), ` ${r.message || ''}`, r.agent_id ? h('span', { class: 'muted' }, ` (agent ${r.agent_id}, ${rep.elapsed_ms ?? '–'} ms)`) : null),
    h('ol', { class: 'steps' }, rep.steps.map(st => h('li', { class: `step s-${st.status}`, 'data-step': st.step },
      h('span', { class: 'step-name' }, st.step), ' ', badge(st.status), ` ${st.elapsed_ms ?? 0} ms`,
      st.detail ? h('div', { class: 'step-detail' }, st.detail) : null,
      st.error ? h('div', { class: 'step-error' }, `${st.error.class}: ${st.error.message}`) : null,
      st.certificates && st.certificates.length ? h('ul', { class: 'certs' }, st.certificates.map(c =>
        h('li', {}, `${c.subject} issued by ${c.issuer}, valid ${c.not_before} to ${c.not_after}${c.expired ? ' (expired)' : ''}`))) : null))));
}

function numberOrText(v) {
  const t = v.trim();
  if (t === '') return undefined;
  return /^-?\d+$/.test(t) ? Number(t) : t;
}

function parsePartitions(v) {
  const t = v.trim();
  if (!t || t === 'all') return undefined;
  const parts = t.split(',').map(x => x.trim());
  return parts.every(x => /^\d+$/.test(x)) ? parts.map(Number) : t;
}

function parseOffsets(v) {
  const offsets = {};
  for (const pair of v.split(',').map(x => x.trim()).filter(Boolean)) {
    const [p, o] = pair.split('=').map(x => x.trim());
    offsets[p] = /^-?\d+$/.test(o || '') ? Number(o) : o;
  }
  return { offsets };
}

function headersText(headers) {
  return Object.entries(headers || {}).map(([k, v]) => `${k}: ${v}`).join('\n');
}

function parseHeaders(text) {
  const out = {};
  for (const line of text.split('\n').map(l => l.trim()).filter(Boolean)) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
    else out[line] = '';
  }
  return out;
}

/** Create (`id` null) or edit a job. */
export function jobForm(ctx, id) {
  const wrap = h('div');
  fill(ctx.main, h('p', { class: 'crumbs' }, h('a', { href: '#/jobs' }, 'Poll jobs'), ' / '),
    h('h1', { tabindex: -1 }, id ? `Edit job ${id}` : 'New poll job'), wrap);
  if (!id) {
    build(ctx, wrap, null);
  } else {
    fill(wrap, h('p', { class: 'muted' }, 'Loading…'));
    api('GET', `/api/v1/jobs/${encodeURIComponent(id)}`)
      .then(view => build(ctx, wrap, view))
      .catch(e => fill(wrap, h('p', { class: 'outcome bad' }, e.message)));
  }
  return null;
}

function build(ctx, wrap, view) {
  const def = view ? view.definition : { spec: { security: { protocol: 'SASL_SSL' } }, sink: { kind: 'jsonl', fsync: true }, value_format: 'raw', paused: false };
  const spec = def.spec;
  const fields = new Map();
  const groupNames = ctx.store.snap ? ctx.store.snap.groups.map(g => g.id) : [];
  if (def.group && !groupNames.includes(def.group)) groupNames.push(def.group);
  const inp = (v, extra) => h('input', { value: v === undefined || v === null ? '' : String(v), autocomplete: 'off', spellcheck: 'false', ...extra });

  const idIn = inp(spec.id, { required: true, readOnly: !!view });
  const group = select(groupNames, def.group);
  const bootstrap = inp(spec.bootstrap_servers, { required: true, placeholder: 'cell-1.streaming.eu-frankfurt-1.oci.oraclecloud.com:9092' });
  const topic = inp(spec.topic, { required: true, placeholder: 'USERS' });
  const cgroup = inp(spec.consumer_group, { required: true });
  const partitions = inp(Array.isArray(spec.partitions) ? spec.partitions.join(', ') : 'all');
  const startKind = typeof spec.start === 'object' && spec.start ? 'offsets' : (spec.start || 'earliest');
  const start = select([['earliest', 'earliest'], ['latest', 'latest'], ['offsets', 'given offsets']], startKind);
  const offsets = inp(startKind === 'offsets' ? Object.entries(spec.start.offsets).map(([p, o]) => `${p}=${o}`).join(', ') : '', { placeholder: '0=42, 1=7' });
  const nums = {};
  const numberRow = (key, label, hint) => {
    nums[key] = inp(spec[key], { inputmode: 'numeric', placeholder: hint });
    return row(fields, `job-${key}`, `spec.${key}`, label, nums[key], `default ${hint}`);
  };
  const compression = select(['none', 'lz4', 'zstd'], spec.compression || 'none');
  const sec = securityFields('job', view ? spec.security : null, fields);

  const sink = def.sink;
  const sinkKind = select([['jsonl', 'JSONL file'], ['webhook', 'webhook (HTTPS POST)'], ['kafka', 'kafka (publish into a stream connection)'], ['discard', 'discard']], sink.kind);
  const path = inp(sink.path, { placeholder: '/var/lib/connectivity-control-plane/out/users.jsonl' });
  const fsync = h('input', { type: 'checkbox', checked: sink.fsync !== false });
  const url = inp(sink.url, { placeholder: 'https://integration.example.com/hooks/users' });
  const headers = h('textarea', { rows: 3, spellcheck: 'false', placeholder: 'Authorization: Bearer …' });
  headers.value = headersText(sink.headers);
  const timeout = inp(sink.timeout_ms, { inputmode: 'numeric', placeholder: '10000' });
  // The stream connections, filled in once they are known; the job's own
  // stays selectable even if it has gone (the save then names the fix).
  const connection = select(sink.connection ? [sink.connection] : [], sink.connection);
  api('GET', '/api/v1/streams').then(r => {
    const names = (r.streams || []).map(c => c.name);
    if (sink.connection && !names.includes(sink.connection)) names.push(sink.connection);
    fill(connection, ...names.map(n => h('option', { value: n, selected: n === sink.connection }, n)));
  }).catch(() => {});
  const partitioning = select([['key', 'by key (Kafka\'s default partitioner)'], ['source', 'same partition as in the source']], sink.partitioning || 'key');
  const valueFormat = select([['raw', 'raw: values as they are'], ['connect_payload', 'connect_payload: Kafka Connect payload only']], def.value_format || 'raw');
  const paused = h('input', { type: 'checkbox', checked: !!def.paused });

  const jsonlBox = h('div', {}, row(fields, 'job-sink-path', 'sink.path', 'File (absolute path)', path),
    h('div', { class: 'field check' }, fsync, h('label', { for: 'job-fsync' }, 'fsync after each batch (keep on unless the file is disposable)')));
  fsync.id = 'job-fsync';
  const webhookBox = h('div', {}, row(fields, 'job-sink-url', 'sink.url', 'URL', url, 'https://; http:// only for localhost'),
    row(fields, 'job-sink-headers', 'sink.headers', 'Headers, one "Name: value" a line', headers, view ? 'Values are secrets: ****** keeps the stored value.' : 'Values are secrets: masked everywhere after saving.'),
    row(fields, 'job-sink-timeout', 'sink.timeout_ms', 'Timeout (ms)', timeout, 'default 10000'));
  const kafkaBox = h('div', {}, row(fields, 'job-sink-connection', 'sink.connection', 'Stream connection', connection, 'Defined under Streams; an agent of its group writes the records.'),
    row(fields, 'job-sink-partitioning', 'sink.partitioning', 'Target partition', partitioning));
  const syncSink = () => { jsonlBox.hidden = sinkKind.value !== 'jsonl'; webhookBox.hidden = sinkKind.value !== 'webhook'; kafkaBox.hidden = sinkKind.value !== 'kafka'; };
  sinkKind.addEventListener('change', syncSink);
  syncSink();
  const syncStart = () => { offsets.parentElement.hidden = start.value !== 'offsets'; };
  start.addEventListener('change', () => syncStart());

  const general = h('div', { class: 'form-errors', id: 'form-errors', role: 'alert' });
  const status = h('p', { class: 'outcome', id: 'form-outcome', role: 'status' });
  const testResult = h('div', { id: 'form-test-result', 'aria-live': 'polite' });
  const save = h('button', { type: 'submit', class: 'primary', id: 'job-save' }, view ? 'Save changes' : 'Create job');
  const test = h('button', { type: 'button', id: 'job-test' }, 'Test connection');

  const form = h('form', { class: 'job-form', id: 'job-form', novalidate: true },
    general,
    h('fieldset', { class: 'card grid' }, h('legend', {}, 'What to consume'),
      row(fields, 'job-id', 'spec.id', 'Job id', idIn, view ? 'The id cannot change.' : 'Letters, digits, . _ -; unique.'),
      row(fields, 'job-group', 'group', 'Agent group', group, 'Its agents run the job.'),
      row(fields, 'job-bootstrap', 'spec.bootstrap_servers', 'Bootstrap servers', bootstrap, 'host:port[,host:port…]'),
      row(fields, 'job-topic', 'spec.topic', 'Topic (stream)', topic),
      row(fields, 'job-cgroup', 'spec.consumer_group', 'Consumer group', cgroup),
      row(fields, 'job-partitions', 'spec.partitions', 'Partitions', partitions, '"all", or a list such as 0, 2'),
      row(fields, 'job-start', 'spec.start', 'Start without a committed offset', start),
      row(fields, 'job-offsets', 'spec.start.offsets', 'Start offsets', offsets, 'partition=offset, …; other partitions start at earliest')),
    h('fieldset', { class: 'card grid' }, h('legend', {}, 'Security'), sec.element),
    h('fieldset', { class: 'card grid' }, h('legend', {}, 'Delivery'),
      row(fields, 'job-sink-kind', 'sink', 'Sink', sinkKind), jsonlBox, webhookBox, kafkaBox,
      row(fields, 'job-value-format', 'value_format', 'Value format', valueFormat),
      h('div', { class: 'field check' }, paused, h('label', { for: 'job-paused' }, 'Paused (defined, not assigned to agents)'))),
    h('details', { class: 'card' }, h('summary', {}, 'Batching and tuning'),
      h('div', { class: 'grid' },
        numberRow('max_records', 'Records per batch at most', '2000'),
        numberRow('max_bytes', 'Batch bytes at most', '1048576'),
        numberRow('max_wait_ms', 'Longest wait for a batch (ms)', '100'),
        numberRow('window', 'Batches in flight', '128'),
        numberRow('window_bytes', 'Bytes in flight', '67108864'),
        row(fields, 'job-compression', 'spec.compression', 'Compression', compression, 'default none'),
        numberRow('session_timeout_ms', 'Kafka session timeout (ms)', '6000'))),
    h('div', { class: 'actions' }, save, test, h('a', { href: view ? `#/jobs/${encodeURIComponent(spec.id)}` : '#/jobs', class: 'button' }, 'Cancel')),
    status, testResult);
  paused.id = 'job-paused';
  syncStart();

  const body = async () => {
    const s = { id: idIn.value.trim(), bootstrap_servers: bootstrap.value.trim(), topic: topic.value.trim(), consumer_group: cgroup.value.trim() };
    const parts = parsePartitions(partitions.value);
    if (parts !== undefined) s.partitions = parts;
    s.start = start.value === 'offsets' ? parseOffsets(offsets.value) : start.value;
    for (const [k, el] of Object.entries(nums)) {
      const v = numberOrText(el.value);
      if (v !== undefined) s[k] = v;
    }
    if (compression.value !== 'none') s.compression = compression.value;
    s.security = await readSecurity(sec);
    let sk;
    if (sinkKind.value === 'jsonl') sk = { kind: 'jsonl', path: path.value.trim(), fsync: fsync.checked };
    else if (sinkKind.value === 'webhook') {
      sk = { kind: 'webhook', url: url.value.trim(), headers: parseHeaders(headers.value) };
      const t = numberOrText(timeout.value);
      if (t !== undefined) sk.timeout_ms = t;
      // Not on the form: kept as defined, so an edit does not reset them.
      if (sink.kind === 'webhook') {
        if (sink.mode !== undefined) sk.mode = sink.mode;
        if (sink.max_parallel !== undefined) sk.max_parallel = sink.max_parallel;
      }
    } else if (sinkKind.value === 'kafka') {
      sk = { kind: 'kafka', connection: connection.value, partitioning: partitioning.value };
      if (sink.kind === 'kafka' && sink.max_parallel !== undefined) sk.max_parallel = sink.max_parallel;
    } else sk = { kind: 'discard' };
    return { spec: s, group: group.value, sink: sk, value_format: valueFormat.value, paused: paused.checked };
  };

  const clearErrors = () => {
    fill(general);
    for (const f of fields.values()) {
      fill(f.error);
      f.input.removeAttribute('aria-invalid');
      f.el.classList.remove('invalid');
    }
  };

  /** Each error next to the field it names (the longest matching name). */
  const showErrors = (e) => {
    const list = e.body.fields || [];
    const unplaced = [];
    let first = null;
    for (const fe of list) {
      let best = null;
      for (const name of fields.keys()) {
        if ((fe.field === name || fe.field.startsWith(`${name}.`)) && (!best || name.length > best.length)) best = name;
      }
      const text = `${fe.problem}${fe.fix ? `; fix: ${fe.fix}` : ''}`;
      if (best && !fields.get(best).el.closest('[hidden]')) {
        const f = fields.get(best);
        f.error.append(h('span', {}, fe.field === best ? text : `${fe.field}: ${text}`));
        f.input.setAttribute('aria-invalid', 'true');
        f.el.classList.add('invalid');
        first = first || f.input;
      } else {
        unplaced.push(h('li', {}, `${fe.field}: ${text}`));
      }
    }
    fill(general, list.length ? [] : h('p', {}, e.message), unplaced.length ? h('ul', {}, unplaced) : []);
    if (first) first.focus();
  };

  form.addEventListener('submit', async ev => {
    ev.preventDefault();
    clearErrors();
    save.disabled = true;
    status.className = 'outcome busy';
    fill(status, 'Saving…');
    try {
      const b = await body();
      const saved = view
        ? await api('PUT', `/api/v1/jobs/${encodeURIComponent(spec.id)}`, b)
        : await api('POST', '/api/v1/jobs', b);
      outcome(status, true, 'Saved.');
      ctx.navigate(`#/jobs/${encodeURIComponent(saved.id)}`);
    } catch (e) {
      outcome(status, false, `Not saved: ${e.message.split(': ')[0]}. See the fields marked below.`);
      showErrors(e);
    } finally {
      save.disabled = false;
    }
  });

  test.addEventListener('click', async () => {
    test.disabled = true;
    fill(testResult);
    status.className = 'outcome busy';
    fill(status, `Testing the connection through an agent of group ${group.value}…`);
    try {
      const b = await body();
      const useStored = view && hasMask(b.spec.security);
      const req = useStored
        ? { job: spec.id, topic: b.spec.topic, timeout_ms: 15000 }
        : { bootstrap_servers: b.spec.bootstrap_servers, topic: b.spec.topic, security: b.spec.security, timeout_ms: 15000 };
      const r = await api('POST', `/api/v1/groups/${encodeURIComponent(group.value)}/test-connection`, req);
      outcome(status, r.ok, r.ok ? `Connection test passed${useStored ? ' (with the stored secrets)' : ''}.` : 'Connection test failed.');
      fill(testResult, renderTest(r));
    } catch (e) {
      outcome(status, false, `Connection test: ${e.message}`);
    } finally {
      test.disabled = false;
    }
  });

  fill(wrap, form);
  idIn.focus();
}
