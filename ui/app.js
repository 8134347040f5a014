// bora's web console: pages routed by the URL's hash, every state read from
// the REST API and the event streams (nothing is kept that could drift: a
// page that changes reads again, and a workflow's stream resumes with
// Last-Event-ID from the summary it drew).

import { ApiError, del, follow, get, post, setStatus } from './api.js';
import { GraphView } from './graph.js';

const STATES = ['waiting', 'queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'skipped'];
const ENDED = new Set(['succeeded', 'failed', 'timed_out', 'cancelled', 'skipped']);
const main = document.getElementById('main');

// What the current page must stop when another is shown.
let cleanups = [];
const onLeave = (f) => cleanups.push(f);

// --- small DOM helpers ----------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

const enc = encodeURIComponent;
const badge = (state) => h('span', { class: `badge state-${state}`, 'data-state': state }, state);
const when = (t) => (t ? new Date(t).toLocaleString() : '—');
const total = (counts) => STATES.reduce((n, s) => n + (counts[s] || 0), 0);

function counts(c) {
  return h('span', { class: 'counts' },
    STATES.filter((s) => c[s]).map((s) => h('span', { title: s },
      h('i', { class: `fill-${s}` }), `${s} ${c[s].toLocaleString()}`)));
}

// A bar of every state's share; its title says how many ended.
function progress(c) {
  const n = total(c);
  const done = STATES.filter((s) => ENDED.has(s)).reduce((m, s) => m + (c[s] || 0), 0);
  const bar = h('span', { class: 'progress', title: `${done} of ${n} ended`, role: 'progressbar',
    'aria-valuemin': 0, 'aria-valuemax': n, 'aria-valuenow': done });
  for (const s of STATES) {
    if (!c[s]) continue;
    const part = h('span', { class: `fill-${s}` });
    part.style.width = `${(100 * c[s]) / n}%`;
    bar.append(part);
  }
  return bar;
}

function fail(e) {
  const msg = e instanceof ApiError ? `${e.status} ${e.code}: ${e.message}` : String(e);
  main.replaceChildren(h('p', { class: 'error' }, msg));
}

// Runs `f` every `ms` while the page is shown (after it first ran).
function every(ms, f) {
  let timer = null;
  let stopped = false;
  const loop = async () => {
    try { await f(); } catch (e) { setStatus(String(e.message || e)); }
    if (!stopped) timer = setTimeout(loop, ms);
  };
  timer = setTimeout(loop, ms);
  onLeave(() => { stopped = true; clearTimeout(timer); });
}

// Calls `f` at most once per `ms` (a number, or a function giving it), the
// last call winning.
function throttle(ms, f) {
  let timer = null;
  onLeave(() => clearTimeout(timer));
  return () => {
    if (timer) return;
    timer = setTimeout(async () => {
      timer = null;
      try { await f(); } catch (e) { setStatus(String(e.message || e)); }
    }, typeof ms === 'function' ? ms() : ms);
  };
}

// An action button: runs `f`, then `after`; shows the API's refusal.
function action(label, f, after, cls = '') {
  const b = h('button', { class: cls, 'data-action': label.toLowerCase() }, label);
  b.addEventListener('click', async () => {
    b.disabled = true;
    try {
      await f();
      setStatus(`${label}: done`);
    } catch (e) {
      setStatus(`${label}: ${e.message}`);
    }
    b.disabled = false;
    await after();
  });
  return b;
}

// --- workflows --------------------------------------------------------------

async function allWorkflows(state) {
  // Oldest first, page by page; the newest are shown first.
  const out = [];
  let marker = null;
  for (let i = 0; i < 20; i += 1) {
    const q = new URLSearchParams({ limit: '200' });
    if (state) q.set('state', state);
    if (marker) q.set('marker', marker);
    const page = await get(`/v1/workflows?${q}`);
    out.push(...page.workflows);
    marker = page.next_marker;
    if (!marker) break;
  }
  return out.reverse();
}

async function workflowsPage() {
  const filter = h('select', { id: 'wf-state', 'aria-label': 'state' },
    h('option', { value: '' }, 'every state'),
    ['empty', 'waiting', 'running', 'succeeded', 'failed', 'cancelled'].map((s) => h('option', { value: s }, s)));
  const body = h('tbody');
  const table = h('table', { id: 'workflows' },
    h('thead', {}, h('tr', {}, ['Name', 'State', 'Tasks', 'Progress', 'Counts', 'Created'].map((t) => h('th', {}, t)))),
    body);
  main.replaceChildren(h('h1', {}, 'Workflows'), h('div', { class: 'toolbar' }, filter), table);
  const draw = async () => {
    const list = await allWorkflows(filter.value);
    body.replaceChildren(...list.map((w) => h('tr', { 'data-id': w.id, 'data-state': w.state },
      h('td', {}, h('a', { href: `#/workflows/${w.id}` }, w.name || w.id)),
      h('td', {}, badge(w.state), w.paused ? h('span', { class: 'tag' }, 'paused') : null),
      h('td', {}, total(w.task_counts).toLocaleString()),
      h('td', {}, progress(w.task_counts)),
      h('td', {}, counts(w.task_counts)),
      h('td', { class: 'muted' }, when(w.created_at)))));
    if (!list.length) body.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No workflows.')));
    main.dataset.ready = '1';
  };
  filter.addEventListener('change', draw);
  await draw();
  every(2000, draw);
}

// --- one workflow -------------------------------------------------------------

async function workflowPage(wf) {
  const head = h('div', { class: 'head', id: 'wf-head' });
  const graphBox = h('div', { class: 'panel graph-panel', id: 'graph' });
  const note = h('div', { class: 'graph-note' });
  const listBox = h('div', { class: 'panel', id: 'task-list' });
  main.replaceChildren(head, h('div', { class: 'split' }, graphBox, listBox));
  const open = (n) => {
    if (n.task_id) location.hash = `#/workflows/${wf}/tasks/${n.task_id}`;
  };
  const graph = new GraphView(graphBox, open);
  graphBox.append(note, h('div', { class: 'graph-tools' },
    h('button', { onclick: () => graph.zoom(1.25), title: 'zoom in' }, '+'),
    h('button', { onclick: () => graph.zoom(0.8), title: 'zoom out' }, '−'),
    h('button', { onclick: () => graph.fit(), title: 'fit' }, 'fit')));

  const drawHead = async () => {
    const w = await get(`/v1/workflows/${enc(wf)}`);
    const refresh = async () => { await drawHead(); await drawGraph(); await list.reload(); };
    head.replaceChildren(...[
      h('h1', {}, w.name || w.id), badge(w.state),
      w.paused ? h('span', { class: 'tag', id: 'paused' }, 'paused') : null,
      progress(w.task_counts), counts(w.task_counts),
      h('span', { class: 'toolbar' },
        w.paused
          ? action('Resume', () => post(`/v1/workflows/${enc(wf)}/resume`), refresh)
          : action('Pause', () => post(`/v1/workflows/${enc(wf)}/pause`), refresh),
        action('Rerun', () => post(`/v1/workflows/${enc(wf)}/rerun`), refresh),
        action('Cancel', () => post(`/v1/workflows/${enc(wf)}/cancel`), refresh, 'danger')),
    ].filter(Boolean));
    head.dataset.state = w.state;
  };
  let summary = null;
  let took = 0;
  const drawGraph = async () => {
    const t0 = performance.now();
    summary = await get(`/v1/workflows/${enc(wf)}/graph`);
    took = performance.now() - t0;
    graph.render(summary);
    note.textContent = `${summary.tasks.toLocaleString()} tasks · ${summary.nodes.length} nodes`
      + (summary.folded ? ' · chains, fan-outs and groups folded' : '')
      + (summary.truncated ? ' · large graph: layers merged' : '');
    graphBox.dataset.ready = '1';
  };
  const list = taskList(wf, listBox);
  await Promise.all([drawHead(), drawGraph(), list.reload()]);
  main.dataset.ready = '1';

  const reloadHead = throttle(700, drawHead);
  // A large workflow's summary costs the dispatcher more: read it again
  // at most every 1.5 s, or every 5 times as long as it last took.
  const reloadGraph = throttle(() => Math.max(1500, 5 * took), drawGraph);
  // The stream closes once the workflow ended; a rerun or new tasks make
  // it go on, so an ended stream is opened again every 3 s after the last
  // event seen: it gives what happened since (nothing, usually) and ends.
  let last = summary ? summary.last_event_id : null;
  let stop = null;
  const listen = () => {
    let carried = false;
    stop = follow(`/v1/workflows/${enc(wf)}/events`, (event, data, id) => {
      if (id !== null) {
        last = id;
        carried = true;
      }
      if (event === 'task') {
        if (!graph.update(data.task_id, data.state)) reloadGraph();
        list.update(data.task_id, data.state);
        reloadHead();
      } else if (event === 'workflow') {
        reloadHead();
        reloadGraph();
      } else if (event === 'end') {
        stop = null;
        if (carried) reloadHead();
      }
    }, last);
  };
  listen();
  onLeave(() => stop && stop());
  every(3000, () => {
    if (!stop) listen();
  });
}

// The paginated task list beside the graph.
function taskList(wf, box) {
  const filter = h('select', { id: 'task-state', 'aria-label': 'task state' },
    h('option', { value: '' }, 'every state'), STATES.map((s) => h('option', { value: s }, s)));
  const body = h('tbody');
  const more = h('button', { id: 'more-tasks' }, 'More tasks');
  const moreBox = h('div', { class: 'more' }, more);
  box.replaceChildren(h('div', { class: 'toolbar' }, h('strong', {}, 'Tasks'), filter),
    h('table', {}, h('thead', {}, h('tr', {}, ['Task', 'State', 'Server', 'Why it waits'].map((t) => h('th', {}, t)))), body),
    moreBox);
  let marker = null;
  const rows = new Map();
  const load = async () => {
    const q = new URLSearchParams({ limit: '100' });
    if (filter.value) q.set('state', filter.value);
    if (marker) q.set('marker', marker);
    const page = await get(`/v1/workflows/${enc(wf)}/tasks?${q}`);
    for (const t of page.tasks) {
      const state = h('td', {}, badge(t.state));
      const tr = h('tr', { 'data-id': t.id, 'data-name': t.name },
        h('td', {}, h('a', { href: `#/workflows/${wf}/tasks/${t.id}` }, t.name),
          t.children ? h('span', { class: 'muted' }, ` (${t.children.length} servers)`) : null),
        state,
        h('td', {}, t.server_id ? [h('span', { class: `dot${t.server_online ? ' on' : ''}` }), t.server_id] : '—'),
        h('td', { class: 'muted' }, t.blocked_by.join(', ')));
      rows.set(t.id, { state, why: tr.lastChild });
      body.append(tr);
    }
    marker = page.next_marker;
    moreBox.hidden = !marker;
  };
  more.addEventListener('click', load);
  const reload = async () => {
    marker = null;
    rows.clear();
    body.replaceChildren();
    await load();
  };
  filter.addEventListener('change', reload);
  return {
    reload,
    update(id, state) {
      const row = rows.get(id);
      if (!row) return;
      row.state.replaceChildren(badge(state));
      // What it waited for is read again when the list is; not now.
      if (state !== 'waiting') row.why.replaceChildren();
    },
  };
}

// --- one task ---------------------------------------------------------------

async function taskPage(wf, task) {
  const path = `/v1/workflows/${enc(wf)}/tasks/${enc(task)}`;
  const top = h('div');
  const attempts = h('div', { id: 'attempts' });
  const stdout = h('pre', { class: 'out', id: 'stdout' });
  const stderr = h('pre', { class: 'out', id: 'stderr' });
  main.replaceChildren(top, h('h2', {}, 'Live output'),
    h('div', { class: 'grid2' }, h('div', {}, h('div', { class: 'muted' }, 'stdout'), stdout),
      h('div', {}, h('div', { class: 'muted' }, 'stderr'), stderr)),
    h('h2', {}, 'Attempts'), attempts);
  let shownAttempt = null;
  let stopOutput = null;
  onLeave(() => stopOutput && stopOutput());

  const output = (t) => {
    if (t.attempt === shownAttempt || t.attempt < 1) return;
    shownAttempt = t.attempt;
    if (stopOutput) stopOutput();
    stdout.textContent = '';
    stderr.textContent = '';
    stopOutput = follow(`${path}/output?follow=true&attempt=${t.attempt}`, (event, data) => {
      if (event === 'stdout') stdout.append(data.text);
      else if (event === 'stderr') stderr.append(data.text);
    });
  };

  let seen = '';
  const draw = async (force = true) => {
    const t = await get(path);
    // Unchanged since the last look: nothing to draw again.
    const now = JSON.stringify(t);
    if (!force && now === seen) return t;
    seen = now;
    const refresh = () => draw();
    const acts = [];
    if (!ENDED.has(t.state)) acts.push(action('Cancel', () => del(path), refresh, 'danger'));
    if (ENDED.has(t.state) && t.state !== 'succeeded') acts.push(action('Rerun', () => post(`${path}/rerun`), refresh));
    if (t.group === 'bora.approval' && t.state === 'running') {
      const comment = h('input', { id: 'comment', placeholder: 'comment (optional)', 'aria-label': 'comment' });
      const body = () => (comment.value ? { comment: comment.value } : {});
      acts.push(comment,
        action('Approve', () => post(`${path}/approve`, body()), refresh),
        action('Reject', () => post(`${path}/reject`, body()), refresh, 'danger'));
    }
    const facts = [
      ['Workflow', h('a', { href: `#/workflows/${wf}` }, t.workflow_id)],
      ['Server', t.server_id
        ? [h('span', { class: `dot${t.server_online ? ' on' : ''}` }),
          `${t.server_id} (${t.server_online ? 'online' : 'offline'}, last seen ${when(t.server_last_seen)})`]
        : '—'],
      ['Runner', t.group],
      ['Attempt', `${t.attempt} of ${t.retries + 1}`],
      ['Why it waits', t.blocked_by.length ? h('span', { id: 'blocked-by' }, t.blocked_by.join(', ')) : '—'],
      ['Dependencies', t.dependencies.length
        ? t.dependencies.map((d) => h('span', { class: 'tag' }, h('a', { href: `#/workflows/${wf}/tasks/${enc(d.name)}` }, d.name), ' ', badge(d.state)))
        : '—'],
      t.parent ? ['Group', h('a', { href: `#/workflows/${wf}/tasks/${enc(t.parent)}` }, t.parent)] : null,
      t.messages_ahead !== null && t.messages_ahead !== undefined ? ['Messages ahead', t.messages_ahead] : null,
      ['Created', when(t.created_at)], ['Queued', when(t.queued_at)],
      ['Started', when(t.started_at)], ['Finished', when(t.finished_at)],
    ].filter(Boolean);
    const result = t.result
      ? h('div', {}, h('h2', {}, 'Result'),
        h('dl', { class: 'kv' },
          h('dt', {}, 'exit code'), h('dd', {}, t.result.exit_code ?? '—'),
          t.result.error ? [h('dt', {}, 'error'), h('dd', { class: 'error' }, t.result.error)] : null,
          h('dt', {}, 'outputs'), h('dd', {}, h('code', {}, JSON.stringify(t.result.outputs || {})))))
      : null;
    const children = t.children
      ? h('div', {}, h('h2', {}, `Children (${t.children.length})`),
        h('table', {}, h('tbody', {}, t.children.map((c) => h('tr', {},
          h('td', {}, h('a', { href: `#/workflows/${wf}/tasks/${enc(c.name)}` }, c.name)),
          h('td', {}, c.server_id), h('td', {}, badge(c.state)))))))
      : null;
    top.replaceChildren(
      h('div', { class: 'head', id: 'task-head', 'data-state': t.state, 'data-id': t.id },
        h('h1', {}, t.name), badge(t.state), h('span', { class: 'toolbar' }, acts)),
      h('dl', { class: 'kv panel' }, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
      ...[result, children].filter(Boolean));
    output(t);
    const a = await get(`${path}/attempts`);
    attempts.replaceChildren(a.attempts.length
      ? h('table', {}, h('thead', {}, h('tr', {}, ['Attempt', 'State', 'Exit code', 'Error', 'stdout (tail)'].map((x) => h('th', {}, x)))),
        h('tbody', {}, a.attempts.map((x) => h('tr', { 'data-attempt': x.attempt },
          h('td', {}, x.attempt), h('td', {}, badge(x.state)), h('td', {}, x.result.exit_code ?? '—'),
          h('td', { class: 'error' }, x.result.error || ''),
          h('td', {}, h('code', {}, (x.result.stdout || '').slice(-200)))))))
      : h('p', { class: 'muted' }, 'No attempt has a result yet.'));
    main.dataset.ready = '1';
    return t;
  };
  await draw();
  // The task: read again every second while the page is shown.
  every(1000, () => draw(false));
}

// --- servers ------------------------------------------------------------------

async function serversPage() {
  const body = h('tbody');
  main.replaceChildren(h('h1', {}, 'Servers'),
    h('table', { id: 'servers' }, h('thead', {}, h('tr', {},
      ['Server', 'Kind', 'Labels', 'Online', 'Last seen', 'Unfinished tasks'].map((t) => h('th', {}, t)))), body));
  const draw = async () => {
    const { servers } = await get('/v1/servers');
    body.replaceChildren(...servers.map((s) => h('tr', { 'data-id': s.server_id },
      h('td', { class: 'mono' }, s.server_id, s.registered ? '' : h('span', { class: 'muted' }, ' (not registered)')),
      h('td', {}, s.kind),
      h('td', {}, Object.entries(s.labels).map(([k, v]) => h('span', { class: 'tag' }, `${k}=${v}`))),
      h('td', {}, h('span', { class: `dot${s.online ? ' on' : ''}` }), s.online ? 'online' : 'offline'),
      h('td', { class: 'muted' }, when(s.last_seen)),
      h('td', {}, s.unfinished_tasks ?? 0))));
    if (!servers.length) body.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No servers yet.')));
    main.dataset.ready = '1';
  };
  await draw();
  every(3000, draw);
}

// --- routing ------------------------------------------------------------------

async function route() {
  for (const f of cleanups) f();
  cleanups = [];
  delete main.dataset.ready;
  setStatus('');
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('active', a.dataset.nav === (parts[0] === 'servers' ? 'servers' : 'workflows'));
  }
  main.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  try {
    if (parts[0] === 'servers') await serversPage();
    else if (parts[0] === 'workflows' && parts[2] === 'tasks' && parts[3]) await taskPage(parts[1], parts[3]);
    else if (parts[0] === 'workflows' && parts[1]) await workflowPage(parts[1]);
    else await workflowsPage();
  } catch (e) {
    fail(e);
  }
}

window.addEventListener('hashchange', route);
route();
