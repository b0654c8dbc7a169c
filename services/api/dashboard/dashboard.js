// The rollguard dashboard: models at a glance, approvals, incidents and an incident's
// timeline, polled from the API (/api/...). Actions send the role token typed in the header
// as a bearer token; it stays in this tab (sessionStorage), never in a cookie.
"use strict";

const $ = (sel) => document.querySelector(sel);
let refreshMs = 2000;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

async function getJson(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

function ago(iso) {
  if (!iso) return "-";
  const s = (Date.now() - Date.parse(iso)) / 1000, a = Math.abs(s);
  if (a >= 5400) return new Date(iso).toLocaleString();
  const said = a < 90 ? `${Math.round(a)} s` : `${Math.round(a / 60)} min`;
  return s < 0 ? `in ${said}` : `${said} ago`;
}

function version(m) { return m ? `${m.system_version} (${m.model_version})` : "-"; }

function show(outcome, text) {
  const box = $("#answer");
  box.className = outcome;
  box.textContent = text;
  box.hidden = false;
  clearTimeout(show.timer);
  show.timer = setTimeout(() => { box.hidden = true; }, 15000);
}

async function act(path, body) {
  const token = $("#token").value.trim();
  sessionStorage.setItem("rollguard-token", token);
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  show("busy", `sent, waiting for the decider…`);
  try {
    const r = await fetch(path, { method: "POST", headers, body: JSON.stringify({ role: $("#role").value, ...body }) });
    const doc = await r.json();
    if (doc.lines) show(doc.outcome, `${doc.outcome.replaceAll("_", " ")}\n${doc.lines.join("\n")}`);
    else show("error", `${r.status}: ${typeof doc.detail === "string" ? doc.detail : JSON.stringify(doc.detail)}`);
  } catch (e) {
    show("error", String(e));
  }
  refresh();
}

function modelRow(m) {
  const s = m.status;
  const flight = s.in_flight ? `command ${s.in_flight.command_id.slice(0, 12)} → ${s.in_flight.target_system_version}`
    : s.verifying ? `verifying ${s.verifying.restored_version}` : "-";
  const cooling = s.cooldown_until && Date.parse(s.cooldown_until) > Date.now() ? `until ${ago(s.cooldown_until)}` : "-";
  const buttons = el("td", {});
  buttons.append(el("button", { "data-action": "rollback", onclick: () => {
    const reason = prompt(`Roll ${m.model_id} back: why?`, "");
    if (reason !== null) act(`/api/models/${encodeURIComponent(m.model_id)}/rollback`, { reason });
  } }, "roll back"));
  const operate = (action, extra = {}) => {
    const reason = prompt(`${action} ${m.model_id}: why? (the ledger keeps it)`, "");
    if (reason) act(`/api/models/${encodeURIComponent(m.model_id)}/${action}`, { reason, ...extra });
  };
  buttons.append(" ", s.paused
    ? el("button", { "data-action": "resume", onclick: () => operate("resume") }, "resume")
    : el("button", { "data-action": "pause", onclick: () => operate("pause") }, "pause"));
  const modes = el("select", { "data-action": "mode", title: "switch the mode" },
    ...["enforce", "recommend", "observe"].map((x) => {
      const o = el("option", { value: x }, x);
      if (x === m.mode) o.selected = true;
      return o;
    }));
  modes.addEventListener("change", () => operate("mode", { mode: modes.value }));
  buttons.append(" ", modes);
  if (s.locked) {
    buttons.append(" ", el("button", { "data-action": "unlock", onclick: () => {
      const reason = prompt(`Unlock ${m.model_id}: why?`, "");
      if (reason) act(`/api/models/${encodeURIComponent(m.model_id)}/unlock`, { reason });
    } }, "unlock"));
  }
  return el("tr", { class: m.health, "data-model": m.model_id },
    el("td", {}, el("b", {}, m.model_id)),
    el("td", { class: "health" }, m.health.replaceAll("_", " ")),
    el("td", {}, version(s.live)),
    el("td", {}, version(s.rollback_target)),
    el("td", {}, s.known_good.map((k) => k.system_version).join(", ") || "-"),
    el("td", {}, m.mode),
    el("td", {}, s.locked || (s.paused ? `paused by ${s.paused.by}: ${s.paused.reason}` : "-")),
    el("td", {}, cooling),
    el("td", {}, flight),
    buttons);
}

function approvalRow(p) {
  return el("tr", { "data-decision": p.decision_id },
    el("td", {}, p.model_id),
    el("td", {}, el("a", { href: `/incidents/${p.decision_id}` }, p.decision_id.slice(0, 12))),
    el("td", {}, String(p.level)),
    el("td", {}, p.required_roles.join(", ")),
    el("td", {}, p.approvers.map((a) => `${a.name} (${a.role})`).join(", ") || "-"),
    el("td", {}, ago(p.expires_at)),
    el("td", {}, el("button", { "data-action": "approve", onclick: () =>
      act(`/api/approvals/${encodeURIComponent(p.decision_id)}`, { model_id: p.model_id, comment: "approved from the dashboard" }) }, "approve")));
}

function incidentRow(i) {
  return el("tr", { class: i.state, "data-incident": i.id },
    el("td", {}, ago(i.ts)),
    el("td", {}, i.model_id || "-"),
    el("td", {}, el("a", { href: `/incidents/${i.id}` }, `${i.action}${i.level ? ` level ${i.level}` : ""}${i.target_system_version ? ` → ${i.target_system_version}` : ""}`)),
    el("td", {}, i.tier || "manual"),
    el("td", {}, i.reasons.join(", ")),
    el("td", { class: "state" }, i.state.replaceAll("_", " ")));
}

function fill(table, rows, empty) {
  $(`${table} tbody`).replaceChildren(...rows);
  if (empty) $(empty).hidden = rows.length > 0;
}

async function refreshIntegrity() {
  try {
    const i = await getJson("/api/ledger/integrity");
    const badge = $("#integrity");
    badge.className = `badge ${i.ok ? "ok" : "bad"}`;
    badge.textContent = i.ok ? `ledger ok · ${i.entries} entries` : `ledger BROKEN${i.first_bad_seq != null ? ` at seq ${i.first_bad_seq}` : ""}`;
    badge.title = i.reason || `head ${i.head_hash.slice(0, 16)}; ${i.checkpoints_checked} checkpoint(s)`;
  } catch (e) { /* said by the next refresh */ }
}

async function refreshOverview() {
  const [models, approvals, incidents] = await Promise.all([
    getJson("/api/models"), getJson("/api/approvals"), getJson("/api/incidents?limit=50")]);
  fill("#models", models.map(modelRow), "#no-models");
  fill("#approvals", approvals.map(approvalRow), "#no-approvals");
  fill("#incidents", incidents.map(incidentRow));
}

const FIGURES = [
  ["mttd_s", "MTTD"], ["time_to_decision_s", "breach → decision"],
  ["time_to_approval_s", "decision → approval"], ["mttr_s", "MTTR (applied)"],
  ["time_to_verify_s", "live → verified"]];

function drawTimeline(entries) {
  // One row per entry, at its time on a shared axis: the gaps read as the incident's delays.
  const svg = $("#timeline");
  const ns = "http://www.w3.org/2000/svg";
  const put = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  svg.replaceChildren();
  const timed = entries.filter((e) => !Number.isNaN(Date.parse(e.ts)));
  const rowH = 22, top = 24;
  svg.setAttribute("height", top + rowH * timed.length + 10);
  if (!timed.length) return;
  const width = svg.clientWidth || 900, left = 20, right = 360;
  const times = timed.map((e) => Date.parse(e.ts));
  const t0 = Math.min(...times), span = Math.max(Math.max(...times) - t0, 1);
  const x = (t) => left + ((t - t0) / span) * (width - left - right);
  for (let i = 0; i <= 4; i++) {  // the axis: five ticks in seconds from the first entry
    const t = t0 + (span * i) / 4;
    put("line", { x1: x(t), x2: x(t), y1: 14, y2: top + rowH * timed.length, stroke: "#d0d7de" });
    put("text", { x: x(t), y: 11, "text-anchor": "middle", class: "muted" }, `+${((t - t0) / 1000).toFixed(2)} s`);
  }
  timed.forEach((e, n) => {
    const t = Date.parse(e.ts), y = top + rowH * n + rowH / 2;
    const dot = put("circle", { cx: x(t), cy: y, r: 6, class: `kind-${e.event_type}` });
    const tip = document.createElementNS(ns, "title");
    tip.textContent = `${e.ts}\n${e.summary}`;
    dot.append(tip);
    const label = e.summary.length > 52 ? `${e.summary.slice(0, 50)}…` : e.summary;
    put("text", { x: x(t) + 10, y: y + 4 }, `+${((t - t0) / 1000).toFixed(2)} s  ${label}`);
  });
}

async function refreshIncident(id) {
  const i = await getJson(`/api/incidents/${encodeURIComponent(id)}`);
  const d = i.decision;
  $("#incident-title").textContent = `Incident ${i.id.slice(0, 12)} · ${i.model_id} ${d.model_version || ""} · ${d.action}${d.tier ? ` [${d.tier}]` : ""}`;
  $("#figures").replaceChildren(...FIGURES.filter(([k]) => i.figures[k] != null).map(([k, label]) =>
    el("div", { "data-figure": k }, el("b", {}, `${i.figures[k].toFixed(2)} s`), label)));
  drawTimeline(i.timeline);
  $("#entries").replaceChildren(...i.timeline.map((e) => el("li", { "data-kind": e.event_type },
    el("span", { class: "muted" }, `${e.ts || "?"}  `), e.summary,
    ...e.details.map((line) => el("div", { class: "details" }, line)))));
}

async function refresh() {
  const match = location.pathname.match(/^\/incidents\/([^/]+)/);
  $("#overview").hidden = !!match;
  $("#incident").hidden = !match;
  try {
    if (match) await refreshIncident(decodeURIComponent(match[1]));
    else await refreshOverview();
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("#updated").textContent = `not updated: ${e.message}`;
  }
  refreshIntegrity();
}

async function start() {
  $("#token").value = sessionStorage.getItem("rollguard-token") || "";
  try { refreshMs = (await getJson("/api/dashboard")).refresh_s * 1000; } catch (e) { /* default */ }
  // The next refresh is asked once this one is done: slow answers never pile up.
  const loop = async () => { await refresh(); setTimeout(loop, refreshMs); };
  await loop();
}

start();
