// The console's only way to the dispatcher: the public REST API and its
// event streams. With api.tokens set, a token is asked for once and kept for
// the tab (sessionStorage); it travels as a bearer header, never in a URL,
// which is why event streams are read with fetch and not EventSource.

const KEY = 'bora.token';
let config = null;
let asking = null;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function loadConfig() {
  if (!config) {
    const r = await fetch('config.json');
    config = r.ok ? await r.json() : { auth: false };
  }
  return config;
}

// Resolves once the person gave a token; `refused` says the last one was.
function askToken(refused) {
  if (asking) return asking;
  const dialog = document.getElementById('token-dialog');
  const form = document.getElementById('token-form');
  const input = document.getElementById('token-input');
  const error = document.getElementById('token-error');
  error.hidden = !refused;
  error.textContent = refused ? 'That token was refused; try another.' : '';
  input.value = '';
  asking = new Promise((resolve) => {
    const done = (ev) => {
      ev.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      sessionStorage.setItem(KEY, t);
      form.removeEventListener('submit', done);
      dialog.close();
      asking = null;
      resolve();
    };
    form.addEventListener('submit', done);
    dialog.addEventListener('cancel', (ev) => ev.preventDefault());
  });
  dialog.showModal();
  input.focus();
  return asking;
}

// Headers of every call; asks for a token first when one is needed.
async function headers(extra) {
  const h = { Accept: 'application/json', ...extra };
  const { auth } = await loadConfig();
  if (auth && !sessionStorage.getItem(KEY)) await askToken(false);
  const t = sessionStorage.getItem(KEY);
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

// One REST call; JSON in and out. A 401 asks for another token and retries.
export async function api(method, path, body) {
  for (;;) {
    const extra = body === undefined ? {} : { 'Content-Type': 'application/json' };
    const r = await fetch(path, {
      method,
      headers: await headers(extra),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status === 401) {
      sessionStorage.removeItem(KEY);
      await askToken(true);
      continue;
    }
    if (r.status === 204) return null;
    const data = await r.json().catch(() => null);
    if (!r.ok) {
      const e = data && data.error ? data.error : {};
      throw new ApiError(r.status, e.code || 'error', e.message || r.statusText);
    }
    return data;
  }
}

export const get = (path) => api('GET', path);
export const post = (path, body = {}) => api('POST', path, body);
export const del = (path) => api('DELETE', path);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Follows a server-sent event stream: `on(event, data, id)` for each event.
// After a dropped connection it reconnects with Last-Event-ID, so nothing
// is missed or repeated; an `end` event closes it for good. `from` is the
// id to start after (Last-Event-ID of the first request). Returns a stop
// function.
export function follow(path, on, from = null) {
  const ctl = new AbortController();
  let last = from;
  let ended = false;
  const run = async () => {
    while (!ctl.signal.aborted && !ended) {
      try {
        const h = await headers({ Accept: 'text/event-stream' });
        if (last !== null && last !== undefined) h['Last-Event-ID'] = String(last);
        const r = await fetch(path, { headers: h, signal: ctl.signal });
        if (r.status === 401) {
          sessionStorage.removeItem(KEY);
          await askToken(true);
          continue;
        }
        if (!r.ok) throw new ApiError(r.status, 'stream', r.statusText);
        setStatus('live');
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n?/g, '\n');
          let cut;
          while ((cut = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            const ev = parse(block);
            if (!ev) continue;
            if (ev.id !== null) last = ev.id;
            if (ev.event === 'end') ended = true;
            on(ev.event, ev.data, ev.id);
          }
        }
      } catch (e) {
        if (ctl.signal.aborted) return;
      }
      if (!ended && !ctl.signal.aborted) {
        setStatus('reconnecting…');
        await sleep(1000);
      }
    }
    if (ended) setStatus('');
  };
  run();
  return () => ctl.abort();
}

// One SSE block: its event name, JSON data and id (null for comments).
function parse(block) {
  let event = 'message';
  let id = null;
  const data = [];
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? '' : line.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') id = value;
  }
  if (!data.length) return null;
  let parsed;
  try {
    parsed = JSON.parse(data.join('\n'));
  } catch {
    parsed = data.join('\n');
  }
  return { event, data: parsed, id };
}

export function setStatus(text) {
  const el = document.getElementById('status');
  if (el) el.textContent = text;
}
