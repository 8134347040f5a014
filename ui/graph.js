// Draws a workflow's folded graph (GET /v1/workflows/{wf}/graph) as SVG:
// the server already folded it and gave each node its layer and order, so
// this only places boxes in columns, draws the edges, and pans and zooms
// (mouse wheel, drag). Nodes carry data-id / data-state for live updates.

const NS = 'http://www.w3.org/2000/svg';
const W = 190;
const H = 44;
const DX = 240;
const DY = 64;
const STATES = ['waiting', 'queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled', 'skipped'];

function el(name, attrs = {}, parent = null) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function clip(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

export class GraphView {
  // `onOpen(node)` is called when a node is clicked.
  constructor(container, onOpen) {
    this.onOpen = onOpen;
    this.view = { x: 20, y: 20, k: 1 };
    this.fitted = false;
    this.svg = el('svg', { role: 'img', 'aria-label': 'workflow graph' });
    const defs = el('defs', {}, this.svg);
    const marker = el('marker', {
      id: 'arrow', viewBox: '0 0 10 10', refX: '10', refY: '5',
      markerWidth: '7', markerHeight: '7', orient: 'auto-start-reverse',
    }, defs);
    el('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrow' }, marker);
    this.root = el('g', {}, this.svg);
    this.edges = el('g', { class: 'edges' }, this.root);
    this.nodes = el('g', { class: 'nodes' }, this.root);
    container.appendChild(this.svg);
    this.panZoom();
  }

  panZoom() {
    const svg = this.svg;
    svg.addEventListener('wheel', (ev) => {
      ev.preventDefault();
      const r = svg.getBoundingClientRect();
      const f = Math.exp(-ev.deltaY * 0.0015);
      this.zoomAt(ev.clientX - r.left, ev.clientY - r.top, f);
    }, { passive: false });
    let drag = null;
    svg.addEventListener('pointerdown', (ev) => {
      if (ev.target.closest('.node')) return;
      drag = { x: ev.clientX, y: ev.clientY, vx: this.view.x, vy: this.view.y };
      svg.setPointerCapture(ev.pointerId);
      svg.classList.add('dragging');
    });
    svg.addEventListener('pointermove', (ev) => {
      if (!drag) return;
      this.view.x = drag.vx + ev.clientX - drag.x;
      this.view.y = drag.vy + ev.clientY - drag.y;
      this.apply();
    });
    const end = () => { drag = null; svg.classList.remove('dragging'); };
    svg.addEventListener('pointerup', end);
    svg.addEventListener('pointercancel', end);
  }

  zoomAt(px, py, f) {
    const k = Math.min(4, Math.max(0.05, this.view.k * f));
    const g = k / this.view.k;
    this.view.x = px - (px - this.view.x) * g;
    this.view.y = py - (py - this.view.y) * g;
    this.view.k = k;
    this.apply();
  }

  zoom(f) {
    const r = this.svg.getBoundingClientRect();
    this.zoomAt(r.width / 2, r.height / 2, f);
  }

  apply() {
    const { x, y, k } = this.view;
    this.root.setAttribute('transform', `translate(${x} ${y}) scale(${k})`);
  }

  fit() {
    const r = this.svg.getBoundingClientRect();
    if (!this.size || !r.width) return;
    const k = Math.min(1.2, (r.width - 40) / this.size.w, (r.height - 40) / this.size.h);
    this.view = { x: 20, y: 20, k: Math.max(0.05, k) };
    this.apply();
  }

  // Draws a whole summary, keeping the view unless it was never fitted.
  render(summary) {
    this.nodes.replaceChildren();
    this.edges.replaceChildren();
    this.byId = new Map();
    let maxOrder = 0;
    for (const n of summary.nodes) {
      maxOrder = Math.max(maxOrder, n.order);
      this.byId.set(n.id, { n, x: n.layer * DX, y: n.order * DY });
    }
    for (const e of summary.edges) {
      const a = this.byId.get(e.from);
      const b = this.byId.get(e.to);
      if (!a || !b) continue;
      const x1 = a.x + W;
      const y1 = a.y + H / 2;
      const x2 = b.x;
      const y2 = b.y + H / 2;
      const mx = (x1 + x2) / 2;
      el('path', {
        class: 'edge', d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`,
        'marker-end': 'url(#arrow)', 'data-from': e.from, 'data-to': e.to,
      }, this.edges);
    }
    for (const item of this.byId.values()) item.g = this.drawNode(item);
    this.size = { w: Math.max(summary.layers - 1, 0) * DX + W, h: maxOrder * DY + H };
    if (!this.fitted) {
      this.fit();
      this.fitted = true;
    } else {
      this.apply();
    }
  }

  drawNode({ n, x, y }) {
    const folded = n.kind !== 'task';
    const g = el('g', {
      class: `node state-${n.state} kind-${n.kind}${folded ? ' folded' : ''}`,
      transform: `translate(${x} ${y})`,
      'data-id': n.id, 'data-state': n.state, 'data-kind': n.kind, 'data-label': n.label,
      tabindex: '0',
    }, this.nodes);
    el('title', {}, g).textContent = `${n.label}\n${n.kind}, ${n.count} task(s): ${
      STATES.filter((s) => n.states[s]).map((s) => `${s} ${n.states[s]}`).join(', ')}`;
    el('rect', { class: 'box', width: W, height: H, rx: 6 }, g);
    const name = el('text', { x: 10, y: folded ? 18 : 27 }, g);
    name.textContent = clip(n.label, folded ? 22 : 26);
    if (folded) {
      const c = el('text', { class: 'count', x: 10, y: 32 }, g);
      c.textContent = `${n.kind} · ${n.count.toLocaleString()} tasks`;
      this.drawBar(g, n);
    }
    g.addEventListener('click', () => this.onOpen(n));
    g.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') this.onOpen(n); });
    return g;
  }

  // A stacked bar of a folded node's states along its bottom edge.
  drawBar(g, n) {
    let x = 4;
    const width = W - 8;
    for (const s of STATES) {
      const c = n.states[s] || 0;
      if (!c) continue;
      const w = (width * c) / n.count;
      el('rect', { x, y: H - 7, width: Math.max(w, 1), height: 4, class: `fill-${s}` }, g);
      x += w;
    }
  }

  // A task's new state, when it is a node of its own; false otherwise
  // (it is folded into another node, or new: the caller reloads).
  update(taskId, state) {
    const item = this.byId && this.byId.get(taskId);
    if (!item || item.n.kind !== 'task') return false;
    item.n.state = state;
    item.n.states = { [state]: 1 };
    item.g.setAttribute('class', `node state-${state} kind-task`);
    item.g.setAttribute('data-state', state);
    return true;
  }
}
