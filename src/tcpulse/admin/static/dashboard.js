// tcpulse live dashboard: a window onto the server, not a copy of it.
//
// - The table asks the server for the rows in view only (api/clients: paging, sorting and the
//   filters happen there), again once a second while the page is visible, and when the view
//   changes (scroll, sort, filter, search).  Only those rows exist in the page, between two
//   spacers that give the scroll bar its length: 10 rows or 10,000 cost the page the same.
// - One EventSource (api/events/stream) brings the events (the log, and state changes of the rows
//   in view as they happen) and, once a second, the counts and a sample for the chart.
// No build step, no third-party code: the page works offline.
"use strict";
(() => {
  const params = new URLSearchParams(location.search);
  let lang = params.get("lang");

  const ZH = {
    "connecting…": "连接中…", "live": "实时", "reconnecting…": "重新连接中…",
    "node": "节点", "nodes": "个节点", "stale": "集群视图已过期",
    "connected": "已连接", "alive": "正常", "suspect": "疑似超时", "timed out": "超时", "closed": "已断开",
    "closing": "断开中", "messages": "消息", "msg/s": "消息/秒", "connections": "累计连接",
    "connected clients": "已连接客户端", "messages per second": "每秒消息数",
    "all": "全部", "gone": "已离开", "filter by id or address": "按 id 或地址筛选",
    "client": "客户端", "address": "地址", "state": "状态", "last heard": "最后收到", "connected at": "连接时间",
    "HEARTBEATs": "心跳帧", "in / out": "收 / 发", "interval / timeout": "间隔 / 超时",
    "No clients connected.": "没有已连接的客户端。", "No clients match.": "没有匹配的客户端。", "Events": "事件",
    "new connection": "新的客户端连接", "signed in": "已登录", "is suspect: silent for": "疑似超时: 已静默",
    "is alive again": "恢复正常", "timed out: silent for": "心跳超时: 已静默", "disconnected": "已断开",
    "protocol error": "协议错误", "late": "延迟", "heartbeat": "心跳", "timeout": "超时", "now": "现在",
    "ago": "前", "more events not shown": "条事件未显示", "rows": "行", "of": "/",
    "This dashboard needs the admin token (--admin-token).": "此仪表盘需要管理令牌 (--admin-token)。",
    "Open": "打开", "That token was refused.": "令牌被拒绝。",
    "Bytes received from / sent to the client (sorts by received).": "从客户端收到 / 发往客户端的字节数(按收到的排序)。",
    "Time since the client's last frame of any kind (HEARTBEAT, PING, PONG, MSG): what proves it alive.":
      "距客户端最后一帧(HEARTBEAT、PING、PONG、MSG 均算)的时间: 这才是存活的证明。",
    "HEARTBEAT frames received. A client that proves life with PING or messages (an interactive tcpulse connect) keeps this at 0: see last heard.":
      "收到的 HEARTBEAT 帧数。用 PING 或消息证明存活的客户端(交互式 tcpulse connect)此列为 0: 请看“最后收到”。",
  };
  const T = (s) => (lang === "zh" && ZH[s]) || s;

  const $ = (sel) => document.querySelector(sel);
  const scroller = $("#table-scroll");
  const tbody = $("#clients tbody");
  const padTop = $("#pad-top"), padBottom = $("#pad-bottom");
  const ROW_H = 28;                  // px, as --row in dashboard.css
  const OVERSCAN = 10;               // rows fetched beyond each edge of the view
  const REFRESH_MS = 1000;           // the rows in view are asked for again this often
  const LOG_MAX = 200;               // events kept in the page's log
  const OPEN = new Set(["alive", "suspect", "dead"]);
  const FILTER_STATES = { all: "alive,suspect,dead,gone", alive: "alive", suspect: "suspect", gone: "gone" };
  const DESC_FIRST = new Set(["heartbeats", "messages", "bytes_in", "bytes_out", "rtt", "idle", "uptime"]);

  let token = takeToken();
  const view = { sort: "cid", order: "asc", filter: "all", search: "" };
  const win = { offset: 0, rows: [], total: 0, at: 0, key: "" };  // what the server last sent
  const trs = new Map();             // cid -> tr of the rows in the page
  let fetching = false, again = false, fetchTimer = 0, lastLoad = 0, soonTimer = 0;
  let history = [], sampleEvery = 1;
  let totals = { messages: 0, connections: 0, timeouts: 0, msg_rate: 0, clients: 0, alive: 0, suspect: 0 };

  // ------------------------------------------------------------------ the token

  function takeToken() {
    // From the address (#token=..., or ?token=... as older versions printed it), kept for this
    // tab only and taken out of the address bar: a URL ends up in history and in logs.
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
    const t = fromHash || params.get("token");
    try {
      if (t) {
        sessionStorage.setItem("tcpulse-token", t);
        params.delete("token");
        const q = params.toString();
        history_replace(location.pathname + (q ? "?" + q : ""));
        return t;
      }
      return sessionStorage.getItem("tcpulse-token");
    } catch (e) {
      return t;
    }
  }
  function history_replace(url) { try { window.history.replaceState(null, "", url); } catch (e) { /* file: */ } }

  function headers() { return token ? { Authorization: "Bearer " + token } : {}; }

  let es = null;
  function askToken(refused) {
    $("#login").hidden = false;
    $("#login-error").hidden = !refused;
    setLink(false);
    if (es) { es.close(); es = null; }
    $("#token-input").focus();
  }
  $("#login").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("#token-input").value.trim();
    try { sessionStorage.setItem("tcpulse-token", token); } catch (err) { /* private mode */ }
    $("#login").hidden = true;
    connect();
    load();
  });

  async function getJSON(path) {
    const r = await fetch(path, { headers: headers(), cache: "no-store" });
    if (r.status === 401) {
      askToken(!!token);
      throw new Error("unauthorized");
    }
    if (!r.ok) throw new Error(`${path}: ${r.status}`);
    return r.json();
  }

  // ------------------------------------------------------------------ formatting

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
  // Connected at: the time of day when it is today, else the date too (all of it in the tooltip).
  function since(iso) {
    const d = new Date(iso), now = new Date();
    if (d.toDateString() === now.toDateString()) return clock(d);
    return `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  // Seconds as settings read: 0.6, not 0.6000000000000001.
  function fmtS(x) { return String(Number(Number(x).toPrecision(3))); }
  // Another node's client (a cluster) has no counters here: "-".
  function num(n) { return n == null ? "-" : n >= 10000 ? n.toLocaleString("en-US") : String(n); }
  function secs(s) { return s < 10 ? s.toFixed(1) : String(Math.round(s)); }
  // Lateness of a timeout: under a millisecond it reads as such, never "0.0 ms".
  function lateText(ms) { return ms < 1 ? "< 1 ms" : ms < 100 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`; }
  function stateText(st) {
    return T({ alive: "alive", suspect: "suspect", dead: "closing", timeout: "timed out", closed: "closed" }[st] || st);
  }

  // ------------------------------------------------------------------ the table (a window)

  const COLS = ["name", "addr", "state", "heard", "since", "heartbeats", "messages", "bytes", "rtt", "hb"];
  const NUMERIC = new Set(["heard", "heartbeats", "messages", "bytes", "rtt", "hb"]);

  function makeRow() {
    const tr = document.createElement("tr");
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
    tr._cells = cells;
    return tr;
  }

  function fill(tr, r) {
    const c = tr._cells;
    const before = tr.dataset.state;
    tr.dataset.cid = r.cid;
    tr.dataset.name = r.name;
    tr.dataset.state = r.state;
    tr._row = r;
    c.name.textContent = r.name;
    c.name.title = r.name;
    // In a cluster each client says which node holds it (admin/cluster.py).
    c.addr.textContent = r.node ? `${r.addr} @ ${r.node}` : r.addr;
    c.badge.className = "badge " + r.state;
    c.badge.textContent = stateText(r.state);
    c.badge.title = r.detail || r.reason || "";
    c.since.textContent = since(r.connected_at);
    c.since.title = dateTime(r.connected_at);
    c.addr.title = r.addr;
    c.heartbeats.textContent = num(r.heartbeats);
    c.messages.textContent = num(r.messages);
    c.bytes.textContent = r.bytes_in == null ? "-" : `${bytes(r.bytes_in)} / ${bytes(r.bytes_out)}`;
    c.rtt.textContent = r.rtt_ms == null ? "-" : `${r.rtt_ms.toFixed(2)} ms`;
    c.hb.textContent = `${fmtS(r.heartbeat_interval)}/${fmtS(r.heartbeat_timeout)} s`;
    heard(tr);
    if (before && before !== r.state) flash(tr);
  }

  // Idle time ticks in the page between two answers: the server sends how long ago a client
  // was last heard, at the moment it answered.  A gone client's stays where it ended.
  function heard(tr) {
    const r = tr._row;
    const idle = OPEN.has(r.state) ? r.idle + (performance.now() - win.at) / 1000 : r.idle;
    tr._cells.heard.textContent = OPEN.has(r.state) ? `${secs(Math.max(0, idle))} s ${T("ago")}` : `${secs(idle)} s`;
  }

  function flash(tr) {
    tr.classList.add("flash");
    setTimeout(() => tr.classList.remove("flash"), 800);
  }

  function render() {
    const keep = new Set();
    let at = padTop;
    for (const r of win.rows) {
      let tr = trs.get(r.cid);
      if (!tr) { tr = makeRow(); trs.set(r.cid, tr); }
      fill(tr, r);
      keep.add(r.cid);
      if (at.nextSibling !== tr) at.after(tr);
      at = tr;
    }
    for (const [cid, tr] of trs) if (!keep.has(cid)) { tr.remove(); trs.delete(cid); }
    const before = win.offset, after = Math.max(0, win.total - win.offset - win.rows.length);
    padTop.style.height = `${before * ROW_H}px`;
    padTop.hidden = before === 0;
    padBottom.style.height = `${after * ROW_H}px`;
    padBottom.hidden = after === 0;
    const empty = $("#empty");
    empty.hidden = win.total > 0;
    empty.textContent = T(view.filter === "all" && !view.search ? "No clients connected." : "No clients match.");
    shown();
  }

  function shown() {
    const first = Math.min(win.total, Math.floor(scroller.scrollTop / ROW_H) + 1);
    const last = Math.min(win.total, first + Math.ceil((scroller.clientHeight - ROW_H) / ROW_H) - 1);
    $("#shown").textContent = win.total ? `${T("rows")} ${num(first)}–${num(last)} ${T("of")} ${num(win.total)}` : "";
  }

  function wanted() {
    const first = Math.floor(scroller.scrollTop / ROW_H);
    const visible = Math.max(1, Math.ceil(scroller.clientHeight / ROW_H));
    return { first, visible, offset: Math.max(0, first - OVERSCAN), limit: visible + 2 * OVERSCAN };
  }

  function viewKey() { return `${view.sort}|${view.order}|${view.filter}|${view.search}`; }

  // Ask for the rows in view; at most one request in flight (a newer wish is asked for after it).
  async function load() {
    if (fetching) { again = true; return; }
    fetching = true;
    lastLoad = performance.now();
    try {
      const w = wanted();
      const key = viewKey();
      const q = new URLSearchParams({ state: FILTER_STATES[view.filter], sort: view.sort, order: view.order,
                                      offset: String(w.offset), limit: String(w.limit) });
      if (view.search) q.set("q", view.search);
      const data = await getJSON("api/clients?" + q.toString());
      if (key === viewKey()) {
        Object.assign(win, { offset: data.offset, rows: data.clients, total: data.total, at: performance.now(), key });
        render();
        // The list got shorter than where we stand: go to its end and ask again.
        if (data.total && data.offset >= data.total) { scroller.scrollTop = (data.total - 1) * ROW_H; again = true; }
      } else {
        again = true;
      }
    } catch (e) {
      /* unauthorized (the form is shown) or the server is away (the stream says so) */
    } finally {
      fetching = false;
      if (again) { again = false; setTimeout(load, 0); }
    }
  }

  // Clients came or went: the rows in view are asked for again soon, but never more than twice a
  // second (a connect storm of 10,000 clients must not become a storm of requests).
  const SOON_MS = 500;
  function soon() {
    if (soonTimer) return;
    soonTimer = setTimeout(() => { soonTimer = 0; load(); }, Math.max(0, lastLoad + SOON_MS - performance.now()));
  }

  // Scrolling shows the spacer where rows are not in the page yet; they are asked for as soon as
  // the scrolling pauses.
  function onScroll() {
    shown();
    clearTimeout(fetchTimer);
    fetchTimer = setTimeout(load, 40);
  }
  scroller.addEventListener("scroll", onScroll, { passive: true });
  window.addEventListener("resize", () => { drawChart(); onScroll(); });

  function setView(change) {
    Object.assign(view, change);
    scroller.scrollTop = 0;
    for (const th of document.querySelectorAll("#clients th[data-sort]")) {
      const on = th.dataset.sort === view.sort || (view.sort === "idle" && th.dataset.sort === "last");
      th.classList.toggle("sorted", on);
      th.classList.toggle("desc", on && view.order === "desc");
    }
    load();
  }

  $("#clients thead").addEventListener("click", (e) => {
    const th = e.target.closest("th[data-sort]");
    if (!th) return;
    let key = th.dataset.sort;
    if (key === "last" && (view.sort === "last" || view.sort === "idle")) {
      // last heard: most recently first, then most idle first
      setView(view.sort === "last" ? { sort: "idle", order: "desc" } : { sort: "last", order: "asc" });
      return;
    }
    if (key === view.sort) setView({ order: view.order === "asc" ? "desc" : "asc" });
    else setView({ sort: key, order: DESC_FIRST.has(key) ? "desc" : "asc" });
  });
  $("#filters").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (!b) return;
    for (const x of document.querySelectorAll("#filters button")) x.classList.toggle("on", x === b);
    setView({ filter: b.dataset.filter });
  });
  let searchTimer = 0;
  $("#search").addEventListener("input", (e) => {
    clearTimeout(searchTimer);
    const text = e.target.value.trim().slice(0, 200);
    searchTimer = setTimeout(() => setView({ search: text }), 200);
  });

  // ------------------------------------------------------------------ events

  function logEvent(e) {
    const who = e.node ? `${e.name} @ ${e.node}` : e.name;  // another node's client (a cluster)
    let kind = "alive", text;
    switch (e.kind) {
      case "connect": text = `${T("new connection")}: ${e.addr}`; break;
      case "hello":
        text = `${who} ${T("signed in")} (${e.addr})`;
        if (e.heartbeat_interval != null) {
          text += `, ${T("heartbeat")} ${fmtS(e.heartbeat_interval)} s, ${T("timeout")} ${fmtS(e.heartbeat_timeout)} s`;
        }
        break;
      case "suspect": kind = "suspect"; text = `${who} ${T("is suspect: silent for")} ${e.silent_for.toFixed(1)} s`; break;
      case "alive": text = `${who} ${T("is alive again")}`; break;
      case "timeout":
        kind = "timeout";
        text = `${who} ${T("timed out: silent for")} ${e.silent_for.toFixed(2)} s (${T("late")} ${lateText(e.late_ms)})`;
        break;
      case "close":
        if (e.reason === "timeout") return null;  // the timeout said it already
        kind = "closed";
        text = `${who} ${T("disconnected")}: ${e.reason}${e.detail ? " (" + e.detail + ")" : ""}`;
        break;
      case "error": kind = "timeout"; text = `${who}: ${T("protocol error")} ${e.code} ${e.text}`; break;
      default: return null;
    }
    const li = document.createElement("li");
    const t = document.createElement("time");
    t.textContent = clock(new Date(e.t * 1000));
    const span = document.createElement("span");
    span.className = kind;
    span.textContent = text;
    li.append(t, span);
    return li;
  }

  function addLog(items) {
    const log = $("#log");
    const frag = document.createDocumentFragment();
    for (let i = items.length - 1; i >= 0; i--) if (items[i]) frag.appendChild(items[i]);  // newest on top
    log.prepend(frag);
    while (log.childElementCount > LOG_MAX) log.lastElementChild.remove();
  }

  function skippedItem(n) {
    const li = document.createElement("li");
    const span = document.createElement("span");
    span.className = "skipped";
    span.textContent = `… ${num(n)} ${T("more events not shown")}`;
    li.append(span);
    return li;
  }

  // A state change of a row in view shows at once; the next answer brings the rest.
  const NEW_STATE = { suspect: "suspect", alive: "alive", timeout: "timeout" };
  const LIST_CHANGES = new Set(["connect", "hello", "close", "timeout"]);
  function applyToRow(e) {
    const tr = trs.get(e.cid);
    if (!tr) return;
    let st = NEW_STATE[e.kind];
    if (e.kind === "close") st = e.reason === "timeout" ? "timeout" : "closed";
    if (!st || tr.dataset.state === st || (tr.dataset.state === "timeout" && st === "closed")) return;
    const r = Object.assign({}, tr._row, { state: st });
    if (e.silent_for != null && !OPEN.has(st)) r.idle = e.silent_for;
    if (e.kind === "close" && e.reason !== "timeout") r.reason = e.reason;
    fill(tr, r);
  }

  function onMessage(msg) {
    if (msg.type === "hello") {
      const s = msg.server;
      if (s.lang && !params.get("lang")) { lang = s.lang; translatePage(); }
      $("#server-id").textContent = s.server_id;
      const host = s.host.includes(":") ? `[${s.host}]` : s.host;
      const cl = s.cluster;  // a cluster: this node, how many, and whether the view is current
      $("#server-info").textContent = `${host}:${s.port} · ${T("heartbeat")} ${fmtS(s.heartbeat_interval)} s · ` +
                                       `${T("timeout")} ${fmtS(s.heartbeat_timeout)} s` +
                                       (cl ? ` · ${T("node")} ${cl.node} (${cl.nodes} ${T("nodes")})` +
                                             (cl.stale ? ` · ${T("stale")}` : "") : "");
      history = msg.history || [];
      sampleEvery = msg.sample_every || 1;
      if (history.length) takeTotals(history[history.length - 1]);
      $("#log").replaceChildren();
      addLog((msg.events || []).map(logEvent));
      drawChart();
    } else if (msg.type === "batch") {
      const items = (msg.events || []).map(logEvent);
      if (msg.skipped) items.push(skippedItem(msg.skipped));
      addLog(items);
      for (const e of msg.events || []) applyToRow(e);
      if (msg.skipped || (msg.events || []).some((e) => LIST_CHANGES.has(e.kind))) soon();
      if (msg.sample) {
        history.push(msg.sample);
        if (history.length > 600) history.shift();
        takeTotals(msg.sample);
        drawChart();
      }
    }
  }

  function takeTotals(s) {
    totals = s;
    $("#n-clients").textContent = num(s.clients);
    $("#n-alive").textContent = num(s.alive);
    $("#n-suspect").textContent = num(s.suspect);
    $("#n-timeouts").textContent = num(s.timeouts);
    $("#n-messages").textContent = num(s.messages);
    const r = s.msg_rate;
    $("#n-rate").textContent = r >= 10 ? num(Math.round(r)) : String(Number(r.toFixed(1)));
    $("#n-connections").textContent = num(s.connections);
  }

  let linkUp = null;
  function setLink(up) {
    linkUp = up;
    const el = $("#link");
    el.className = "link " + (up ? "up" : "down");
    el.textContent = T(up ? "live" : "reconnecting…");
  }

  function connect() {
    if (es) es.close();
    const url = "api/events/stream" + (token ? "?token=" + encodeURIComponent(token) : "");
    const source = new EventSource(url);
    es = source;
    source.onopen = () => { setLink(true); load(); };
    source.onerror = () => {
      setLink(false);
      // EventSource retries by itself after a network error, but not after an HTTP error
      // (401, 503 when too many dashboards are open): then try again in a while.
      if (source.readyState === EventSource.CLOSED && es === source) {
        es = null;
        getJSON("api/server").catch(() => {});  // shows the token form on a 401
        setTimeout(() => { if (!es && $("#login").hidden) connect(); }, 3000);
      }
    };
    source.onmessage = (e) => onMessage(JSON.parse(e.data));
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
    if (!w || !h) return;
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
      cv.width = Math.round(w * dpr);
      cv.height = Math.round(h * dpr);
    }
    const g = cv.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const color = (n) => css.getPropertyValue(n).trim();
    const L = 40, R = 44, Tp = 8, B = 20;
    const pw = w - L - R, ph = h - Tp - B;
    // The window grows with the history, from one minute up to the ten minutes kept.
    const tEnd = history.length ? history[history.length - 1].t : Date.now() / 1000;
    const have = history.length ? tEnd - history[0].t : 0;
    const span = Math.min(600 * sampleEvery, Math.max(60, Math.ceil(have / 60) * 60));
    const tStart = tEnd - span;
    const pts = history.filter((s) => s.t >= tStart);
    let topC = 1, topR = 1;
    for (const s of pts) { if (s.clients > topC) topC = s.clients; if (s.msg_rate > topR) topR = s.msg_rate; }
    // Client counts are whole numbers: keep the four grid steps whole too.
    const maxC = Math.max(4, Math.ceil(niceMax(topC) / 4) * 4);
    const maxR = niceMax(topR);
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
    for (const el of document.querySelectorAll("[data-i18n-title]")) el.title = T(el.dataset.i18nTitle);
    for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
      el.placeholder = T(el.dataset.i18nPlaceholder);
    }
    if (linkUp !== null) setLink(linkUp);
    for (const tr of trs.values()) fill(tr, tr._row);
    render();
  }

  // Once a second: the rows in view again (only while the page is seen), and idle times tick.
  setInterval(() => {
    for (const tr of trs.values()) heard(tr);
    if (document.visibilityState === "visible" && $("#login").hidden &&
        performance.now() - lastLoad >= REFRESH_MS - 100) load();
  }, REFRESH_MS);
  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") load(); });

  if (lang) translatePage();
  setView({});
  drawChart();
  connect();
})();
