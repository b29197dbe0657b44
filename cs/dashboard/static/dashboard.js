// drlab dashboard: log in (POST /v1/login sets the session cookie), then poll the CS's JSON APIs
// every second and render them. Plain DOM (textContent only, never HTML from data); no dependencies.
"use strict";

const POLL_MS = 1000;
const POINTS_EVERY_MS = 10000; // a points listing asks the MTs (probe jobs): not every second
const COLORS = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#2c7a7b", "#975a16"];
const S = { me: null, timer: null, machines: [], selected: null, pointsAt: 0, history: [], lastSample: 0,
            rpo: {}, jobStates: {}, bannerUntil: 0 };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) node.dataset[dk] = dv;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const kid of kids) node.append(kid instanceof Node ? kid : String(kid ?? ""));
  return node;
}

function cell(col, ...kids) { return el("td", { data: { col } }, ...kids); }
function badge(text) { return el("span", { class: `badge ${text}` }, text); }
function shortId(id) { return id ? String(id).slice(0, 8) : ""; }

function ago(ns) {
  if (!ns) return "never";
  const s = Math.max(0, Date.now() / 1000 - ns / 1e9);
  return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
}

function clock(ns) { return ns ? new Date(ns / 1e6).toLocaleTimeString() : ""; }

function duration(s) {
  if (s === null || s === undefined) return "—";
  return s < 120 ? `${s.toFixed(1)} s` : s < 7200 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(1)} h`;
}

class HttpError extends Error {
  constructor(status, body) { super(body && body.message ? body.message : `HTTP ${status}`); this.status = status; }
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  const resp = await fetch(path, init);
  const data = await resp.json().catch(() => null);
  if (!resp.ok) throw new HttpError(resp.status, data);
  return data;
}

function banner(text) { $("banner").textContent = text || ""; $("banner").hidden = !text; }

function fill(tableId, rows, empty) {
  const body = $(tableId).tBodies[0];
  const cols = $(tableId).tHead.rows[0].cells.length;
  body.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: cols, class: "muted" }, empty))]));
}

// ------------------------------------------------------------------ views

function renderComponents(items) {
  fill("components", items.map((c) => el("tr", { data: { id: c.component_id } },
    cell("role", c.role), cell("host", c.host_id), cell("id", shortId(c.component_id)),
    cell("health", badge(c.health || "ok")), cell("state", c.state || ""), cell("heartbeat", ago(c.last_heartbeat)))),
  "no components registered");
}

function renderMachines(items) {
  S.machines = items;
  const admin = S.me && S.me.role === "admin";
  fill("machines", items.map((m) => {
    const r = S.rpo[m.machine_id];
    const over = r && r.rpo_s > r.threshold_s;
    const protectedDisks = m.disks.filter((d) => d.mt_id).length;
    const button = el("button", { type: "button", class: "action", data: { action: "test-failover", machine: m.machine_id },
      onclick: () => testFailover(m) }, "Test failover");
    button.disabled = !admin || protectedDisks === 0;
    const row = el("tr", { data: { id: m.machine_id }, class: S.selected === m.machine_id ? "selected" : "" },
      cell("name", el("a", { class: "machine", onclick: () => select(m.machine_id) }, m.name)),
      cell("state", badge(m.protection_state)),
      el("td", { class: over ? "num over" : "num", data: { col: "rpo" } }, r ? duration(r.rpo_s) : "—"),
      el("td", { class: "num", data: { col: "threshold" } }, r ? duration(r.threshold_s) : "—"),
      cell("disks", m.disks.map((d) => `${d.name}: ${d.state}`).join(", ")),
      cell("site", m.site || ""), cell("actions", button));
    return row;
  }), "no machines registered");
}

function renderAlerts(items) {
  fill("alerts", items.map((a) => el("tr", { data: { id: String(a.alert_id) } },
    cell("severity", badge(a.severity)), cell("code", a.code), cell("source", shortId(a.source_id)),
    cell("message", a.message), cell("raised", ago(a.raised_ns)))), "no active alerts");
}

function size(bytes) {
  const [unit, div] = bytes >= 2 ** 30 ? ["GiB", 2 ** 30] : bytes >= 2 ** 20 ? ["MiB", 2 ** 20] : ["B", 1];
  return `${+(bytes / div).toFixed(1)} ${unit}`;
}

function renderInventory(items) {
  fill("inventory", items.map((v) => el("tr", { data: { id: `${v.hypervisor}/${v.vm}` } },
    cell("hypervisor", v.hypervisor), cell("vm", v.vm), cell("power", badge(v.power_state)),
    cell("disks", v.disks.map((d) => `${d.name} ${size(d.size_bytes)}`).join(", ")),
    cell("agent", v.agent_installed ? "installed" : "—"),
    cell("machine", v.component_id ? shortId(v.component_id) : "—"),
    cell("protected", v.protected ? badge("protected") : "no"))),
  "no machines discovered on a hypervisor");
}

function renderHypervisors(items) {
  $("hypervisors-note").textContent = items.map((h) => {
    const seen = h.last_discovery_ns ? `discovered ${ago(h.last_discovery_ns)}` : "not discovered yet";
    const error = h.last_error ? `, error: ${h.last_error.code || ""} ${String(h.last_error.message || "").slice(0, 120)}` : "";
    return `${h.name}: ${h.machines} machine${h.machines === 1 ? "" : "s"}, ${seen}${error}`;
  }).join(" · ");
}

function jobTarget(j) {
  const id = j.machine_id || j.disk_id;
  const m = S.machines.find((x) => x.machine_id === id || x.disks.some((d) => d.disk_id === id));
  if (!m) return shortId(id);
  const d = m.disks.find((x) => x.disk_id === id);
  return d ? `${m.name}/${d.name}` : m.name;
}

function renderJobs(items) {
  let finished = false;
  for (const j of items) {
    const before = S.jobStates[j.job_id];
    if (before && before !== j.state && (j.state === "succeeded" || j.state === "failed")) finished = true;
    S.jobStates[j.job_id] = j.state;
  }
  if (finished) S.pointsAt = 0; // a job ended: the selected machine's points may have changed
  fill("jobs", items.map((j) => {
    const pct = j.state === "succeeded" ? 100 : Math.max(0, Math.min(100, j.percent || 0));
    const fillBar = el("span");
    fillBar.style.width = `${pct}%`;
    const last = j.steps.length ? j.steps[j.steps.length - 1] : null;
    return el("tr", { data: { id: j.job_id, kind: j.kind, state: j.state } },
      cell("kind", j.kind), cell("target", jobTarget(j)), cell("state", badge(j.state)),
      cell("progress", el("span", { class: "bar", role: "progressbar", "aria-valuenow": pct.toFixed(0) }, fillBar),
        ` ${pct.toFixed(0)}%`),
      cell("step", last ? last.name || "" : ""), cell("created", clock(j.created_ns)),
      cell("error", j.error ? String(j.error).slice(0, 200) : ""));
  }), "no jobs yet");
}

function renderPoints(listing) {
  const m = S.machines.find((x) => x.machine_id === S.selected);
  $("points-machine").textContent = m ? `of ${m.name}` : "(select a machine)";
  $("points-refresh").hidden = !m;
  if (!listing) { fill("points", [], m ? "loading…" : "select a machine to list its recovery points"); return; }
  const items = [...listing.items].reverse(); // newest first
  fill("points", items.map((p) => el("tr", { data: { wnum: String(p.wnum) } },
    cell("wnum", p.wnum), cell("time", clock(p.t_ns)), cell("accuracy", p.accuracy || ""),
    cell("disks", Object.keys(p.disks || {}).length))), "no recovery points yet");
}

// ------------------------------------------------------------------ RPO chart (inline SVG)

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function renderChart() {
  const chart = $("rpo-chart");
  const W = Math.max(300, Math.round(chart.clientWidth || 800)), H = 220, L = 48, B = 20, T = 8;
  chart.setAttribute("viewBox", `0 0 ${W} ${H}`); // drawn at the element's width: text is not stretched
  const samples = S.history;
  const ids = [...new Set(samples.flatMap((s) => Object.keys(s.rpo_s)))];
  const thresholds = ids.map((id) => (S.rpo[id] || {}).threshold_s).filter((t) => t !== undefined);
  const peak = Math.max(1, ...samples.flatMap((s) => Object.values(s.rpo_s)));
  const top = peak * 1.15;
  const t0 = samples.length ? samples[0].t_ns : 0;
  const t1 = samples.length ? samples[samples.length - 1].t_ns : 1;
  const x = (t) => L + (W - L - 4) * (t1 > t0 ? (t - t0) / (t1 - t0) : 1);
  const y = (v) => T + (H - T - B) * (1 - Math.min(v, top) / top);
  const nodes = [svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }),
                 svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B })];
  for (const v of [0, top / 2, top]) {
    const label = svg("text", { x: 4, y: y(v) + 4 });
    label.textContent = duration(v);
    nodes.push(label);
  }
  for (const t of thresholds.filter((t) => t <= top)) nodes.push(svg("line", { class: "threshold", x1: L, x2: W, y1: y(t), y2: y(t) }));
  if (samples.length) {
    const span = svg("text", { x: W - 4, y: H - 5, "text-anchor": "end" });
    span.textContent = `${clock(t0)} – ${clock(t1)}`;
    nodes.push(span);
  }
  const legend = [];
  ids.forEach((id, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = samples.filter((s) => id in s.rpo_s).map((s) => `${x(s.t_ns).toFixed(1)},${y(s.rpo_s[id]).toFixed(1)}`);
    nodes.push(svg("polyline", { points: pts.join(" "), stroke: color, "data-machine": id }));
    const m = S.machines.find((x) => x.machine_id === id);
    const swatch = el("i");
    swatch.style.background = color;
    legend.push(el("span", {}, swatch, m ? m.name : shortId(id)));
  });
  chart.replaceChildren(...nodes);
  $("rpo-legend").replaceChildren(...legend);
  $("rpo-note").textContent = samples.length ? `(${samples.length} samples)` : "(no machine has a recovery point yet)";
}

// ------------------------------------------------------------------ actions

async function testFailover(m) {
  banner("");
  try {
    const answer = await api("POST", `/v1/machines/${m.machine_id}/test-failover`, {});
    S.jobStates[answer.job_id] = "queued";
    await poll();
  } catch (err) {
    banner(`test failover of ${m.name}: ${err.message}`);
    S.bannerUntil = Date.now() + 10000; // an action's error stays a while
  }
}

function select(machineId) {
  S.selected = machineId;
  S.pointsAt = 0;
  renderMachines(S.machines);
  renderPoints(null);
  refreshPoints();
}

async function refreshPoints() {
  if (!S.selected) return;
  const chosen = S.selected;
  S.pointsAt = Date.now();
  try {
    const listing = await api("GET", `/v1/machines/${chosen}/points?limit=20`);
    if (S.selected === chosen) renderPoints(listing);
  } catch (err) {
    if (S.selected === chosen) fill("points", [], `cannot list the points: ${err.message}`);
  }
}

// ------------------------------------------------------------------ the loop

async function poll() {
  try {
    const [comps, machines, jobs, alerts, rpo, inventory, hypervisors] = await Promise.all([
      api("GET", "/v1/components?limit=1000"), api("GET", "/v1/machines?limit=1000"),
      api("GET", "/v1/jobs?limit=20"), api("GET", "/v1/alerts?active=1&limit=100"),
      api("GET", `/v1/dashboard/rpo?since_ns=${S.lastSample}`), api("GET", "/v1/inventory"),
      api("GET", "/v1/hypervisors?limit=1000")]);
    S.rpo = rpo.machines;
    S.history = S.history.concat(rpo.history).slice(-1800);
    if (rpo.history.length) S.lastSample = rpo.history[rpo.history.length - 1].t_ns;
    renderComponents(comps.items);
    renderMachines(machines.items);
    renderAlerts(alerts.items);
    renderInventory(inventory.items);
    renderHypervisors(hypervisors.items);
    renderJobs(jobs.items.filter((j) => !(j.params && j.params.listing)));
    renderChart();
    if (S.selected && Date.now() - S.pointsAt > POINTS_EVERY_MS) refreshPoints();
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("updated").dataset.at = String(Date.now());
    if (Date.now() > S.bannerUntil) banner("");
  } catch (err) {
    if (err.status === 401) { showLogin("your session ended: log in again"); return; }
    banner(`the CS did not answer: ${err.message}`);
  }
}

function schedule() {
  clearTimeout(S.timer);
  S.timer = setTimeout(async () => { await poll(); if (S.me) schedule(); }, POLL_MS);
}

function showLogin(message) {
  S.me = null;
  clearTimeout(S.timer);
  $("dashboard-view").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
  $("login-name").focus();
}

async function showDashboard(me) {
  S.me = me;
  $("who").textContent = `${me.name} (${me.role})`;
  $("login-view").hidden = true;
  $("dashboard-view").hidden = false;
  $("logout").hidden = me.via !== "session";
  renderPoints(null);
  await poll();
  schedule();
}

async function onLogin(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  $("login-submit").disabled = true;
  try {
    await api("POST", "/v1/login", { name: $("login-name").value, password: $("login-password").value });
    $("login-password").value = "";
    await showDashboard(await api("GET", "/v1/whoami"));
  } catch (err) {
    $("login-error").textContent = err.status === 401 ? "wrong name or password" : err.message;
  } finally {
    $("login-submit").disabled = false;
  }
}

async function onLogout() {
  try { await api("POST", "/v1/logout"); } catch (err) { /* the session may already be gone */ }
  showLogin("logged out");
}

async function start() {
  $("login").addEventListener("submit", onLogin);
  $("logout").addEventListener("click", onLogout);
  $("points-refresh").addEventListener("click", refreshPoints);
  try {
    await showDashboard(await api("GET", "/v1/whoami")); // a session cookie from before
  } catch (err) {
    showLogin(err.status === 401 ? "" : err.message);
  }
}

document.addEventListener("DOMContentLoaded", start);
