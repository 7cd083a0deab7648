// sockhive admin console: polls /metrics and the admin API, draws what it finds.
// Plain browser JavaScript with no dependencies and no build step; the master
// serves this file as it is (master/src/console.rs).
//
// Rendering rule: socket records carry strings the clients chose (user
// claims, channel names), so they only ever reach the page through
// textContent, never as markup.
'use strict';

// Where the admin token lives, and why there: sessionStorage survives a reload
// of this tab but not closing it, is never written to another tab, and is not
// sent by the browser on its own (unlike a cookie, so another site cannot make
// this browser call the API: every call needs the Authorization header that
// only this script sets). localStorage would keep the token on disk with no
// end; memory only would ask for it again on every reload. The page's
// Content-Security-Policy runs no script but this one, which is what keeps the
// stored token out of reach of anything else.
const TOKEN_KEY = 'sockhive.adminToken';
// One refresh of counts, list and metrics; also the charts' resolution.
const POLL_MS = 2000;
// How far back the charts reach.
const HISTORY_MS = 5 * 60 * 1000;
// The shortest time axis, so the first samples do not stretch into a wall.
const MIN_SPAN_MS = 30 * 1000;
// Most sockets listed at once; the summary says when there are more.
const LIST_LIMIT = 500;
// Most sockets counted per refresh (the admin API's own cap).
const COUNT_LIMIT = 10000;

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  filter: {},
  filterText: '{}',
  // The listed sockets, in display order.
  sockets: [],
  // Ids the operator ticked; pruned to the listed sockets after each refresh.
  selected: new Set(),
  // Metric samples of this node: {t, handshakesOk, handshakesRefused, messagesIn,
  // messagesOut, connections: {protocol: n}}, oldest first, HISTORY_MS of them.
  samples: [],
  timer: null,
};

class AuthError extends Error {}

async function call(method, path, body) {
  const headers = { Authorization: 'Bearer ' + state.token };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  let reply = null;
  try {
    reply = await response.json();
  } catch (_) {
    reply = null;
  }
  const message = (reply && reply.error) || `HTTP ${response.status}`;
  if (response.status === 401) throw new AuthError(message);
  if (!response.ok) throw new Error(message);
  return reply;
}

// ---- login ---------------------------------------------------------------

async function login(token) {
  state.token = token;
  try {
    await call('POST', '/api/sockets/query', { filter: {}, limit: 1 });
  } catch (e) {
    state.token = null;
    showLogin(e instanceof AuthError ? `refused: ${e.message}` : `cannot reach the admin API: ${e.message}`);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $('login-panel').hidden = true;
  $('console').hidden = false;
  $('forget').hidden = false;
  poll();
}

function showLogin(error) {
  clearTimeout(state.timer);
  state.timer = null;
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $('console').hidden = true;
  $('forget').hidden = true;
  $('login-panel').hidden = false;
  $('login-error').textContent = error || '';
  $('status').textContent = 'not connected';
  $('token').focus();
}

// ---- polling -------------------------------------------------------------

async function poll() {
  clearTimeout(state.timer);
  const [metrics, counts, list] = await Promise.allSettled([
    fetchMetrics(),
    call('POST', '/api/sockets/query', { filter: {}, limit: COUNT_LIMIT }),
    state.filterText === '{}' ? null : listSockets(),
  ]);
  if (!state.token) return;
  const refused = [metrics, counts, list].find((r) => r.status === 'rejected' && r.reason instanceof AuthError);
  if (refused) {
    showLogin(`refused: ${refused.reason.message}`);
    return;
  }
  const problems = [];
  if (metrics.status === 'fulfilled') {
    addSample(metrics.value);
  } else {
    problems.push(`metrics: ${metrics.reason.message}`);
  }
  drawCharts();
  if (counts.status === 'fulfilled') {
    renderCounts(counts.value);
  } else {
    problems.push(`counts: ${counts.reason.message}`);
  }
  // With no filter the count query already holds the list: show its first LIST_LIMIT.
  let listed = list.status === 'fulfilled' ? list.value : null;
  if (!listed && list.status === 'fulfilled' && counts.status === 'fulfilled') {
    const all = counts.value.sockets || [];
    listed = { sockets: all.slice(0, LIST_LIMIT), truncated: all.length > LIST_LIMIT || counts.value.truncated };
  }
  if (listed) {
    renderSockets(listed);
  } else if (list.status === 'rejected') {
    problems.push(`sockets: ${list.reason.message}`);
  }
  const at = new Date().toLocaleTimeString();
  $('status').textContent = problems.length
    ? `${location.host} · ${at} · ${problems.join('; ')}`
    : `${location.host} · updated ${at}`;
  state.timer = setTimeout(poll, POLL_MS);
}

function listSockets() {
  return call('POST', '/api/sockets/query', { filter: state.filter, limit: LIST_LIMIT });
}

async function refreshList() {
  try {
    const reply = state.filterText === '{}'
      ? await call('POST', '/api/sockets/query', { filter: {}, limit: LIST_LIMIT })
      : await listSockets();
    $('filter-error').textContent = '';
    renderSockets(reply);
  } catch (e) {
    if (e instanceof AuthError) return showLogin(`refused: ${e.message}`);
    $('filter-error').textContent = e.message;
    renderSockets({ sockets: [] });
  }
}

// ---- metrics ---------------------------------------------------------------

async function fetchMetrics() {
  const response = await fetch('/metrics', { cache: 'no-store' });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return parseMetrics(await response.text());
}

// Prometheus text format: `name{label="value",...} number`, `#` lines skipped.
function parseMetrics(text) {
  const series = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const pair of (m[2] || '').matchAll(/([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]] = pair[2];
    }
    series.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return series;
}

function addSample(series) {
  const sample = { t: Date.now(), handshakesOk: 0, handshakesRefused: 0, messagesIn: 0, messagesOut: 0, connections: {} };
  for (const { name, labels, value } of series) {
    if (!Number.isFinite(value)) continue;
    if (name === 'sockhive_handshakes_total' && labels.method !== 'authenticate') {
      if (labels.outcome === 'ok' || labels.outcome === 'anonymous') sample.handshakesOk += value;
      else sample.handshakesRefused += value;
    } else if (name === 'sockhive_messages_total') {
      if (labels.direction === 'in') sample.messagesIn += value;
      else sample.messagesOut += value;
    } else if (name === 'sockhive_connections') {
      const protocol = labels.protocol || 'all';
      sample.connections[protocol] = (sample.connections[protocol] || 0) + value;
    }
  }
  state.samples.push(sample);
  while (state.samples.length && state.samples[0].t < sample.t - HISTORY_MS) state.samples.shift();
}

// Per-second rate of one counter between consecutive samples. A drop (a
// respawned worker starts its counters at zero) is not a negative rate: it counts as 0.
function rate(key) {
  const points = [];
  for (let i = 1; i < state.samples.length; i++) {
    const a = state.samples[i - 1];
    const b = state.samples[i];
    const seconds = (b.t - a.t) / 1000;
    if (seconds <= 0) continue;
    points.push({ t: b.t, v: Math.max(0, b[key] - a[key]) / seconds });
  }
  return points;
}

const COLORS = ['#2f6fde', '#e0803a', '#2e9d62', '#9b4dca'];

// A rate as people read it: whole numbers once they are big, two decimals when small.
function perSecond(v) {
  return v >= 10 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(2);
}

function drawCharts() {
  chart('chart-handshakes', [
    { label: 'accepted', points: rate('handshakesOk') },
    { label: 'refused', points: rate('handshakesRefused') },
  ], perSecond);
  chart('chart-messages', [
    { label: 'in', points: rate('messagesIn') },
    { label: 'out', points: rate('messagesOut') },
  ], perSecond);
  const protocols = [...new Set(state.samples.flatMap((s) => Object.keys(s.connections)))].sort();
  chart('chart-connections', protocols.map((protocol) => ({
    label: protocol,
    points: state.samples.map((s) => ({ t: s.t, v: s.connections[protocol] || 0 })),
  })), (v) => String(Math.round(v)));
}

// A round axis top at or above `max`: 1, 2 or 5 times a power of ten.
function niceMax(max) {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= max) return step * power;
  }
  return 10 * power;
}

function chart(id, lines, format) {
  const canvas = $(id);
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 360;
  const height = canvas.clientHeight || 140;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const left = 40;
  const right = width - 8;
  const top = 22;
  const bottom = height - 18;
  const now = Date.now();
  // The time axis grows with the samples up to HISTORY_MS, so a console opened
  // a moment ago shows its first seconds across the chart, not as a sliver.
  const oldest = state.samples.length ? state.samples[0].t : now;
  const span = Math.min(HISTORY_MS, Math.max(MIN_SPAN_MS, now - oldest));
  const x = (t) => left + ((t - (now - span)) / span) * (right - left);
  const max = niceMax(Math.max(0, ...lines.flatMap((l) => l.points.map((p) => p.v))));
  const y = (v) => bottom - (v / max) * (bottom - top);

  g.font = '11px system-ui, sans-serif';
  g.lineWidth = 1;
  g.strokeStyle = '#dde1e8';
  g.fillStyle = '#6b7385';
  g.textAlign = 'right';
  g.textBaseline = 'middle';
  for (const v of [0, max / 2, max]) {
    g.beginPath();
    g.moveTo(left, Math.round(y(v)) + 0.5);
    g.lineTo(right, Math.round(y(v)) + 0.5);
    g.stroke();
    g.fillText(format(v), left - 4, y(v));
  }
  g.textAlign = 'left';
  g.textBaseline = 'alphabetic';
  g.fillText(span >= 60000 ? `-${Math.round(span / 60000)} min` : `-${Math.round(span / 1000)} s`, left, height - 4);
  g.textAlign = 'right';
  g.fillText('now', right, height - 4);

  let drawn = 0;
  let legendX = left;
  lines.forEach((line, i) => {
    const color = COLORS[i % COLORS.length];
    g.textAlign = 'left';
    g.textBaseline = 'alphabetic';
    g.fillStyle = color;
    g.fillRect(legendX, 8, 10, 3);
    g.fillText(line.label, legendX + 14, 14);
    legendX += 24 + g.measureText(line.label).width;
    const points = line.points.filter((p) => p.t >= now - span);
    if (points.length < 2) return;
    g.strokeStyle = color;
    g.lineWidth = 1.5;
    g.beginPath();
    points.forEach((p, j) => (j ? g.lineTo(x(p.t), y(p.v)) : g.moveTo(x(p.t), y(p.v))));
    g.stroke();
    drawn += points.length;
  });
  if (!drawn) {
    g.fillStyle = '#6b7385';
    g.textAlign = 'center';
    g.fillText('collecting samples…', (left + right) / 2, (top + bottom) / 2);
  }
  // For tests and curious operators: how many points the chart drew, and its highest value.
  canvas.dataset.points = String(drawn);
  canvas.dataset.max = String(Math.max(0, ...lines.flatMap((l) => l.points.map((p) => p.v))));
  const latest = lines.map((l) => {
    const last = l.points[l.points.length - 1];
    return last ? `${l.label} ${format(last.v)}` : null;
  }).filter(Boolean);
  $(id + '-now').textContent = latest.length ? `now: ${latest.join(', ')}` : '';
}

// ---- counts ----------------------------------------------------------------

function renderCounts(reply) {
  const byNode = new Map();
  for (const socket of reply.sockets || []) {
    const workers = byNode.get(socket.node) || new Map();
    workers.set(socket.worker, (workers.get(socket.worker) || 0) + 1);
    byNode.set(socket.node, workers);
  }
  const body = $('counts').tBodies[0];
  body.replaceChildren();
  let total = 0;
  for (const node of [...byNode.keys()].sort()) {
    const workers = byNode.get(node);
    const sum = [...workers.values()].reduce((a, b) => a + b, 0);
    total += sum;
    body.append(row(['node', node], [node, 'all', String(sum)]));
    for (const worker of [...workers.keys()].sort((a, b) => a - b)) {
      body.append(row(['worker', node], ['', String(worker), String(workers.get(worker))]));
    }
  }
  const more = reply.truncated ? ' (at least: counted up to the cap)' : '';
  $('counts-summary').textContent =
    `${total} sockets${more} on ${byNode.size} node(s) with sockets · ` +
    `nodes answered ${reply.nodes_answered} of ${reply.nodes_expected}` +
    (reply.workers_expected !== undefined ? ` · workers answered ${reply.workers_answered} of ${reply.workers_expected}` : '');
}

function row([kind, node], cells) {
  const tr = document.createElement('tr');
  tr.className = kind;
  tr.dataset.node = node;
  for (const text of cells) {
    const td = document.createElement('td');
    td.textContent = text;
    tr.append(td);
  }
  return tr;
}

// ---- socket list -----------------------------------------------------------

function renderSockets(reply) {
  const sockets = (reply.sockets || []).slice().sort((a, b) =>
    String(a.node).localeCompare(String(b.node)) || a.worker - b.worker ||
    String(a.connected_at).localeCompare(String(b.connected_at)) || String(a.id).localeCompare(String(b.id)));
  state.sockets = sockets;
  const listed = new Set(sockets.map((s) => s.id));
  for (const id of [...state.selected]) if (!listed.has(id)) state.selected.delete(id);

  const body = $('sockets').tBodies[0];
  body.replaceChildren();
  for (const socket of sockets) {
    const tr = document.createElement('tr');
    tr.dataset.id = socket.id;
    tr.className = state.selected.has(socket.id) ? 'selected' : '';
    const pick = document.createElement('input');
    pick.type = 'checkbox';
    pick.className = 'pick';
    pick.checked = state.selected.has(socket.id);
    pick.addEventListener('change', () => {
      if (pick.checked) state.selected.add(socket.id);
      else state.selected.delete(socket.id);
      tr.className = pick.checked ? 'selected' : '';
      updateSelection();
    });
    const first = document.createElement('td');
    first.append(pick);
    tr.append(first);
    const cells = [
      ['id', socket.id],
      ['node', socket.node],
      ['worker', socket.worker],
      ['protocol', socket.protocol],
      ['user', socket.user == null ? 'anonymous' : JSON.stringify(socket.user)],
      ['channels', (socket.channels || []).join(', ')],
      ['remote', socket.remote_addr],
      ['connected', socket.connected_at],
    ];
    for (const [name, value] of cells) {
      const td = document.createElement('td');
      td.className = name;
      td.textContent = value == null ? '' : String(value);
      tr.append(td);
    }
    body.append(tr);
  }
  const more = reply.truncated ? `, more match (showing the first ${LIST_LIMIT})` : '';
  $('sockets-summary').textContent = `${sockets.length} socket(s) match ${state.filterText}${more}`;
  updateSelection();
}

function updateSelection() {
  const n = state.selected.size;
  $('kick').disabled = n === 0;
  $('emit').disabled = n === 0;
  $('kick').textContent = n ? `Kick ${n} selected` : 'Kick selected';
  $('emit').textContent = n ? `Emit to ${n} selected` : 'Emit to selected';
  $('select-all').checked = state.sockets.length > 0 && n === state.sockets.length;
}

// The selection as a filter the API runs on every node: exactly these ids.
function selectionFilter() {
  return { id: { $in: [...state.selected] } };
}

function parseJson(text, what) {
  try {
    return JSON.parse(text.trim() === '' ? 'null' : text);
  } catch (e) {
    throw new Error(`${what} is not JSON: ${e.message}`);
  }
}

async function act(resultId, work) {
  const out = $(resultId);
  out.className = 'muted';
  try {
    out.textContent = await work();
  } catch (e) {
    if (e instanceof AuthError) return showLogin(`refused: ${e.message}`);
    out.className = 'error';
    out.textContent = e.message;
  }
}

// ---- wiring ----------------------------------------------------------------

function init() {
  $('login').addEventListener('submit', (event) => {
    event.preventDefault();
    login($('token').value.trim());
  });
  $('forget').addEventListener('click', () => showLogin(''));

  $('filter-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const text = $('filter').value.trim() || '{}';
    let filter;
    try {
      filter = parseJson(text, 'the filter');
      if (filter === null || typeof filter !== 'object' || Array.isArray(filter)) {
        throw new Error('the filter must be a JSON object, e.g. {"user.id": "bob"}');
      }
    } catch (e) {
      $('filter-error').textContent = e.message;
      return;
    }
    state.filter = filter;
    state.filterText = JSON.stringify(filter);
    refreshList();
  });

  $('select-all').addEventListener('change', () => {
    state.selected = new Set($('select-all').checked ? state.sockets.map((s) => s.id) : []);
    for (const tr of $('sockets').tBodies[0].rows) {
      const on = state.selected.has(tr.dataset.id);
      tr.className = on ? 'selected' : '';
      tr.querySelector('input.pick').checked = on;
    }
    updateSelection();
  });

  $('kick-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const n = state.selected.size;
    if (!n || !confirm(`Disconnect ${n} socket(s)? Their clients will not reconnect by themselves.`)) return;
    act('action-result', async () => {
      const reply = await call('POST', '/api/sockets/kick', { filter: selectionFilter(), reason: $('kick-reason').value });
      state.selected.clear();
      await refreshList();
      return `kicked: ${reply.disconnected} socket(s) disconnected`;
    });
  });

  $('emit-form').addEventListener('submit', (event) => {
    event.preventDefault();
    act('action-result', async () => {
      const data = parseJson($('emit-data').value, 'the data');
      const reply = await call('POST', '/api/sockets/emit', { filter: selectionFilter(), event: $('emit-event').value, data });
      return `emitted "${$('emit-event').value}": delivered to ${reply.delivered} socket(s)`;
    });
  });

  $('publish-form').addEventListener('submit', (event) => {
    event.preventDefault();
    act('publish-result', async () => {
      const data = parseJson($('publish-data').value, 'the data');
      await call('POST', '/api/publish', { channel: $('publish-channel').value, data });
      return `published to ${$('publish-channel').value}`;
    });
  });

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) login(saved);
  else showLogin('');
}

init();
