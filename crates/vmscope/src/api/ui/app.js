// vmscope status page. Plain JS and SVG, no libraries, no request to any
// other host: every URL below is relative to the page, so the page works
// under a reverse proxy's path prefix. Data is written with textContent,
// never as markup (VM and owner names come from the VMs' owners).
'use strict';

(function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const REFRESH_MS = 5000;
  const body = document.body;
  const viewer = body.dataset.viewer; // all | tenant | none
  const alertsOn = body.dataset.alerts === 'on';
  const $ = (sel) => document.querySelector(sel);

  const state = {
    vms: [],
    history: new Map(),
    sort: { key: 'name', dir: 1 },
    vmPage: null,
  };

  // ---- formatting ----
  function bytes(n) {
    if (n == null || !isFinite(n)) return '–';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    const digits = i === 0 ? (Number.isInteger(n) || n >= 10 ? 0 : 1) : (n < 10 ? 2 : 1);
    return n.toFixed(digits) + ' ' + u[i];
  }
  const rate = (n) => (n == null ? '–' : bytes(n) + '/s');
  const cores = (n) => (n == null ? '–' : n.toFixed(n < 10 ? 2 : 1));
  const pct = (r) => (r == null ? '–' : (100 * r).toFixed(0) + '%');
  function clock(unixSecs) {
    const d = new Date(unixSecs * 1000);
    return d.toTimeString().slice(0, 5);
  }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  // ---- fetching ----
  async function getJSON(path) {
    const r = await fetch(path, { headers: { Accept: 'application/json' }, credentials: 'same-origin' });
    if (!r.ok) {
      let msg = r.status + ' ' + r.statusText;
      try { msg = (await r.json()).error.message; } catch (_) { /* keep the status */ }
      const err = new Error(path + ': ' + msg);
      err.status = r.status;
      throw err;
    }
    return r.json();
  }
  function showError(e) {
    const box = $('#error');
    if (e) { box.textContent = String(e.message || e); box.hidden = false; } else { box.hidden = true; }
  }

  // ---- drawing ----
  // A sparkline: one polyline per series over a shared time axis.
  function sparkline(t, series, w, h) {
    const s = svg('svg', { class: 'spark', width: w, height: h, viewBox: `0 0 ${w} ${h}`, 'data-points': t.length });
    if (t.length === 0) return s;
    const t0 = t[0], t1 = Math.max(t[t.length - 1], t0 + 1);
    let max = 0;
    for (const { values } of series) for (const v of values) if (v > max) max = v;
    if (max <= 0) max = 1;
    for (const { values, cls } of series) {
      const pts = values.map((v, i) => {
        const x = t.length === 1 ? w - 1 : ((t[i] - t0) / (t1 - t0)) * (w - 2) + 1;
        const y = h - 1 - (v / max) * (h - 2);
        return x.toFixed(1) + ',' + y.toFixed(1);
      });
      if (pts.length === 1) pts.unshift('1,' + pts[0].split(',')[1]);
      s.appendChild(svg('polyline', { class: 'line ' + cls, points: pts.join(' ') }));
    }
    return s;
  }

  // A graph with a title, a y scale and time labels.
  function graph(title, t, values, cls, fmt, w, h) {
    const pad = { l: 64, r: 8, t: 18, b: 18 };
    const g = svg('svg', { class: 'graph', width: w, height: h, viewBox: `0 0 ${w} ${h}`, 'data-points': t.length });
    const tt = svg('text', { class: 'title', x: pad.l, y: 12 });
    tt.textContent = title;
    g.appendChild(tt);
    const iw = w - pad.l - pad.r, ih = h - pad.t - pad.b;
    g.appendChild(svg('line', { class: 'axis', x1: pad.l, y1: pad.t + ih, x2: pad.l + iw, y2: pad.t + ih }));
    g.appendChild(svg('line', { class: 'axis', x1: pad.l, y1: pad.t, x2: pad.l, y2: pad.t + ih }));
    if (t.length === 0) {
      const n = svg('text', { x: pad.l + 8, y: pad.t + ih / 2 });
      n.textContent = 'no data yet';
      g.appendChild(n);
      return g;
    }
    let max = 0;
    for (const v of values) if (v > max) max = v;
    if (max <= 0) max = 1;
    const t0 = t[0], t1 = Math.max(t[t.length - 1], t0 + 1);
    const x = (ti) => pad.l + ((ti - t0) / (t1 - t0)) * iw;
    const y = (v) => pad.t + ih - (v / max) * ih;
    for (const [v, yy] of [[max, pad.t], [max / 2, pad.t + ih / 2], [0, pad.t + ih]]) {
      const lab = svg('text', { x: pad.l - 4, y: yy + 3, 'text-anchor': 'end' });
      lab.textContent = fmt(v);
      g.appendChild(lab);
    }
    for (const [ti, anchor] of [[t0, 'start'], [t1, 'end']]) {
      const lab = svg('text', { x: x(ti), y: h - 4, 'text-anchor': anchor });
      lab.textContent = clock(ti);
      g.appendChild(lab);
    }
    const pts = values.map((v, i) => x(t[i]).toFixed(1) + ',' + y(v).toFixed(1));
    if (pts.length === 1) pts.unshift(pad.l + ',' + y(values[0]).toFixed(1));
    const first = pts[0].split(',')[0], last = pts[pts.length - 1].split(',')[0];
    g.appendChild(svg('polygon', { class: 'area ' + cls.replace('s-', 'f-'), points: `${first},${pad.t + ih} ${pts.join(' ')} ${last},${pad.t + ih}` }));
    g.appendChild(svg('polyline', { class: 'line ' + cls, points: pts.join(' ') }));
    return g;
  }

  // A half-circle gauge for a ratio in [0, 1].
  function gauge(label, ratio, detail) {
    const w = 130, h = 84, r = 50, cx = w / 2, cy = 62;
    const g = svg('svg', { class: 'gauge', width: w, height: h, viewBox: `0 0 ${w} ${h}` });
    const arc = (to) => {
      const a = Math.PI * (1 - to);
      return `M ${cx - r} ${cy} A ${r} ${r} 0 0 1 ${(cx + r * Math.cos(a)).toFixed(2)} ${(cy - r * Math.sin(a)).toFixed(2)}`;
    };
    g.appendChild(svg('path', { class: 'track', d: arc(1), fill: 'none', 'stroke-width': 10 }));
    const v = Math.max(0, Math.min(1, ratio || 0));
    if (ratio != null && v > 0) {
      g.appendChild(svg('path', { class: v > 0.9 ? 's-bad' : 's-cpu', d: arc(v), fill: 'none', 'stroke-width': 10 }));
    }
    const val = svg('text', { x: cx, y: cy - 4, 'text-anchor': 'middle' });
    val.textContent = pct(ratio);
    g.appendChild(val);
    const lab = svg('text', { class: 'label', x: cx, y: cy + 16, 'text-anchor': 'middle' });
    lab.textContent = label + (detail ? ' · ' + detail : '');
    g.appendChild(lab);
    return g;
  }

  // ---- host ----
  async function loadHost() {
    if (viewer !== 'all') {
      const note = $('#host-note');
      note.textContent = viewer === 'tenant'
        ? 'Host figures are the operator\u2019s: a tenant token shows its own VMs only.'
        : 'Sign in to see the host and its VMs.';
      note.hidden = false;
      return;
    }
    const host = await getJSON('api/v1/host');
    $('#hostname').textContent = host.hostname || '';
    const box = $('#gauges');
    box.replaceChildren(
      gauge('CPU', host.cpu_ratio, host.cpus + ' CPUs'),
      gauge('memory', host.memory_used_ratio, bytes(host.memory_total_bytes)),
      gauge('load 1m', host.load1 / Math.max(1, host.cpus), host.load1.toFixed(2)),
    );
    for (const fs of (host.filesystems || []).slice(0, 4)) {
      const used = fs.size_bytes ? 1 - fs.avail_bytes / fs.size_bytes : null;
      box.appendChild(gauge(fs.mountpoint, used, bytes(fs.size_bytes)));
    }
  }

  function drawHostHistory(h) {
    if (!h) return;
    $('#host-graphs').replaceChildren(
      graph('host CPU cores in use', h.t, h.cpu_cores, 's-cpu', cores, 420, 140),
      graph('host memory used', h.t, h.memory_used_bytes, 's-mem', bytes, 420, 140),
    );
  }

  // ---- alerts ----
  async function loadAlerts() {
    const note = $('#alerts-note');
    if (!alertsOn) {
      note.textContent = 'The watchdog is off (or runs without its state database): no alerts to show.';
      return;
    }
    const a = await getJSON('api/v1/alerts?limit=10');
    note.textContent = a.active.length ? '' : 'No alert is firing.';
    const act = $('#alerts-active');
    act.hidden = a.active.length === 0;
    act.tBodies[0].replaceChildren(...a.active.map((e) => {
      const tr = el('tr');
      tr.append(el('td', {}, e.rule), el('td', {}, e.scope),
        el('td', { class: 'sev-' + e.severity }, e.severity), el('td', {}, e.started_at));
      return tr;
    }));
    const resolved = a.history.filter((e) => e.status === 'resolved');
    $('#alerts-recent-title').hidden = resolved.length === 0;
    const rec = $('#alerts-recent');
    rec.hidden = resolved.length === 0;
    rec.tBodies[0].replaceChildren(...resolved.map((e) => {
      const tr = el('tr');
      tr.append(el('td', {}, e.rule), el('td', {}, e.scope), el('td', {}, e.started_at), el('td', {}, e.resolved_at || ''));
      return tr;
    }));
  }

  // ---- VM table ----
  function ownerOf(vm) {
    const o = vm.owner;
    if (!o) return '';
    const parts = [];
    parts.push(o.user_name || o.user_id || '');
    parts.push(o.project_name || o.project_id || '');
    return parts.filter(Boolean).join(' / ');
  }
  const sortValue = {
    name: (v) => v.name.toLowerCase(),
    owner: (v) => ownerOf(v).toLowerCase(),
    state: (v) => v.state,
    cpu: (v) => v.cpu_cores ?? -1,
    mem: (v) => v.memory_rss_bytes ?? -1,
    rx: (v) => v.network_rx_bytes_per_second ?? -1,
    tx: (v) => v.network_tx_bytes_per_second ?? -1,
  };

  function drawTable() {
    const { key, dir } = state.sort;
    const f = sortValue[key];
    const rows = state.vms.slice().sort((a, b) => {
      const x = f(a), y = f(b);
      return (x < y ? -1 : x > y ? 1 : 0) * dir || a.id.localeCompare(b.id);
    });
    for (const th of document.querySelectorAll('#vm-table th[data-key]')) {
      th.setAttribute('aria-sort', th.dataset.key === key ? (dir > 0 ? 'ascending' : 'descending') : 'none');
    }
    $('#vm-count').textContent = '(' + rows.length + ')';
    $('#vm-table').tBodies[0].replaceChildren(...rows.map((vm) => {
      const h = state.history.get(vm.id) || { t: [], cpu_cores: [], memory_rss_bytes: [], network_rx_bytes_per_second: [], network_tx_bytes_per_second: [] };
      const tr = el('tr', { 'data-id': vm.id });
      const name = el('td');
      name.appendChild(el('a', { href: '#vm=' + encodeURIComponent(vm.id) }, vm.name || vm.id));
      const cell = (s) => { const td = el('td', { class: 'spark-cell' }); td.appendChild(s); return td; };
      tr.append(
        name,
        el('td', {}, ownerOf(vm)),
        el('td', {}, vm.state),
        el('td', { class: 'num' }, cores(vm.cpu_cores)),
        cell(sparkline(h.t, [{ values: h.cpu_cores, cls: 's-cpu' }], 120, 28)),
        el('td', { class: 'num' }, bytes(vm.memory_rss_bytes)),
        cell(sparkline(h.t, [{ values: h.memory_rss_bytes, cls: 's-mem' }], 120, 28)),
        el('td', { class: 'num' }, rate(vm.network_rx_bytes_per_second)),
        el('td', { class: 'num' }, rate(vm.network_tx_bytes_per_second)),
        cell(sparkline(h.t, [
          { values: h.network_rx_bytes_per_second, cls: 's-rx' },
          { values: h.network_tx_bytes_per_second, cls: 's-tx' },
        ], 120, 28)),
      );
      return tr;
    }));
  }

  async function loadVms() {
    if (viewer === 'none') return;
    const [list, hist] = await Promise.all([getJSON('api/v1/vms'), getJSON('api/v1/history')]);
    state.vms = list.vms;
    state.history = new Map(hist.vms.map((v) => [v.id, v]));
    drawHostHistory(hist.host);
    drawTable();
    $('#updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  }

  // ---- one VM ----
  async function loadVmPage(id) {
    const enc = encodeURIComponent(id);
    const [vm, h] = await Promise.all([getJSON('api/v1/vms/' + enc), getJSON('api/v1/vms/' + enc + '/history')]);
    if (state.vmPage !== id) return; // navigated away meanwhile
    $('#vm-title').textContent = vm.name || vm.id;
    const facts = $('#vm-facts');
    const row = (k, v) => facts.append(el('dt', {}, k), el('dd', {}, v == null || v === '' ? '–' : String(v)));
    facts.replaceChildren();
    row('id', vm.id);
    row('state', vm.state);
    row('owner', ownerOf(vm));
    row('hypervisor', vm.hypervisor + ' (pid ' + vm.pid + ')');
    row('vCPUs', vm.allocated_vcpus);
    row('memory allocated', vm.allocated_memory_bytes == null ? null : bytes(vm.allocated_memory_bytes));
    row('memory RSS', bytes(vm.memory_rss_bytes));
    $('#vm-graphs').replaceChildren(
      graph('CPU cores in use', h.t, h.cpu_cores, 's-cpu', cores, 520, 180),
      graph('memory RSS', h.t, h.memory_rss_bytes, 's-mem', bytes, 520, 180),
      graph('network receive', h.t, h.network_rx_bytes_per_second, 's-rx', rate, 520, 180),
      graph('network transmit', h.t, h.network_tx_bytes_per_second, 's-tx', rate, 520, 180),
    );
  }

  // ---- navigation and refresh ----
  function route() {
    const m = /^#vm=(.+)$/.exec(location.hash);
    state.vmPage = m ? decodeURIComponent(m[1]) : null;
    $('#dashboard').hidden = state.vmPage !== null;
    $('#vm-page').hidden = state.vmPage === null;
  }

  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      if (state.vmPage !== null) {
        await loadVmPage(state.vmPage);
      } else {
        await Promise.all([loadHost(), loadAlerts(), loadVms()]);
      }
      showError(null);
    } catch (e) {
      showError(e);
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  for (const th of document.querySelectorAll('#vm-table th[data-key]')) {
    th.addEventListener('click', () => {
      const key = th.dataset.key;
      // Numbers sort largest first on the first click, names A to Z.
      const first = ['name', 'owner', 'state'].includes(key) ? 1 : -1;
      state.sort = state.sort.key === key ? { key, dir: -state.sort.dir } : { key, dir: first };
      drawTable();
    });
  }
  window.addEventListener('hashchange', () => { route(); refresh(); });
  route();
  refresh();
})();
