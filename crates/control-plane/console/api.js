// The console API, with the session cookie. Requests that change something
// carry the CSRF token, which lives only in this module's memory (never in
// the browser's storage): a reload asks GET /console/session for it again.

let csrf = null;
let onLoggedOut = () => {};

export function setCsrf(token) {
  csrf = token;
}

/** Called when the server says the session is gone. */
export function whenLoggedOut(fn) {
  onLoggedOut = fn;
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

/** `method path` with an optional JSON body; resolves to the JSON answer. */
export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-CSRF-Token'] = csrf || '';
  const opts = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, opts);
  } catch (e) {
    throw new ApiError(0, { error: `the control plane cannot be reached (${e.message})` });
  }
  const text = await r.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { error: text }; }
  }
  if (r.status === 401 && path.startsWith('/api/')) onLoggedOut(data && data.error);
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

/** Save `data` as a JSON file named `name`. */
export function download(name, data) {
  const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: 'application/json' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
