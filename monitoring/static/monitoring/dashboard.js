// The staff dashboard (docs/monitoring.md). It starts from the metrics API's body that
// the page embeds, then follows the `ops` topic over the realtime WebSocket:
// `metrics.live` (every few seconds) adds a point to each chart, `alert.*` updates the
// alert list. While the socket is not live, or no live figures arrived for a while (beat
// stopped), it polls the API every 5 s instead. Staff actions (wedding-day mode, cache
// warming, acknowledging an alert) are POSTs to the same API with the CSRF token.

import { RealtimeClient, socketUrl } from "../web/realtime.js";
import { fill, h } from "../web/util.js";

const POLL_MS = 5000;
// Live figures older than this mean nobody publishes them (beat down): poll instead.
const STALE_MS = 12000;
// Today's weddings and their connected vendors are not in the live events.
const REFRESH_MS = 30000;
const MAX_POINTS = 720; // an hour of 5-second points

const dashboard = document.getElementById("dashboard");
const apiUrl = dashboard.dataset.api;
const csrfToken = document.querySelector("#mode-form [name=csrfmiddlewaretoken]").value;

const state = {
  overview: JSON.parse(document.getElementById("overview").textContent),
  points: [],
  alerts: new Map(),
  lastLiveAt: 0,
  lastPollAt: Date.now(), // the page came with the API's body
};

// --- formatting ----------------------------------------------------------------------------

const num = (value, digits = 1) =>
  value === null || value === undefined ? "–" : Number(value).toFixed(digits);
const pct = (ratio) => (ratio === null || ratio === undefined ? "–" : `${(ratio * 100).toFixed(1)} %`);
const ms = (seconds) =>
  seconds === null || seconds === undefined ? "–" : `${Math.round(seconds * 1000)} ms`;
const epoch = (iso) => Date.parse(iso) / 1000;

// --- charts --------------------------------------------------------------------------------

const CHARTS = {
  connections: { series: [["connections", "#417690", (p) => p.connections]] },
  deliveries: { series: [["deliveries/s", "#2e7d32", (p) => p.deliveries_per_s]] },
  latency: {
    series: [
      ["p50", "#5b8def", (p) => scale(p.latency && p.latency.p50, 1000)],
      ["p95", "#f0a030", (p) => scale(p.latency && p.latency.p95, 1000)],
      ["p99", "#c0392b", (p) => scale(p.latency && p.latency.p99, 1000)],
    ],
  },
  cache: {
    series: [
      ["L1", "#417690", (p) => scale(p.cache && p.cache.l1, 100)],
      ["L2", "#8e44ad", (p) => scale(p.cache && p.cache.l2, 100)],
    ],
  },
  errors: { series: [["errors", "#c0392b", (p) => scale(p.error_rate, 100)]] },
};

function scale(value, factor) {
  return value === null || value === undefined ? null : value * factor;
}

const plots = {};

function chartWidth(el) {
  return Math.max(240, Math.floor(el.getBoundingClientRect().width) || 300);
}

function buildCharts() {
  for (const [name, spec] of Object.entries(CHARTS)) {
    const el = document.getElementById(`chart-${name}`);
    const options = {
      width: chartWidth(el),
      height: 160,
      legend: { show: spec.series.length > 1 },
      cursor: { drag: { x: false, y: false } },
      // One point alone would stretch the axis over years: show it within two minutes.
      scales: { x: { time: true, range: (u, min, max) => (min === max ? [min - 60, max + 60] : [min, max]) } },
      series: [{}, ...spec.series.map(([label, stroke]) => ({ label, stroke, width: 2, spanGaps: true }))],
      axes: [{}, { size: 48 }],
    };
    plots[name] = { el, spec, plot: new uPlot(options, chartData(spec), el) };
  }
  const resize = new ResizeObserver(() => {
    for (const { el, plot } of Object.values(plots)) plot.setSize({ width: chartWidth(el), height: 160 });
  });
  for (const { el } of Object.values(plots)) resize.observe(el.parentElement);
}

function chartData(spec) {
  const xs = state.points.map((p) => epoch(p.at));
  return [xs, ...spec.series.map(([, , pick]) => state.points.map((p) => pick(p) ?? null))];
}

function redrawCharts() {
  for (const { el, spec, plot } of Object.values(plots)) {
    plot.setData(chartData(spec));
    el.dataset.points = String(state.points.length);
  }
}

/** Add figures as a chart point, in time order and once per timestamp. */
function addPoint(point) {
  if (!point || !point.at) return false;
  const last = state.points[state.points.length - 1];
  if (last && epoch(point.at) <= epoch(last.at)) return false;
  state.points.push(point);
  if (state.points.length > MAX_POINTS) state.points.splice(0, state.points.length - MAX_POINTS);
  return true;
}

// --- tiles, mode, alerts, weddings -----------------------------------------------------------

function setTile(id, text) {
  document.querySelector(`#${id} .value`).textContent = text;
}

function renderTiles(point) {
  if (!point) return;
  setTile("tile-connections", point.connections ?? "–");
  setTile("tile-deliveries", num(point.deliveries_per_s));
  setTile("tile-latency", ms(point.latency && point.latency.p95));
  setTile("tile-errors", pct(point.error_rate));
  setTile("tile-cache", pct(point.cache && point.cache.combined));
}

function renderMode(mode) {
  const box = document.getElementById("mode");
  box.dataset.enabled = String(Boolean(mode.enabled));
  box.querySelector(".mode-state").textContent = mode.enabled ? "on" : "off";
  box.querySelector(".mode-reason").textContent = mode.reason || "";
  document.getElementById("mode-toggle").textContent = mode.enabled ? "Switch off" : "Switch on";
  state.overview.wedding_day_mode = mode;
}

function renderAlerts() {
  const list = document.getElementById("alerts");
  const alerts = [...state.alerts.values()].sort(
    (a, b) => (a.severity === "critical" ? 0 : 1) - (b.severity === "critical" ? 0 : 1) || a.id - b.id,
  );
  setTile("tile-alerts", String(alerts.length));
  if (!alerts.length) {
    fill(list, h("li", { class: "quiet" }, "No open alerts."));
    return;
  }
  fill(
    list,
    alerts.map((alert) =>
      h(
        "li",
        { class: `alert ${alert.severity}`, dataset: { alertId: alert.id, status: alert.status } },
        h("span", { class: "badge" }, alert.severity),
        h("strong", {}, alert.title),
        alert.subject ? h("span", { class: "subject" }, ` ${alert.subject}`) : null,
        h("div", { class: "message" }, alert.message),
        h(
          "div",
          { class: "meta" },
          `${alert.escalation} · opened ${new Date(alert.opened_at).toLocaleTimeString()}`,
          alert.acknowledged_by ? ` · acknowledged by ${alert.acknowledged_by}` : "",
        ),
        alert.status === "open"
          ? h("button", { type: "button", class: "button ack", onclick: () => acknowledge(alert.id) }, "Acknowledge")
          : h("span", { class: "acked" }, "acknowledged"),
      ),
    ),
  );
}

function setAlerts(alerts) {
  state.alerts = new Map(alerts.map((a) => [a.id, a]));
  renderAlerts();
}

function renderWeddings(weddings) {
  const list = document.getElementById("weddings");
  if (!weddings.length) {
    fill(list, h("li", { class: "quiet" }, "No weddings today."));
    return;
  }
  fill(
    list,
    weddings.map((w) =>
      h(
        "li",
        { dataset: { weddingId: w.id, connected: w.connected_suppliers } },
        h("strong", {}, w.couple),
        h("span", { class: "meta" }, ` ${w.ceremony} ${w.time_zone} · ${w.venue || "venue tbc"}`),
        h("div", { class: "meta" }, `${w.connected_suppliers} of ${w.suppliers.length} vendors connected`),
        h(
          "ul",
          { class: "vendors" },
          w.suppliers.map((s) =>
            h(
              "li",
              { class: s.connected ? "on" : "off", dataset: { supplierId: s.id } },
              `${s.name} (${s.category})${s.connected ? ` · ${s.connected} online` : ""}`,
            ),
          ),
        ),
      ),
    ),
  );
}

function renderScaling(decisions) {
  const list = document.getElementById("scaling");
  if (!decisions.length) {
    fill(list, h("li", { class: "quiet" }, "No scaling decision yet."));
    return;
  }
  fill(
    list,
    decisions.map((d) =>
      h(
        "li",
        { dataset: { decisionId: d.id, status: d.status } },
        h("strong", {}, `${d.asgi} server processes · ${d.workers} workers`),
        h("span", { class: "meta" }, ` ${new Date(d.made_at).toLocaleString()} · ${d.action} · ${d.status}`),
        h("div", { class: "meta" }, d.reason),
      ),
    ),
  );
}

// Capacity reservations (ADR 0033): planned or active, soonest first; a released or
// cancelled one leaves the panel.
function renderReservations(reservations) {
  const list = document.getElementById("reservations");
  if (!list) return;
  if (!reservations.length) {
    fill(list, h("li", { class: "quiet" }, "No peak reserved for the next 24 h."));
    return;
  }
  const at = (t) => new Date(t).toLocaleString();
  fill(
    list,
    reservations.map((r) =>
      h(
        "li",
        { dataset: { reservationId: r.id, status: r.status } },
        h("strong", {}, `${r.asgi} server processes · ${r.workers} workers · ${r.status}`),
        h("span", { class: "meta" }, ` peak ${at(r.peak_at)} · ${r.connections} connections · ${r.weddings} wedding(s)`),
        h("div", { class: "meta" }, `from ${at(r.starts_at)} until ${at(r.ends_at)}`),
      ),
    ),
  );
}

function applyOverview(overview) {
  state.overview = overview;
  renderStale(overview.stale_since);
  if (overview.stale_since) return; // the last figures: already drawn, no new point
  const current = overview.current;
  const added = addPoint(current);
  renderTiles(current);
  renderMode(overview.wedding_day_mode);
  setAlerts(overview.alerts);
  renderWeddings(overview.weddings);
  state.scaling = overview.scaling || [];
  renderScaling(state.scaling);
  state.reservations = overview.reservations || [];
  renderReservations(state.reservations);
  if (added) redrawCharts();
}

// While the database is unreachable the API answers its last figures with `stale_since`:
// the page keeps them and says since when they are old.
function renderStale(since) {
  const el = document.getElementById("stale");
  el.hidden = !since;
  el.textContent = since
    ? `Figures stale since ${new Date(since).toLocaleTimeString()}: the database is unreachable`
    : "";
}

// --- the API ---------------------------------------------------------------------------------

async function api(method, body) {
  const response = await fetch(apiUrl, {
    method,
    credentials: "same-origin",
    headers: { Accept: "application/json", "Content-Type": "application/json", "X-CSRFToken": csrfToken },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new Error(error.message || `HTTP ${response.status}`);
  }
  return data;
}

async function poll() {
  state.lastPollAt = Date.now();
  try {
    applyOverview(await api("GET"));
  } catch (err) {
    say(`Could not load the figures: ${err.message}`);
  }
}

function say(text) {
  document.getElementById("action-result").textContent = text;
}

async function acknowledge(id) {
  try {
    const { alert } = await api("POST", { action: "acknowledge_alert", alert_id: id });
    state.alerts.set(alert.id, alert);
    renderAlerts();
  } catch (err) {
    say(`Not acknowledged: ${err.message}`);
  }
}

document.getElementById("mode-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const enabled = !state.overview.wedding_day_mode.enabled;
  try {
    const data = await api("POST", { action: "wedding_day_mode", enabled, reason: form.reason.value });
    renderMode(data.wedding_day_mode);
    form.reason.value = "";
    say(`Wedding-day mode is ${enabled ? "on" : "off"}.`);
  } catch (err) {
    say(`Not switched: ${err.message}`);
  }
});

document.getElementById("warm-cache").addEventListener("click", async () => {
  try {
    await api("POST", { action: "warm_cache" });
    say("Cache warming queued.");
  } catch (err) {
    say(`Not queued: ${err.message}`);
  }
});

// --- live ------------------------------------------------------------------------------------

function onEvent(frame) {
  const p = frame.payload;
  if (frame.event === "metrics.live") {
    state.lastLiveAt = Date.now();
    renderTiles(p);
    if (typeof p.wedding_day_mode === "boolean" && p.wedding_day_mode !== state.overview.wedding_day_mode.enabled) {
      poll(); // switched elsewhere: fetch the reason and who did it
    }
    if (addPoint(p)) redrawCharts();
  } else if (frame.event === "scaling.decided") {
    state.scaling = [p, ...(state.scaling || []).filter((d) => d.id !== p.id)].slice(0, 5);
    renderScaling(state.scaling);
  } else if (frame.event === "scaling.reserved") {
    const others = (state.reservations || []).filter((r) => r.id !== p.id);
    const open = p.status === "planned" || p.status === "active";
    state.reservations = (open ? [...others, p] : others)
      .sort((a, b) => new Date(a.starts_at) - new Date(b.starts_at))
      .slice(0, 10);
    renderReservations(state.reservations);
  } else if (frame.event.startsWith("alert.")) {
    if (frame.event === "alert.resolved") state.alerts.delete(p.id);
    else state.alerts.set(p.id, p);
    renderAlerts();
  }
}

function setLive(text, mode) {
  const el = document.getElementById("live");
  el.dataset.state = mode;
  el.textContent = text;
}

const client = new RealtimeClient({
  url: socketUrl(),
  onEvent,
  onState: (s) => {
    document.getElementById("live").dataset.socket = s;
    if (s === "live") setLive("live", "live");
    else setLive(`polling every ${POLL_MS / 1000} s (${s})`, "polling");
  },
});
client.track("ops");

for (const point of state.overview.history) addPoint(point);
buildCharts();
applyOverview(state.overview);
client.start();

setInterval(() => {
  const live = client.state === "live" && Date.now() - state.lastLiveAt < STALE_MS;
  if (client.state === "live" && !live) setLive("live (no figures lately: polling)", "polling");
  else if (live) setLive("live", "live");
  const due = live ? REFRESH_MS : POLL_MS;
  if (Date.now() - state.lastPollAt >= due) poll();
}, 1000);
