// The Sluice console: a hash-routed page per task, each reading the admin API (api.js).
// Plain ES modules with no build step: what runs is what is in this folder, embedded in the binary.

import { api, ApiError, metrics, sum, token } from './api.js';
import { rates, record, sparkline } from './charts.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
let timer = null; // the current page's refresh, stopped when the page changes

/** Escapes text for HTML: every value from the API goes through this. */
const esc = (value) =>
  String(value ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const time = (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').replace('Z', ' UTC') : '—');
const pretty = (value) => JSON.stringify(value, null, 2);
const stateSpan = (state) => `<span class="state-${esc(state)}">${esc(state)}</span>`;

function show(html) {
  main.innerHTML = html;
}

function fail(e) {
  if (e instanceof ApiError && e.status === 401) {
    token.clear();
    return login('The gateway no longer accepts this token: log in again.');
  }
  show(`<p class="error" role="alert">${esc(e.message)}</p>`);
}

const pages = {
  overview,
  deliveries,
  delivery,
  dead,
  endpoints,
  plugins,
  config,
};

async function route() {
  clearInterval(timer);
  timer = null;
  if (!token.get()) return login();
  nav.hidden = false;
  const [page, ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  const view = pages[page] ?? overview;
  for (const link of nav.querySelectorAll('a')) link.classList.toggle('active', link.hash === `#/${page || 'overview'}`);
  document.title = `Sluice console · ${page || 'overview'}`;
  try {
    await view(...rest.map(decodeURIComponent));
  } catch (e) {
    fail(e);
  }
}

function login(message = '') {
  nav.hidden = true;
  main.replaceChildren(document.getElementById('login-form').content.cloneNode(true));
  document.getElementById('login-error').textContent = message;
  document.getElementById('login').addEventListener('submit', async (event) => {
    event.preventDefault();
    token.set(document.getElementById('token').value);
    try {
      await api('GET', '/v1/endpoints');
      if (!location.hash || location.hash === '#/login') location.hash = '#/overview';
      else route();
    } catch (e) {
      token.clear();
      const why = e.status === 401 ? 'That token was refused.' : e.status === 429 ? `Too many attempts: ${e.message}` : e.message;
      document.getElementById('login-error').textContent = why;
    }
  });
}

async function overview() {
  show('<h1>Overview</h1><div id="stats" class="grid"></div><h2>Endpoints</h2><div id="health"></div>');
  const refresh = async () => {
    const [samples, listed] = await Promise.all([metrics(), api('GET', '/v1/endpoints')]);
    const counters = [
      ['events received', sum(samples, 'sluice_events_received_total')],
      ['events accepted', sum(samples, 'sluice_events_accepted_total')],
      ['events rejected', sum(samples, 'sluice_events_rejected_total')],
      ['attempts succeeded', sum(samples, 'sluice_delivery_attempts_total', { outcome: 'success' })],
      ['attempts failed', sum(samples, 'sluice_delivery_attempts_total') - sum(samples, 'sluice_delivery_attempts_total', { outcome: 'success' })],
    ];
    const gauges = [
      ['due now', sum(samples, 'sluice_queue_deliveries', { state: 'due' })],
      ['scheduled', sum(samples, 'sluice_queue_deliveries', { state: 'scheduled' })],
      ['dead letters', sum(samples, 'sluice_queue_deliveries', { state: 'dead' })],
      ['paused', sum(samples, 'sluice_queue_paused_deliveries')],
      ['in flight', sum(samples, 'sluice_deliveries_in_flight')],
    ];
    const tile = (label, value, points) =>
      `<div class="stat" data-stat="${esc(label)}"><div class="label">${esc(label)}</div><div class="value">${esc(value)}</div>${sparkline(points)}</div>`;
    document.getElementById('stats').innerHTML =
      counters.map(([label, value]) => tile(label, value, rates(record(label, value)))).join('') +
      gauges.map(([label, value]) => tile(label, value, record(label, value))).join('');
    document.getElementById('health').innerHTML = endpointTable(listed.endpoints, false);
  };
  await refresh();
  timer = setInterval(() => refresh().catch(fail), 3000);
}

async function deliveries() {
  const params = new URLSearchParams(location.hash.split('?')[1] ?? '');
  show(`<h1>Find a delivery</h1>
    <form id="find" class="search">
      <label>Event id <input name="event" placeholder="evt_…" value="${esc(params.get('event'))}"></label>
      <label>Delivery id <input name="delivery" placeholder="dlv_…" value="${esc(params.get('delivery'))}"></label>
      <button type="submit">Look up</button>
    </form>
    <form id="search" class="search">
      <label>Endpoint <input name="endpoint" value="${esc(params.get('endpoint'))}"></label>
      <label>State <select name="state"><option value="">any</option><option>pending</option><option>paused</option><option>succeeded</option><option>dead</option></select></label>
      <label>Since <input name="since" type="datetime-local"></label>
      <label>Until <input name="until" type="datetime-local"></label>
      <button type="submit">Search</button>
    </form>
    <div id="results"></div>`);
  const results = document.getElementById('results');
  document.getElementById('find').addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const id = form.get('delivery').trim();
    if (id) return void (location.hash = `#/delivery/${encodeURIComponent(id)}`);
    try {
      const found = await api('GET', `/v1/events/${encodeURIComponent(form.get('event').trim())}`);
      results.innerHTML = eventCard(found);
    } catch (e) {
      results.innerHTML = `<p class="error" role="alert">${esc(e.message)}</p>`;
    }
  });
  const search = async (before_id) => {
    const form = new FormData(document.getElementById('search'));
    const ms = (name) => (form.get(name) ? new Date(form.get(name)).getTime() : undefined);
    const query = { endpoint: form.get('endpoint'), state: form.get('state'), since: ms('since'), until: ms('until'), before_id, limit: 50 };
    try {
      const page = await api('GET', '/v1/deliveries', query);
      // A page can stop short of `limit` and still go on: the store reads a bounded number of
      // records per page, and says where it stopped.
      const short = page.next_before_id && page.deliveries.length < query.limit;
      results.innerHTML = (page.history_unavailable
        ? `<p class="error" role="alert">History (PostgreSQL) did not answer; showing what the queue holds: ${esc(page.history_unavailable)}</p>` : '') +
        (short && !page.deliveries.length ? '' : deliveryTable(page.deliveries)) +
        (short ? '<p class="notice">The search read its share of records for one page; older ones may match.</p>' : '') +
        (page.next_before_id ? `<button id="more" class="secondary" data-next="${esc(page.next_before_id)}">Older</button>` : '');
      document.getElementById('more')?.addEventListener('click', (e) => search(e.target.dataset.next));
    } catch (e) {
      results.innerHTML = `<p class="error" role="alert">${esc(e.message)}</p>`;
    }
  };
  document.getElementById('search').addEventListener('submit', (event) => {
    event.preventDefault();
    search();
  });
}

function deliveryTable(rows) {
  if (!rows.length) return '<p class="notice">No deliveries match.</p>';
  return `<table><thead><tr><th>Delivery</th><th>Endpoint</th><th>State</th><th>Attempts</th><th>Created</th><th>Last error</th></tr></thead><tbody>${rows
    .map((d) => `<tr><td><a href="#/delivery/${esc(d.id)}">${esc(d.id)}</a></td><td>${esc(d.endpoint)}</td><td>${stateSpan(d.state)}</td>
      <td class="num">${esc(d.attempts_made)}</td><td>${time(d.created_at)}</td><td>${esc(d.last_error)}</td></tr>`)
    .join('')}</tbody></table>`;
}

function eventCard(event) {
  return `<section class="card event"><h2>Event ${esc(event.id)}</h2>
    <p>source <b>${esc(event.source)}</b>, type <b>${esc(event.type)}</b>, received ${time(event.received_at)}</p>
    <h2>Deliveries</h2><ul>${event.deliveries
      .map((d) => `<li><a href="#/delivery/${esc(d.id)}">${esc(d.id)}</a> → ${esc(d.endpoint)} ${stateSpan(d.state)}</li>`)
      .join('')}</ul>
    <h2>Payload</h2><pre class="payload">${esc(pretty(event.payload))}</pre>
    <h2>Headers</h2><pre>${esc((event.headers ?? []).map(([n, v]) => `${n}: ${v}`).join('\n'))}</pre></section>`;
}

async function delivery(id) {
  const found = await api('GET', `/v1/deliveries/${encodeURIComponent(id)}`);
  const attempts = found.attempts ?? [];
  const next = found.state === 'pending' && found.next_attempt_at ? `<li class="next">next attempt ${time(found.next_attempt_at)}</li>` : '';
  show(`<h1>Delivery ${esc(found.id)}</h1>
    <p>to <b>${esc(found.endpoint)}</b> · ${stateSpan(found.state)} · ${esc(found.attempts_made)} attempt(s)
      ${found.state === 'dead' ? `<button id="replay">Replay</button>` : ''}</p>
    <h2>Attempts</h2>
    <ol class="timeline" id="attempts">${attempts
      .map((a) => `<li class="${a.outcome === 'success' ? 'delivered' : 'failed'}">
        <b>#${esc(a.attempt)}</b> ${time(a.at)} · <span class="outcome-${esc(a.outcome)}">${esc(a.outcome)}</span>
        ${a.status ? `· HTTP ${esc(a.status)}` : ''} · ${esc(a.latency_ms)} ms
        ${a.error && a.error !== `HTTP ${a.status}` ? `<div class="error">${esc(a.error)}</div>` : ''}
        ${a.response ? `<pre class="response">${esc(a.response)}</pre>` : ''}</li>`)
      .join('')}${next}</ol>
    <div id="event"></div>`);
  document.getElementById('replay')?.addEventListener('click', async () => {
    await api('POST', `/v1/deliveries/${encodeURIComponent(id)}/replay`).catch(fail);
    route();
  });
  if (found.state === 'pending') timer = setInterval(() => route(), 3000);
  const event = await api('GET', `/v1/events/${encodeURIComponent(found.event_id)}`).catch((e) => e);
  document.getElementById('event').innerHTML =
    event instanceof Error ? `<p class="notice">Its event: ${esc(event.message)}</p>` : eventCard(event);
}

async function dead(endpoint = '') {
  const [listed, page] = await Promise.all([api('GET', '/v1/endpoints'), api('GET', '/v1/dead-letters', { endpoint, limit: 100 })]);
  const names = listed.endpoints.map((e) => e.name);
  show(`<h1>Dead letters</h1>
    <form id="pick" class="search"><label>Endpoint <select name="endpoint"><option value="">every endpoint</option>${names
      .map((n) => `<option ${n === endpoint ? 'selected' : ''}>${esc(n)}</option>`)
      .join('')}</select></label>
      ${endpoint ? `<button type="button" id="replay-all">Replay all for ${esc(endpoint)}</button>` : ''}</form>
    <p id="replay-status" class="notice" role="status"></p>
    ${page.history_unavailable ? `<p class="error">History did not answer: ${esc(page.history_unavailable)}</p>` : ''}
    ${page.dead_letters.length ? `<table id="dead-letters"><thead><tr><th>Delivery</th><th>Endpoint</th><th>Dead since</th><th>Attempts</th><th>Last error</th><th></th></tr></thead><tbody>${page.dead_letters
      .map((d) => `<tr data-id="${esc(d.id)}"><td><a href="#/delivery/${esc(d.id)}">${esc(d.id)}</a></td><td>${esc(d.endpoint)}</td>
        <td>${time(d.dead_at)}</td><td class="num">${esc(d.attempts)}</td><td>${esc(d.last_error)}</td>
        <td class="action"><button class="replay" data-id="${esc(d.id)}">Replay</button></td></tr>`)
      .join('')}</tbody></table>` : '<p class="notice">No dead letters.</p>'}`);
  document.querySelector('#pick select').addEventListener('change', (e) => (location.hash = `#/dead/${encodeURIComponent(e.target.value)}`));
  for (const button of document.querySelectorAll('button.replay')) {
    button.addEventListener('click', async () => {
      button.disabled = true;
      try {
        await api('POST', `/v1/deliveries/${encodeURIComponent(button.dataset.id)}/replay`);
        watch(button.dataset.id, button.closest('td'));
      } catch (e) {
        button.closest('td').innerHTML = `<span class="error">${esc(e.message)}</span>`;
      }
    });
  }
  document.getElementById('replay-all')?.addEventListener('click', async () => {
    const status = document.getElementById('replay-status');
    try {
      const done = await api('POST', `/v1/endpoints/${encodeURIComponent(endpoint)}/replay-dead`);
      status.textContent = `Replaying ${done.replayed ?? 'every'} dead letter(s) of ${endpoint}.`;
      for (const row of document.querySelectorAll('#dead-letters tr[data-id]')) watch(row.dataset.id, row.querySelector('td.action'));
    } catch (e) {
      status.textContent = e.message;
    }
  });
}

/** Follows a replayed delivery until it is delivered or dead again, showing its state in `cell`. */
function watch(id, cell) {
  cell.innerHTML = '<span class="state-pending">replayed: pending</span>';
  const poll = setInterval(async () => {
    if (!cell.isConnected) return clearInterval(poll);
    try {
      const now = await api('GET', `/v1/deliveries/${encodeURIComponent(id)}`);
      cell.innerHTML = `<span class="replayed">replayed: ${stateSpan(now.state)}</span>`;
      if (now.state === 'succeeded' || now.state === 'dead') clearInterval(poll);
    } catch (e) {
      cell.innerHTML = `<span class="error">${esc(e.message)}</span>`;
      clearInterval(poll);
    }
  }, 1000);
}

function endpointTable(rows, actions) {
  return `<table id="endpoint-table"><thead><tr><th>Endpoint</th><th>State</th><th>Failing since</th><th>Disabled</th><th>Parked</th>${actions ? '<th></th>' : ''}</tr></thead><tbody>${rows
    .map((e) => `<tr data-endpoint="${esc(e.name)}"><td>${esc(e.name)}</td><td class="state">${stateSpan(e.state)}</td>
      <td>${time(e.failing_since)}</td><td>${e.disabled_reason ? `${esc(e.disabled_reason)} (${time(e.disabled_at)})` : e.removed_since ? `removed ${time(e.removed_since)}` : '—'}</td>
      <td class="num">${esc(e.paused_deliveries)}</td>
      ${actions ? `<td>${e.state === 'enabled' ? `<button class="toggle" data-action="disable" data-name="${esc(e.name)}">Disable</button>` : e.state === 'disabled' ? `<button class="toggle" data-action="enable" data-name="${esc(e.name)}">Enable</button>` : ''}</td>` : ''}</tr>`)
    .join('')}</tbody></table>`;
}

async function endpoints() {
  const listed = await api('GET', '/v1/endpoints');
  show(`<h1>Endpoints</h1><p class="notice">Disabling parks an endpoint's deliveries; enabling puts them back in the queue.</p>${endpointTable(listed.endpoints, true)}`);
  for (const button of document.querySelectorAll('button.toggle')) {
    button.addEventListener('click', async () => {
      button.disabled = true;
      await api('POST', `/v1/endpoints/${encodeURIComponent(button.dataset.name)}/${button.dataset.action}`).catch(fail);
      route();
    });
  }
}

/** The `q` quantile of a plugin's call latency from its histogram buckets (upper bound, seconds). */
function quantile(samples, plugin, q) {
  const buckets = samples
    .filter((s) => s.name === 'sluice_plugin_call_seconds_bucket' && s.labels.plugin === plugin)
    .map((s) => [s.labels.le === '+Inf' ? Infinity : Number(s.labels.le), s.value])
    .sort((a, b) => a[0] - b[0]);
  const total = buckets.at(-1)?.[1] ?? 0;
  if (!total) return null;
  return buckets.find(([, n]) => n >= q * total)[0];
}

async function plugins() {
  await pluginsPage();
  timer = setInterval(() => pluginsPage().catch(fail), 3000);
}

/** Draws the plugins page (again: it refreshes while shown). */
async function pluginsPage() {
  const [samples, running] = await Promise.all([metrics(), api('GET', '/v1/config')]);
  const configured = running.config.plugins ?? [];
  const ms = (s) => (s === null ? '—' : s === Infinity ? 'over the last bucket' : `≤ ${(s * 1000).toPrecision(2)} ms`);
  const labelled = (name, label, plugin) =>
    samples.filter((s) => s.name === name && s.labels.plugin === plugin && s.value > 0).map((s) => `${esc(s.labels[label])} ${s.value}`).join(', ') || '—';
  show(`<h1>Plugins</h1>${configured.length ? `<table id="plugin-table"><thead><tr><th>Plugin</th><th>Calls by verdict</th><th>Errors by kind</th><th>Skipped</th><th>p50</th><th>p99</th></tr></thead><tbody>${configured
    .map((p) => `<tr data-plugin="${esc(p.name)}"><td>${esc(p.name)}<div class="muted">${esc(p.path)}</div></td>
      <td>${labelled('sluice_plugin_calls_total', 'verdict', p.name)}</td><td>${labelled('sluice_plugin_errors_total', 'kind', p.name)}</td>
      <td class="num">${sum(samples, 'sluice_plugin_skipped_total', { plugin: p.name })}</td>
      <td>${ms(quantile(samples, p.name, 0.5))}</td><td>${ms(quantile(samples, p.name, 0.99))}</td></tr>`)
    .join('')}</tbody></table>` : '<p class="notice">No plugins configured.</p>'}<div id="shadows"></div>`);
  const shadows = await Promise.all(configured.filter((p) => p.shadow).map((p) => api('GET', `/v1/plugins/${encodeURIComponent(p.name)}/shadow`).catch((e) => e)));
  document.getElementById('shadows').innerHTML = shadows
    .map((s) => s instanceof Error ? `<p class="error">${esc(s.message)}</p>` : `<section class="card shadow"><h2>Shadow of ${esc(s.plugin)}: ${esc(s.candidate)}</h2>
      <p>same ${esc(s.same)} · different ${esc(s.different)} · failed ${esc(s.failed)} · skipped ${esc(s.skipped)} (rate ${esc(s.shadow_rate)})</p>
      <table><thead><tr><th>Event</th><th>Live</th><th>Candidate</th></tr></thead><tbody>${s.differences
        .map((d) => `<tr><td>${esc(d.event_id)}<div class="muted">${esc(d.event_type)}</div></td><td>${esc(d.live)}</td><td>${esc(d.candidate)}</td></tr>`)
        .join('')}</tbody></table></section>`)
    .join('');
}

async function config() {
  const running = await api('GET', '/v1/config');
  show(`<h1>Running config</h1><p class="notice">Secrets are masked (a fingerprint shows when one changes). Hash <code>${esc(running.hash)}</code>.</p>
    <pre id="config">${esc(pretty(running.config))}</pre>`);
}

document.getElementById('logout').addEventListener('click', () => {
  token.clear();
  location.hash = '#/login';
  route();
});
window.addEventListener('hashchange', route);
route();
