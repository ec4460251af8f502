// xpupool pool page: renders /api/snapshot (the same JSON as `xpupool status -o json`), live over
// Server-Sent Events (/api/events) with a polling fallback. Plain DOM, no framework, no build step;
// every text goes through textContent (pod names and reasons are never parsed as HTML).
"use strict";

const state = { snap: null, mode: "alloc", node: null, updates: 0 };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, String(value));
    else node[key] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

const fmt = (v, digits = 0) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const gib = (mib) => (mib / 1024).toFixed(1);
const cards = (v) => (v === null || v === undefined ? "∞" : String(Math.round(v * 1000) / 1000));

function age(seconds) {
  const s = Math.floor(seconds);
  if (s < 120) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
}

// 0..100 -> background colour: blue scale for allocation, orange for utilization, grey when unknown
function shade(pct, mode) {
  if (pct === null || pct === undefined) return "hsl(0, 0%, 88%)";
  const v = Math.max(0, Math.min(100, pct));
  const hue = mode === "alloc" ? 212 : 28;
  return `hsl(${hue}, 75%, ${95 - v * 0.55}%)`;
}

function renderTotals(snap) {
  const t = snap.totals;
  const box = document.getElementById("totals");
  box.replaceChildren(
    ...[
      [t.nodes, "nodes"], [t.cards, "cards"], [t.allocated_cards, "allocated"], [t.free_cards, "free"],
      [t.idle_cards, "idle"], [t.slices, "slices"], [t.pending, "pending"], [t.remote, "remote"],
    ].map(([value, label]) => el("span", { class: "total", "data-total": label },
      el("b", { text: String(value) }), ` ${label}`)));
}

function cardTitle(node, card) {
  const lines = [`${node.name} · card ${card.index} · ${card.model} · ${gib(card.memory_mib)} GiB`,
    `allocated ${fmt(card.allocated_pct)} % · ${gib(card.allocated_memory_mib)} GiB; ` +
    `utilization ${fmt(card.utilization_pct)} %`];
  for (const s of card.slices) lines.push(`  ${s.namespace}/${s.pod}: ${s.share_pct} %, ${gib(s.memory_mib)} GiB`);
  return lines.join("\n");
}

function renderHeatmap(snap) {
  const box = document.getElementById("heatmap");
  const rows = [];
  for (const node of snap.nodes) {
    if (!node.cards.length) continue;
    const label = el("button", {
      type: "button", class: "node-label" + (node.schedulable ? "" : " cordoned"), "data-node": node.name,
      text: node.name, title: `${node.name}: free ${(node.free_pct / 100).toFixed(2)} cards — click for slices`,
    });
    label.addEventListener("click", () => { state.node = node.name; render(); });
    const cells = node.cards.map((card) => {
      const value = state.mode === "alloc" ? card.allocated_pct : card.utilization_pct;
      const cell = el("div", {
        class: "card" + (card.healthy ? "" : " unhealthy"),
        "data-node": node.name, "data-card": card.index, "data-alloc": card.allocated_pct,
        "data-util": card.utilization_pct ?? "", "data-pods": card.slices.map((s) => `${s.namespace}/${s.pod}`).join(" "),
        title: cardTitle(node, card),
      }, el("span", { class: "pct", text: value === null || value === undefined ? "–" : `${Math.round(value)}` }),
      el("span", { class: "stripes" }, ...card.slices.map((s) => {
        const stripe = el("span", { class: "stripe", title: `${s.namespace}/${s.pod} ${s.share_pct} %` });
        stripe.style.width = `${Math.min(100, s.share_pct)}%`;
        return stripe;
      })));
      cell.style.background = shade(value, state.mode);
      if (value !== null && value !== undefined && value > 60) cell.classList.add("dark");
      cell.addEventListener("click", () => { state.node = node.name; render(); });
      return cell;
    });
    const free = el("span", { class: "node-free", text: `free ${(node.free_pct / 100).toFixed(2)}` });
    rows.push(el("div", { class: "node-row" }, label, el("div", { class: "cards" }, ...cells, free)));
  }
  box.replaceChildren(...(rows.length ? rows : [el("p", { class: "empty", text: "no cards in the pool" })]));
  document.getElementById("legend-bar").className = `legend-bar ${state.mode}`;
}

function renderNode(snap) {
  const section = document.getElementById("node-detail");
  const node = state.node && snap.nodes.find((n) => n.name === state.node);
  if (!node) { section.hidden = true; return; }
  section.hidden = false;
  section.setAttribute("data-node", node.name);
  const agent = node.agent_reachable === null ? "no agent asked" : node.agent_reachable ? "agent ok" : "agent unreachable";
  document.getElementById("node-title").textContent =
    `${node.name} · ${node.cards.length} cards · free ${(node.free_pct / 100).toFixed(2)} cards · ${agent}` +
    (node.schedulable ? "" : " · cordoned / not ready");
  const body = el("tbody");
  for (const card of node.cards) {
    body.append(el("tr", { class: "card-row", "data-card": card.index },
      el("td", { text: `${card.index} ${card.model}${card.healthy ? "" : " (unhealthy)"}` }),
      el("td", { class: "free", text: `free ${fmt(card.free_pct)} % · ${gib(card.free_memory_mib)} GiB` }),
      el("td", { class: "num", text: fmt(card.allocated_pct) }),
      el("td", { class: "num", text: gib(card.memory_mib) }),
      el("td", { class: "num", text: fmt(card.memory_used_mib) }),
      el("td", { class: "num", text: fmt(card.utilization_pct) })));
    for (const s of card.slices) {
      const pod = `${s.namespace}/${s.pod}` + (s.remote_from ? ` (from ${s.remote_from})` : "");
      body.append(el("tr", { class: "slice-row", "data-card": card.index, "data-pod": `${s.namespace}/${s.pod}` },
        el("td", {}), el("td", { text: pod, title: `queue ${s.queue} · ${s.phase}` }),
        el("td", { class: "num", text: String(s.share_pct) }),
        el("td", { class: "num", text: gib(s.memory_mib) }),
        el("td", { class: "num", text: fmt(s.memory_used_mib) }),
        el("td", { class: "num", text: fmt(s.utilization_pct) })));
    }
  }
  for (const other of node.other_pods) {
    body.append(el("tr", { class: "other-row" }, el("td", { text: "?" }),
      el("td", { text: `${other.namespace}/${other.pod}: ${other.cards} whole card(s), not placed by xpupool` }),
      el("td"), el("td"), el("td"), el("td")));
  }
  const head = el("thead", {}, el("tr", {}, ...["card", "pod", "compute %", "memory GiB", "used MiB", "util %"]
    .map((h) => el("th", { text: h }))));
  document.getElementById("node-body").replaceChildren(el("table", { class: "node-table" }, head, body));
}

function renderPending(snap) {
  const body = document.querySelector("#pending tbody");
  body.replaceChildren(...snap.pending.map((p) => el("tr", { "data-pod": `${p.namespace}/${p.pod}` },
    el("td", { text: `${p.namespace}/${p.pod}` }), el("td", { text: p.queue }), el("td", { text: p.request }),
    el("td", { class: "num", text: age(p.waiting_s) }), el("td", { class: "reason", text: p.reason }))));
  if (!snap.pending.length) body.append(el("tr", {}, el("td", { colSpan: 5, class: "empty", text: "none" })));
  document.getElementById("pending-count").textContent = String(snap.pending.length);
}

function renderQueues(snap) {
  const box = document.getElementById("queues");
  const rows = snap.queues.map((q) => {
    const scale = Math.max(q.used.cards, q.guarantee.cards, q.limit.cards ?? 0, 1e-9);
    const within = Math.min(q.used.cards, q.guarantee.cards);
    const bar = el("div", { class: "bar" });
    const used = el("div", { class: "used" });
    used.style.width = `${(100 * within) / scale}%`;
    const borrowed = el("div", { class: "borrowed" });
    borrowed.style.width = `${(100 * q.borrowed.cards) / scale}%`;
    bar.append(used, borrowed);
    if (q.guarantee.cards > 0) {
      const mark = el("div", { class: "guarantee", title: `guarantee ${cards(q.guarantee.cards)} cards` });
      mark.style.left = `${(100 * q.guarantee.cards) / scale}%`;
      bar.append(mark);
    }
    const text = !q.reported ? "no status from the scheduler yet" :
      `used ${cards(q.used.cards)} · guaranteed ${cards(q.guarantee.cards)} · limit ${cards(q.limit.cards)}` +
      ` · borrowed ${cards(q.borrowed.cards)} cards · ${q.running} running · ${q.pending} pending` +
      (q.pending ? ` (oldest ${age(q.oldest_pending_s)})` : "");
    return el("div", {
      class: "queue", "data-queue": q.name, "data-used": q.used.cards, "data-guarantee": q.guarantee.cards,
      "data-limit": q.limit.cards ?? "", "data-borrowed": q.borrowed.cards, "data-pending": q.pending,
    }, el("div", { class: "queue-name", text: (q.declared ? q.name : `${q.name} (implicit)`) +
      (q.parent ? ` ⊂ ${q.parent}` : "") }), bar,
    el("div", { class: "queue-text", text }));
  });
  box.replaceChildren(...(rows.length ? rows : [el("p", { class: "empty", text: "no queues" })]));
}

function renderRemote(snap) {
  const body = document.querySelector("#remote tbody");
  body.replaceChildren(...snap.remote.map((r) => el("tr", { "data-pod": `${r.namespace}/${r.pod}` },
    el("td", { text: `${r.namespace}/${r.pod}` }), el("td", { text: r.client_node }), el("td", { text: r.device_node }),
    el("td", { text: r.cards.join(",") }), el("td", { class: "num", text: `${r.share_pct} %` }),
    el("td", { class: "num", text: `${gib(r.memory_mib)} GiB` }),
    el("td", { class: "num", text: `${r.bandwidth_mbps} Mbit/s` }),
    el("td", { class: r.problem ? "reason" : "", text: r.problem ? r.problem.replaceAll("_", " ") : "ok" }))));
  if (!snap.remote.length) body.append(el("tr", {}, el("td", { colSpan: 8, class: "empty", text: "none" })));
  document.getElementById("remote-count").textContent = String(snap.remote.length);
}

function renderWarnings(snap) {
  document.getElementById("warnings-section").hidden = !snap.warnings.length;
  document.getElementById("warnings").replaceChildren(...snap.warnings.map((w) => el("li", { text: w })));
}

function render() {
  const snap = state.snap;
  if (!snap) return;
  renderTotals(snap);
  renderHeatmap(snap);
  renderNode(snap);
  renderPending(snap);
  renderQueues(snap);
  renderRemote(snap);
  renderWarnings(snap);
}

function accept(snap, how) {
  state.snap = snap;
  state.updates += 1;
  document.body.dataset.updates = String(state.updates);
  document.body.dataset.takenAt = snap.taken_at;
  document.getElementById("status").textContent = `${how} · ${snap.taken_at}`;
  render();
}

let pollTimer = null;
async function poll() {
  try {
    const resp = await fetch("/api/snapshot", { cache: "no-store" });
    if (resp.ok) accept(await resp.json(), "polling");
  } catch (err) {
    document.getElementById("status").textContent = `cannot reach the view service (${err})`;
  }
}

function startPolling() {
  if (pollTimer === null) { poll(); pollTimer = setInterval(poll, 5000); }
}

function connect() {
  if (!window.EventSource) { startPolling(); return; }
  const source = new EventSource("/api/events");
  let failures = 0;
  source.addEventListener("snapshot", (event) => {
    failures = 0;
    if (pollTimer !== null) { clearInterval(pollTimer); pollTimer = null; }
    accept(JSON.parse(event.data), "live");
  });
  source.onerror = () => {
    failures += 1;
    document.getElementById("status").textContent = "live stream interrupted, reconnecting…";
    if (failures >= 3) startPolling();  // EventSource keeps retrying; polling keeps the page fresh meanwhile
  };
}

for (const button of document.querySelectorAll(".toggle button")) {
  button.addEventListener("click", () => {
    state.mode = button.dataset.mode;
    for (const b of document.querySelectorAll(".toggle button")) b.classList.toggle("active", b === button);
    render();
  });
}
document.getElementById("node-close").addEventListener("click", () => { state.node = null; render(); });
connect();
