// harstream dashboard: renders what /events pushes. Device data (ids, labels, texts, error
// messages) only ever reaches the page through textContent, never as HTML.
"use strict";

(() => {
  const ROW_H = 28; // px, the same as --row in style.css
  const OVERSCAN = 8; // rows drawn above and below the visible ones
  const DETAIL_REFRESH_MS = 1000; // the selected device's timeline is fetched at most this often
  const SERIES_SHOWN = 12;
  const KNOWN = {
    walking: "#2e86de", jogging: "#e67e22", stairs: "#8e44ad",
    sitting: "#16a085", standing: "#d4ac0d", kicking: "#c0392b",
  };
  const EXTRA = ["#6c5ce7", "#00b894", "#d63031", "#e1a20f", "#0984e3", "#e84393", "#636e72"];
  const COLUMNS = ["c-id", "c-act", "c-conf", "c-raw", "c-dur", "c-seen", "c-cal", "c-err"];

  const state = {
    rows: new Map(),
    view: [],
    classes: [],
    service: {},
    skew: 0,
    sortKey: "id",
    sortDir: 1,
    filter: "",
    activity: "",
    selected: null,
    detail: null,
    detailFetched: 0,
    allowActions: false,
    live: false,
    framed: false,
  };
  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function colour(label) {
    if (!label) return "#c8c8cc";
    if (Object.prototype.hasOwnProperty.call(KNOWN, label)) return KNOWN[label];
    let h = 0;
    for (const ch of label) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return EXTRA[h % EXTRA.length];
  }

  const serverNow = () => Date.now() / 1000 + state.skew;

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "-";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0") + " min";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  const pct = (v) => (typeof v === "number" ? (100 * v).toFixed(0) + " %" : "-");

  // ---------------------------------------------------------------- updates from the server

  function apply(msg) {
    state.skew = msg.now - Date.now() / 1000;
    if (msg.type === "snapshot") {
      state.rows.clear();
      state.allowActions = msg.allow_actions === true;
    }
    let selectedChanged = false;
    for (const row of msg.rows || []) {
      state.rows.set(row.id, row);
      if (row.id === state.selected) selectedChanged = true;
    }
    for (const id of msg.removed || []) state.rows.delete(id);
    if (msg.service) state.service = msg.service;
    if (msg.classes) setClasses(msg.classes);
    if (msg.texts) renderTexts(msg.texts);
    if (msg.series) renderSeries(msg.series);
    renderService();
    rebuildView();
    schedule();
    if (state.selected !== null && (selectedChanged || msg.type === "snapshot")) {
      refreshDetail(false);
    }
  }

  function connect() {
    const source = new EventSource("/events");
    source.onopen = () => { state.live = true; renderService(); };
    source.onmessage = (event) => apply(JSON.parse(event.data));
    source.onerror = () => { state.live = false; renderService(); }; // EventSource retries
  }

  // ---------------------------------------------------------------- service

  function renderService() {
    const s = state.service;
    const badge = $("service");
    const status = s.status === "online" || s.status === "offline" ? s.status : "unknown";
    badge.className = "badge " + status;
    badge.textContent = "service: " + status;
    const link = $("link");
    if (!state.live) {
      link.className = "badge offline";
      link.textContent = "dashboard unreachable";
    } else if (!s.broker) {
      link.className = "badge offline";
      link.textContent = "broker unreachable";
    } else {
      link.className = "badge online";
      link.textContent = "live";
    }
    const models = Object.entries(s.models || {}).map(([family, tag]) => family + ": " + tag);
    $("models").textContent = models.join("  ·  ");
    $("f-devices").textContent = String(state.rows.size);
    $("f-rate").textContent = typeof s.windows_per_s === "number" ? s.windows_per_s.toFixed(1) : "-";
    const lat = s.latency_ms;
    $("f-latency").textContent = lat
      ? [lat.p50, lat.p95, lat.p99].map((v) => v.toFixed(1)).join(" / ") + " ms"
      : "-";
    const errors = Object.entries(s.errors || {}).sort((a, b) => b[1] - a[1]);
    $("f-errors").textContent = errors.length
      ? errors.map(([kind, n]) => kind + " " + n).join(", ")
      : "none";
  }

  function setClasses(classes) {
    if (classes.join("\u0000") === state.classes.join("\u0000")) return;
    state.classes = classes.slice();
    for (const select of [$("activity-filter"), $("label-activity")]) {
      const keep = select.id === "activity-filter" ? select.options[0] : null;
      const chosen = select.value;
      select.replaceChildren(...(keep ? [keep] : []));
      for (const name of state.classes) {
        const option = el("option", null, name);
        option.value = name;
        select.append(option);
      }
      select.value = state.classes.includes(chosen) ? chosen : (keep ? "" : state.classes[0] || "");
    }
    renderLegend();
  }

  function renderLegend() {
    const legend = $("legend");
    legend.replaceChildren();
    for (const name of state.classes) {
      const item = el("span");
      const swatch = el("span", "swatch");
      swatch.style.background = colour(name);
      item.append(swatch, document.createTextNode(name));
      legend.append(item);
    }
  }

  // ---------------------------------------------------------------- the grid (virtualised)

  function sortValue(row, key) {
    if (key === "since") return row.since === null ? null : -row.since; // longest first
    if (key === "seen") return row.seen === null ? null : -row.seen; // most recent first
    if (key === "cal") return Object.keys(row.k || {}).length + (row.cal ? 1000 : 0);
    return row[key];
  }

  function rebuildView() {
    const needle = state.filter;
    const only = state.activity;
    const key = state.sortKey;
    const dir = state.sortDir;
    const view = [];
    for (const row of state.rows.values()) {
      if (only && row.a !== only) continue;
      if (needle && !row.id.toLowerCase().includes(needle)
          && !(row.a || "").toLowerCase().includes(needle)) continue;
      view.push(row);
    }
    view.sort((x, y) => {
      const a = sortValue(x, key);
      const b = sortValue(y, key);
      if (a === b) return x.id < y.id ? -1 : x.id > y.id ? 1 : 0;
      if (a === null || a === undefined) return 1;
      if (b === null || b === undefined) return -1;
      return (a < b ? -1 : 1) * dir;
    });
    state.view = view;
  }

  function schedule() {
    if (state.framed) return;
    state.framed = true;
    requestAnimationFrame(() => { state.framed = false; renderGrid(); });
  }

  function makeRow() {
    const row = el("div", "row");
    row.setAttribute("role", "row");
    for (const cls of COLUMNS) row.append(el("span", cls));
    const swatch = el("span", "swatch");
    row.children[1].append(swatch, el("span", "label"));
    return row;
  }

  function fillRow(node, row, now) {
    node.dataset.id = row.id;
    node.classList.toggle("selected", row.id === state.selected);
    const cells = node.children;
    cells[0].textContent = row.id;
    cells[0].title = row.id;
    cells[1].firstChild.style.background = colour(row.a);
    cells[1].lastChild.textContent = row.a || "-";
    cells[2].textContent = pct(row.c);
    cells[3].textContent = row.r ? row.r + " " + pct(row.rc) : "-";
    cells[4].textContent = row.since === null ? "-" : duration(now - row.since);
    const age = row.seen === null ? null : now - row.seen;
    cells[5].textContent = age === null ? "retained" : duration(age) + " ago";
    cells[5].classList.toggle("stale", age !== null && age > 10);
    const used = Object.entries(row.k || {}).filter(([, n]) => n >= 3).length;
    cells[6].textContent = row.cal ? "yes (" + used + ")" : used ? "labelled" : "-";
    cells[7].textContent = row.e ? String(row.e) : "";
  }

  function renderGrid() {
    const viewport = $("viewport");
    const rowsEl = $("rows");
    const total = state.view.length;
    $("spacer").style.height = total * ROW_H + "px";
    const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_H) - OVERSCAN);
    const count = Math.min(total - first, Math.ceil(viewport.clientHeight / ROW_H) + 2 * OVERSCAN);
    rowsEl.style.transform = "translateY(" + first * ROW_H + "px)";
    while (rowsEl.children.length < count) rowsEl.append(makeRow());
    while (rowsEl.children.length > Math.max(0, count)) rowsEl.lastChild.remove();
    const now = serverNow();
    for (let i = 0; i < count; i++) fillRow(rowsEl.children[i], state.view[first + i], now);
    $("shown").textContent = total === state.rows.size
      ? total + " devices"
      : total + " of " + state.rows.size + " devices";
    for (const head of document.querySelectorAll(".grid-head .col")) {
      head.classList.toggle("sorted", head.dataset.sort === state.sortKey);
    }
    $("f-devices").textContent = String(state.rows.size);
  }

  // ---------------------------------------------------------------- one device in detail

  function select(id) {
    state.selected = id;
    state.detail = null;
    $("d-title").textContent = id;
    refreshDetail(true);
    schedule();
  }

  async function refreshDetail(force) {
    const id = state.selected;
    const due = Date.now() - state.detailFetched >= DETAIL_REFRESH_MS;
    if (id === null || (!force && !due)) return;
    state.detailFetched = Date.now();
    let detail = null;
    try {
      const response = await fetch("/api/device?id=" + encodeURIComponent(id));
      if (response.ok) detail = await response.json();
    } catch (err) {
      detail = null; // the dashboard went away: the event stream shows it
    }
    if (id !== state.selected) return;
    state.detail = detail;
    renderDetail();
  }

  function renderDetail() {
    const detail = state.detail;
    const summary = $("d-summary");
    const errors = $("d-errors");
    errors.replaceChildren();
    $("actions").hidden = !(state.allowActions && detail);
    if (!detail) {
      summary.textContent = "no data for this device (yet)";
      drawTimeline(null);
      $("d-cal").textContent = "";
      return;
    }
    const row = detail.row;
    summary.textContent = (row.a || "-") + " at " + pct(row.c) + " for " +
      duration(detail.now - (row.since ?? detail.now)) +
      (row.r ? ", window's own answer " + row.r + " " + pct(row.rc) : "") +
      (row.m ? "  ·  " + row.m : "");
    const classes = Object.entries(row.k || {});
    $("d-cal").textContent = classes.length
      ? "calibration (labelled windows; 3 or more are used): " +
        classes.map(([name, n]) => name + " " + n).join(", ") +
        (row.cal ? "  ·  applied to its predictions" : "")
      : "no personal calibration";
    for (const err of detail.errors.slice().reverse()) {
      const item = el("li");
      item.append(
        el("span", "kind", err.kind),
        document.createTextNode(err.message + " (" + duration(detail.now - err.t) + " ago)"),
      );
      errors.append(item);
    }
    if (!detail.errors.length) errors.append(el("li", "muted", "none"));
    drawTimeline(detail);
  }

  function fitCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(100, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(40, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    return [ctx, width / ratio, height / ratio];
  }

  function drawTimeline(detail) {
    const [ctx, w, h] = fitCanvas($("timeline"));
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#667";
    const left = 64;
    const plotW = w - left - 8;
    const bands = [["smoothed", 6, 26], ["window", 36, 14]];
    const confTop = 60;
    const confH = h - confTop - 18;
    for (const [name, y, bh] of bands) {
      ctx.fillStyle = "#667";
      ctx.fillText(name, 4, y + bh / 2 + 4);
      ctx.fillStyle = "#f1f1f4"; // no answer there (yet)
      ctx.fillRect(left, y, plotW, bh);
    }
    ctx.fillStyle = "#667";
    ctx.fillText("confidence", 4, confTop + confH / 2 + 4);
    ctx.strokeStyle = "#dde";
    ctx.strokeRect(left, confTop, plotW, confH);
    if (!detail) return;
    const points = detail.history;
    const end = detail.now;
    // the span shown grows with the history kept, from 1 minute to --history, by minutes
    const kept = points.length ? end - points[0][0] : 0;
    const span = Math.min(detail.history_s, Math.max(60, Math.ceil(kept / 60) * 60));
    const start = end - span;
    const x = (t) => left + ((t - start) / span) * plotW;
    ctx.fillText("-" + duration(span), left, h - 4);
    ctx.fillText("now", left + plotW - 22, h - 4);
    ctx.strokeStyle = "#eef";
    for (let t = end - 60; t > start; t -= 60) { // one line a minute
      ctx.beginPath();
      ctx.moveTo(x(t), confTop);
      ctx.lineTo(x(t), confTop + confH);
      ctx.stroke();
    }
    for (let i = 0; i < points.length; i++) {
      const [t, activity, raw] = points[i];
      if (t < start) continue;
      const next = i + 1 < points.length ? points[i + 1][0] : Math.min(end, t + 2);
      // whole pixels, so that neighbouring points leave no hairline between them
      const x0 = Math.floor(x(t));
      const x1 = Math.max(x0 + 1, Math.ceil(x(Math.min(next, t + 5)))); // a gap over 5 s stays blank
      ctx.fillStyle = colour(activity);
      ctx.fillRect(x0, bands[0][1], x1 - x0, bands[0][2]);
      if (raw) {
        ctx.fillStyle = colour(raw);
        ctx.fillRect(x0, bands[1][1], x1 - x0, bands[1][2]);
      }
    }
    ctx.strokeStyle = "#1d2327";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let drawing = false;
    for (const [t, , , confidence] of points) {
      if (typeof confidence !== "number" || t < start) { drawing = false; continue; }
      const px = x(t);
      const py = confTop + confH * (1 - confidence);
      if (drawing) ctx.lineTo(px, py); else ctx.moveTo(px, py);
      drawing = true;
    }
    ctx.stroke();
  }

  // ---------------------------------------------------------------- text and series

  function renderTexts(texts) {
    const list = $("texts");
    list.replaceChildren();
    for (const item of texts) {
      const li = el("li");
      li.dataset.id = item.id;
      const tag = el("span", "tag " + (item.label === "spam" ? "spam" : ""), item.label || "?");
      const meta = el("span", "muted",
        " " + pct(item.confidence) + "  ·  " + item.id + "  ·  " + (item.model || "") + "  ");
      const text = el("span", "text", item.text === null ? "(message not seen)" : item.text);
      li.append(tag, meta, el("br"), text);
      list.append(li);
    }
    if (!texts.length) list.append(el("li", "muted", "no text messages yet"));
  }

  function renderSeries(series) {
    const box = $("series");
    box.replaceChildren();
    const ids = Object.keys(series).slice(-SERIES_SHOWN).reverse();
    for (const id of ids) {
      const { values, forecasts } = series[id];
      const figure = el("figure");
      const canvas = el("canvas");
      const lastValue = values.length ? values[values.length - 1][1] : null;
      const lastForecast = forecasts.length ? forecasts[forecasts.length - 1][1] : null;
      const caption = el("figcaption", null,
        id + ": last " + (lastValue === null ? "-" : lastValue.toPrecision(4)) +
        ", next " + (lastForecast === null ? "-" : lastForecast.toPrecision(4)));
      figure.append(canvas, caption);
      box.append(figure);
      drawSeries(canvas, values, forecasts);
    }
    if (!ids.length) box.append(el("p", "muted", "no series yet"));
  }

  function drawSeries(canvas, values, forecasts) {
    const [ctx, w, h] = fitCanvas(canvas);
    const all = values.concat(forecasts);
    if (!all.length) return;
    const seqs = all.map((p) => p[0]);
    const ys = all.map((p) => p[1]);
    const s0 = Math.min(...seqs);
    const s1 = Math.max(...seqs, s0 + 1);
    let y0 = Math.min(...ys);
    let y1 = Math.max(...ys);
    if (y1 - y0 < 1e-9) { y0 -= 1; y1 += 1; }
    const x = (s) => 4 + ((s - s0) / (s1 - s0)) * (w - 8);
    const y = (v) => h - 4 - ((v - y0) / (y1 - y0)) * (h - 8);
    ctx.strokeStyle = "#2e86de";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    values.forEach(([s, v], i) => (i ? ctx.lineTo(x(s), y(v)) : ctx.moveTo(x(s), y(v))));
    ctx.stroke();
    ctx.fillStyle = "#e67e22";
    for (const [s, v] of forecasts) ctx.fillRect(x(s) - 2, y(v) - 2, 4, 4);
  }

  // ---------------------------------------------------------------- actions (--allow-actions)

  async function post(doc) {
    const result = $("label-result");
    try {
      const response = await fetch("/api/label", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(doc),
      });
      const answer = await response.json();
      result.textContent = response.ok ? "sent" : "refused: " + answer.error;
    } catch (err) {
      result.textContent = "not sent: the dashboard is unreachable";
    }
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    // "input" while typing; "change" too, for edits that fire no input event (a cleared
    // field in some automation drivers)
    for (const kind of ["input", "change"]) {
      $("filter").addEventListener(kind, (event) => {
        state.filter = event.target.value.trim().toLowerCase();
        rebuildView();
        renderGrid(); // at once, not on the next frame: typing must feel immediate
      });
    }
    $("activity-filter").addEventListener("change", (event) => {
      state.activity = event.target.value;
      rebuildView();
      renderGrid();
    });
    for (const head of document.querySelectorAll(".grid-head .col")) {
      head.addEventListener("click", () => {
        const key = head.dataset.sort;
        state.sortDir = state.sortKey === key ? -state.sortDir : 1;
        state.sortKey = key;
        rebuildView();
        renderGrid();
      });
    }
    $("viewport").addEventListener("scroll", schedule, { passive: true });
    $("rows").addEventListener("click", (event) => {
      const row = event.target.closest(".row");
      if (row && row.dataset.id) select(row.dataset.id);
    });
    $("label-send").addEventListener("click", () => post({
      device: state.selected,
      activity: $("label-activity").value,
      seconds: Number($("label-seconds").value),
    }));
    $("label-reset").addEventListener("click", () => post({ device: state.selected, reset: true }));
    window.addEventListener("resize", () => { schedule(); if (state.detail) drawTimeline(state.detail); });
    setInterval(() => { // ages and durations move on between pushes
      schedule();
      if (state.selected !== null) refreshDetail(false);
    }, 1000);
    renderTexts([]);
    renderSeries({});
    drawTimeline(null);
    connect();
  }

  init();
})();
