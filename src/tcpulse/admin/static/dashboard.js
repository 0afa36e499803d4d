// tcpulse live dashboard: one EventSource on api/events; the server pushes a snapshot, then
// deltas (connect, hello, suspect, alive, timeout, close, rtt, update) and a sample a second.
// Nothing here polls the server.  No build step, no third-party code: the page works offline.
"use strict";
(() => {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  let lang = params.get("lang");

  const ZH = {
    "connecting…": "连接中…", "live": "实时", "reconnecting…": "重新连接中…",
    "connected": "已连接", "alive": "正常", "suspect": "疑似超时", "timed out": "超时", "closed": "已断开",
    "closing": "断开中", "messages": "消息", "msg/s": "消息/秒", "connections": "累计连接",
    "connected clients": "已连接客户端", "messages per second": "每秒消息数", "last 10 minutes": "最近 10 分钟",
    "all": "全部", "gone": "已离开", "filter by id or address": "按 id 或地址筛选",
    "client": "客户端", "address": "地址", "state": "状态", "idle": "空闲", "connected at": "连接时间",
    "heartbeats": "心跳", "in": "收", "out": "发", "interval/timeout": "间隔/超时",
    "No clients connected.": "没有已连接的客户端。", "Events": "事件",
    "new connection": "新的客户端连接", "signed in": "已登录", "is suspect: silent for": "疑似超时: 已静默",
    "is alive again": "恢复正常", "timed out: silent for": "心跳超时: 已静默", "disconnected": "已断开",
    "protocol error": "协议错误", "showing": "显示", "of": "/", "late": "延迟",
    "heartbeat": "心跳", "timeout": "超时", "now": "现在", "last minutes": "最近几分钟",
    "node": "节点", "nodes": "节点", "cluster view stale": "集群视图已过期",
  };
  const T = (s) => (lang === "zh" && ZH[s]) || s;

  const $ = (sel) => document.querySelector(sel);
  const tbody = $("#clients tbody");
  const MAX_ROWS = 2000;             // DOM rows kept; the counts still cover every client
  const KEEP_MS = { timeout: 30000, closed: 10000 };  // how long a gone client stays visible
  const OPEN = new Set(["alive", "suspect", "dead"]);

  const rows = new Map();            // cid -> record {data, state, heardAt, tr, cells, goneAt}
  let history = [];
  let sampleEvery = 1;
  let totals = { messages: 0, connections: 0, timeouts: 0, msg_rate: 0 };
  let filter = "all";
  let search = "";

  // ------------------------------------------------------------------ formatting

  const nowS = () => performance.now() / 1000;
  const pad = (n) => String(n).padStart(2, "0");
  function clock(d) { return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`; }
  function dateTime(iso) {
    const d = new Date(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d)}`;
  }
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
  }
  function num(n) { return n >= 10000 ? n.toLocaleString("en-US") : String(n); }
  function stateText(st) {
    return T({ alive: "alive", suspect: "suspect", dead: "closing", timeout: "timed out", closed: "closed" }[st] || st);
  }

  // ------------------------------------------------------------------ rows

  const COLS = ["name", "node", "addr", "state", "idle", "connected_at", "heartbeats", "messages",
                "bytes_in", "bytes_out", "rtt", "hb"];
  let localNode = "";                // in a cluster: this node (rows without `node` are its own)
  const NUMERIC = new Set(["idle", "heartbeats", "messages", "bytes_in", "bytes_out", "rtt", "hb"]);

  function makeRow(rec) {
    const tr = document.createElement("tr");
    tr.dataset.cid = rec.data.cid;
    const cells = {};
    for (const c of COLS) {
      const td = document.createElement("td");
      if (NUMERIC.has(c)) td.className = "num";
      if (c === "node") td.className = "node-col";
      tr.appendChild(td);
      cells[c] = td;
    }
    const badge = document.createElement("span");
    cells.state.appendChild(badge);
    cells.badge = badge;
    rec.tr = tr;
    rec.cells = cells;
    // Rows come in connection order (cid grows), so appending keeps the table sorted.
    tbody.appendChild(tr);
  }

  function render(rec) {
    if (!rec.tr) return;
    const d = rec.data, c = rec.cells;
    rec.tr.dataset.name = d.name;
    rec.tr.dataset.state = rec.state;
    c.name.textContent = d.name;
    c.node.textContent = d.node || localNode;
    c.addr.textContent = d.addr;
    c.badge.className = "badge " + rec.state;
    c.badge.textContent = stateText(rec.state);
    if (rec.detail) c.badge.title = rec.detail;
    c.connected_at.textContent = dateTime(d.connected_at);
    // Another node's client: its counters are its node's to tell (null here).
    c.heartbeats.textContent = d.heartbeats == null ? "-" : num(d.heartbeats);
    c.messages.textContent = d.messages == null ? "-" : num(d.messages);
    c.bytes_in.textContent = d.bytes_in == null ? "-" : bytes(d.bytes_in);
    c.bytes_out.textContent = d.bytes_out == null ? "-" : bytes(d.bytes_out);
    c.rtt.textContent = d.rtt_ms == null ? "-" : `${d.rtt_ms.toFixed(2)} ms`;
    c.hb.textContent = `${d.heartbeat_interval}/${d.heartbeat_timeout} s`;
    renderIdle(rec);
    applyFilter(rec);
  }

  function renderIdle(rec) {
    if (!rec.tr) return;
    // A gone client's idle time stops where it went (for a timeout: how long it was silent).
    if (rec.data.idle == null && OPEN.has(rec.state)) { rec.cells.idle.textContent = "-"; return; }
    const idle = OPEN.has(rec.state) ? nowS() - rec.heardAt : rec.goneIdle;
    rec.cells.idle.textContent = `${Math.max(0, idle || 0).toFixed(1)} s`;
  }

  function applyFilter(rec) {
    if (!rec.tr) return;
    const st = rec.state;
    let show = filter === "all" || (filter === "gone" ? !OPEN.has(st) : st === filter);
    if (show && search) {
      const d = rec.data;
      show = d.name.toLowerCase().includes(search) || d.addr.toLowerCase().includes(search) ||
             (d.node || localNode).toLowerCase().includes(search);
    }
    rec.tr.hidden = !show;
  }

  function upsert(row, state) {
    let rec = rows.get(row.cid);
    if (!rec) {
      rec = { data: row, state: row.state, heardAt: 0, tr: null, cells: null, goneAt: 0, goneIdle: 0 };
      rows.set(row.cid, rec);
      if (domRows() < MAX_ROWS) makeRow(rec);
    }
    rec.data = row;
    if (OPEN.has(rec.state)) rec.heardAt = nowS() - row.idle;
    // A client that timed out or closed keeps that state: later rows (lingering) do not undo it.
    if (OPEN.has(rec.state)) rec.state = state || row.state;
    render(rec);
    return rec;
  }

  function gone(rec, state, detail, silentFor) {
    if (rec.state === "timeout" && state === "closed") return; // the timeout said it already
    if (OPEN.has(rec.state)) rec.goneIdle = silentFor != null ? silentFor : Math.max(0, nowS() - rec.heardAt);
    rec.state = state;
    rec.detail = detail || "";
    rec.goneAt = performance.now();
    render(rec);
  }

  function remove(cid) {
    const rec = rows.get(cid);
    if (!rec) return;
    if (rec.tr) rec.tr.remove();
    rows.delete(cid);
  }

  function domRows() { return tbody.childElementCount; }

  function flash(rec) {
    if (!rec.tr) return;
    rec.tr.classList.add("flash");
    setTimeout(() => rec.tr && rec.tr.classList.remove("flash"), 800);
  }

  // ------------------------------------------------------------------ events log

  function logEvent(kind, text) {
    const li = document.createElement("li");
    const t = document.createElement("time");
    t.textContent = clock(new Date());
    const span = document.createElement("span");
    span.className = kind;
    span.textContent = text;
    li.append(t, span);
    const log = $("#log");
    log.prepend(li);
    while (log.childElementCount > 100) log.lastElementChild.remove();
  }

  // ------------------------------------------------------------------ feed

  function apply(op) {
    const r = op.row;
    switch (op.op) {
      case "connect":
        upsert(r);
        logEvent("alive", `${T("new connection")}: ${r.addr}`);
        break;
      case "hello":
        upsert(r);
        logEvent("alive", `${r.name} ${T("signed in")} (${r.addr}), ${T("heartbeat")} ${r.heartbeat_interval} s, ` +
                          `${T("timeout")} ${r.heartbeat_timeout} s`);
        break;
      case "suspect": {
        const rec = upsert(r, "suspect");
        flash(rec);
        logEvent("suspect", `${r.name} ${T("is suspect: silent for")} ${op.silent_for.toFixed(1)} s`);
        break;
      }
      case "alive":
        flash(upsert(r, "alive"));
        logEvent("alive", `${r.name} ${T("is alive again")}`);
        break;
      case "timeout": {
        let rec = rows.get(r.cid) || upsert(r);
        rec.data = r;
        gone(rec, "timeout", `${op.silent_for} s`, op.silent_for);
        totals.timeouts += 1;
        logEvent("timeout", `${r.name} ${T("timed out: silent for")} ${op.silent_for.toFixed(2)} s ` +
                            `(${T("late")} ${op.late_ms.toFixed(1)} ms)`);
        break;
      }
      case "close": {
        const rec = rows.get(r.cid) || upsert(r);
        rec.data = r;
        if (op.reason !== "timeout") {
          logEvent("closed", `${r.name} ${T("disconnected")}: ${op.reason}${op.detail ? " (" + op.detail + ")" : ""}`);
        }
        gone(rec, op.reason === "timeout" ? "timeout" : "closed", op.detail || op.reason);
        break;
      }
      case "error":
        upsert(r);
        logEvent("timeout", `${r.name}: ${T("protocol error")} ${op.code} ${op.text}`);
        break;
      default:  // update, rtt
        upsert(r);
    }
  }

  function onMessage(msg) {
    if (msg.type === "snapshot") {
      const s = msg.server;
      if (s.lang && !params.get("lang")) { lang = s.lang; translatePage(); }
      $("#server-id").textContent = s.server_id;
      $("#server-info").textContent = `${s.host}:${s.port} · ${T("heartbeat")} ${s.heartbeat_interval} s · ` +
                                       `${T("timeout")} ${s.heartbeat_timeout} s`;
      if (s.cluster) {  // a cluster: the node column, the nodes, and whether the view is stale
        localNode = s.cluster.node;
        $("#clients").classList.add("cluster");
        const span = document.createElement("span");
        span.textContent = ` · ${T("node")} ${s.cluster.node} · ${s.cluster.nodes} ${T("nodes")}`;
        $("#server-info").append(span);
        if (s.cluster.stale) {
          const st = document.createElement("span");
          st.className = "stale";
          st.textContent = ` · ${T("cluster view stale")}`;
          $("#server-info").append(st);
        }
      }
      // Keep gone rows for their last seconds; everything open comes from the snapshot.
      const seen = new Set(msg.clients.map((r) => r.cid));
      for (const [cid, rec] of rows) if (OPEN.has(rec.state) && !seen.has(cid)) remove(cid);
      for (const r of msg.clients) upsert(r);
      history = msg.history || [];
      sampleEvery = msg.sample_every || 1;
      if (history.length) takeTotals(history[history.length - 1]);
    } else if (msg.type === "batch") {
      for (const op of msg.ops) apply(op);
      if (msg.sample) {
        history.push(msg.sample);
        if (history.length > 600) history.shift();
        takeTotals(msg.sample);
      }
    }
    counts();
    if (msg.type === "snapshot" || msg.sample) drawChart();
  }

  function takeTotals(s) {
    totals = { messages: s.messages, connections: s.connections, timeouts: s.timeouts, msg_rate: s.msg_rate };
  }

  function counts() {
    let open = 0, alive = 0, suspect = 0;
    for (const rec of rows.values()) {
      if (OPEN.has(rec.state)) open++;
      if (rec.state === "alive") alive++;
      else if (rec.state === "suspect") suspect++;
    }
    $("#n-clients").textContent = num(open);
    $("#n-alive").textContent = num(alive);
    $("#n-suspect").textContent = num(suspect);
    $("#n-timeouts").textContent = num(totals.timeouts);
    $("#n-messages").textContent = num(totals.messages);
    const r = totals.msg_rate;
    $("#n-rate").textContent = r >= 10 ? num(Math.round(r)) : String(Number(r.toFixed(1)));
    $("#n-connections").textContent = num(totals.connections);
    $("#empty").hidden = rows.size > 0;
    const dom = domRows();
    $("#shown").textContent = dom < rows.size ? `${T("showing")} ${dom} ${T("of")} ${rows.size}` : "";
  }

  let linkUp = null;
  function setLink(up) {
    linkUp = up;
    const el = $("#link");
    el.className = "link " + (up ? "up" : "down");
    el.textContent = T(up ? "live" : "reconnecting…");
  }

  function connect() {
    const es = new EventSource("api/events" + (token ? "?token=" + encodeURIComponent(token) : ""));
    es.onopen = () => setLink(true);
    es.onerror = () => setLink(false);   // EventSource reconnects by itself and gets a new snapshot
    es.onmessage = (e) => onMessage(JSON.parse(e.data));
  }

  // ------------------------------------------------------------------ chart (hand-drawn canvas)

  function niceMax(v) {
    if (v <= 1) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function drawChart() {
    const cv = $("#chart");
    const dpr = window.devicePixelRatio || 1;
    const w = cv.clientWidth, h = cv.clientHeight;
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
      cv.width = Math.round(w * dpr);
      cv.height = Math.round(h * dpr);
    }
    const g = cv.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const color = (n) => css.getPropertyValue(n).trim();
    const L = 44, R = 52, Tp = 8, B = 20;
    const pw = w - L - R, ph = h - Tp - B;
    // The window grows with the history, from one minute up to the ten minutes kept.
    const tEnd = history.length ? history[history.length - 1].t : Date.now() / 1000;
    const have = history.length ? tEnd - history[0].t : 0;
    const span = Math.min(600 * sampleEvery, Math.max(60, Math.ceil(have / 60) * 60));
    const tStart = tEnd - span;
    const pts = history.filter((s) => s.t >= tStart);
    // Client counts are whole numbers: keep the four grid steps whole too.
    const maxC = Math.max(4, Math.ceil(niceMax(Math.max(1, ...pts.map((s) => s.clients))) / 4) * 4);
    const maxR = niceMax(Math.max(1, ...pts.map((s) => s.msg_rate)));
    g.font = "11px system-ui, sans-serif";
    g.strokeStyle = color("--line");
    g.fillStyle = color("--muted");
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = Tp + ph - (ph * i) / 4;
      g.beginPath(); g.moveTo(L, y + 0.5); g.lineTo(L + pw, y + 0.5); g.stroke();
      g.textAlign = "right"; g.fillText(fmtAxis((maxC * i) / 4), L - 6, y + 4);
      g.textAlign = "left"; g.fillText(fmtAxis((maxR * i) / 4), L + pw + 6, y + 4);
    }
    g.textAlign = "center";
    for (const f of [1, 0.5, 0]) {
      const ago = span * f;
      const x = L + pw * (1 - f);
      const label = ago === 0 ? T("now") : ago < 120 ? `-${ago} s` : `-${(ago / 60).toFixed(ago % 120 ? 1 : 0)} min`;
      g.fillText(label, Math.min(Math.max(x, L + 16), L + pw - 12), h - 5);
    }
    const line = (key, max, col) => {
      if (pts.length < 2) return;
      g.strokeStyle = col; g.lineWidth = 2; g.lineJoin = "round";
      g.beginPath();
      pts.forEach((s, i) => {
        const x = L + (pw * (s.t - tStart)) / span;
        const y = Tp + ph - (ph * s[key]) / max;
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    };
    line("msg_rate", maxR, color("--rate"));
    line("clients", maxC, color("--clients"));
  }

  function fmtAxis(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(v % 1e6 ? 1 : 0) + "M";
    if (v >= 1e3) return (v / 1e3).toFixed(v % 1e3 ? 1 : 0) + "k";
    return String(Number(v.toFixed(2)));
  }

  // ------------------------------------------------------------------ page

  function translatePage() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = T(el.dataset.i18n);
    for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
      el.placeholder = T(el.dataset.i18nPlaceholder);
    }
    if (linkUp !== null) setLink(linkUp);
    for (const rec of rows.values()) render(rec);
  }

  $("#filters").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (!b) return;
    filter = b.dataset.filter;
    for (const x of document.querySelectorAll("#filters button")) x.classList.toggle("on", x === b);
    for (const rec of rows.values()) applyFilter(rec);
  });
  $("#search").addEventListener("input", (e) => {
    search = e.target.value.trim().toLowerCase();
    for (const rec of rows.values()) applyFilter(rec);
  });
  window.addEventListener("resize", drawChart);

  // Once a second: idle times tick locally (the server sends when a client was last heard,
  // not a new row every second), and gone clients leave after their last seconds.
  setInterval(() => {
    const now = performance.now();
    let changed = false;
    for (const [cid, rec] of rows) {
      if (!OPEN.has(rec.state) && now - rec.goneAt > (KEEP_MS[rec.state] || 10000)) {
        remove(cid);
        changed = true;
      } else {
        renderIdle(rec);
      }
    }
    if (changed) counts();
  }, 1000);

  if (lang) translatePage();
  drawChart();
  connect();
})();
