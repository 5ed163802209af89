// ferry dashboard: plain JavaScript, no build step, no library.
// - [data-refresh]: re-fetch a server-rendered (escaped) fragment every few seconds.
// - #run[data-live]: poll the run's live endpoint with the offsets already shown (only what is
//   new comes back; an unchanged run answers 304), draw the curves, append the log as text.
"use strict";

(function () {
  const STATE_CLASS = {
    succeeded: "ok", failed: "bad", lost: "bad", cancelled: "warn", preempted: "warn",
    running: "live", provisioning: "live", syncing: "live", queued: "idle", waiting: "idle",
  };
  const FINAL = new Set(["succeeded", "failed", "cancelled", "preempted", "lost"]);
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
  const LOSS_KEYS = ["loss", "train_loss"];
  const ACC_KEYS = ["test_accuracy", "accuracy", "test_acc", "val_accuracy"];
  const TRAIN_KEYS = ["train_accuracy", "train_acc"];
  const LOG_KEEP = 400000; // characters of log kept in the page

  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";

  function svgEl(name, attrs, text) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function first(row, keys) {
    for (const k of keys) {
      const v = row[k];
      if (typeof v === "number" && isFinite(v)) return v;
    }
    return null;
  }

  function pct(v) { return typeof v === "number" ? (100 * v).toFixed(2) + "%" : "—"; }

  function duration(s) {
    if (typeof s !== "number" || !isFinite(s)) return "—";
    if (s < 90) return s.toFixed(0) + " s";
    if (s < 5400) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function money(v) {
    if (typeof v !== "number" || !isFinite(v)) return "—";
    return v < 1 ? "$" + v.toFixed(4) : "$" + v.toFixed(2);
  }

  function setBadge(el, state) {
    if (!el) return;
    el.textContent = state;
    el.className = "badge " + (STATE_CLASS[state] || "idle");
  }

  // ------------------------------------------------------------------ auto-refreshing fragments
  function refresher(el) {
    const url = el.dataset.refresh || location.pathname;
    const every = Number(el.dataset.every) || 5000;
    async function tick() {
      try {
        const resp = await fetch(url, { cache: "no-cache", headers: { Accept: "text/html" } });
        if (resp.ok) {
          const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
          const fresh = (el.id && doc.getElementById(el.id)) || doc.body;
          el.innerHTML = fresh.innerHTML; // the server's own escaped rendering
          el.classList.remove("stale");
        } else {
          el.classList.add("stale");
        }
      } catch (e) {
        el.classList.add("stale");
      }
      setTimeout(tick, every);
    }
    setTimeout(tick, every);
  }

  // ------------------------------------------------------------------ charts (inline SVG)
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function fmtTick(v, asPct) {
    if (asPct) return (100 * v).toFixed(Math.abs(v) < 0.1 ? 1 : 0) + "%";
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1000 || a < 0.01) return v.toExponential(1);
    return String(+v.toPrecision(3));
  }

  // series: [{name, dashed, points: [[x, y], ...]}]
  function drawChart(svg, series, opts) {
    const width = Math.max(260, svg.clientWidth || svg.parentNode.clientWidth || 400);
    const height = Math.max(180, svg.clientHeight || 240);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.replaceChildren();
    const pts = series.flatMap((s) => s.points);
    svg.dataset.points = String(pts.length);
    const pad = { l: 52, r: 12, t: 10, b: 34 };
    const w = width - pad.l - pad.r, h = height - pad.t - pad.b;
    if (!pts.length) {
      const legend = svg.parentNode.querySelector(".legend");
      if (legend) legend.replaceChildren();
      svg.append(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "nodata" },
        opts.waiting || "no epochs yet"));
      return;
    }
    let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
    let y0 = Math.min(...pts.map((p) => p[1])), y1 = Math.max(...pts.map((p) => p[1]));
    if (opts.asPct) { y1 = Math.min(1, y1 + 0.02); y0 = Math.max(0, y0 - 0.02); }
    if (y1 - y0 < 1e-9) { y0 -= 0.5 * (Math.abs(y0) || 1) * 0.1; y1 += 0.5 * (Math.abs(y1) || 1) * 0.1; }
    if (x1 === x0) { x0 -= 0.5; x1 += 0.5; }
    const X = (v) => pad.l + ((v - x0) / (x1 - x0)) * w;
    const Y = (v) => pad.t + h - ((v - y0) / (y1 - y0)) * h;
    const grid = svgEl("g", { class: "grid" });
    for (const t of niceTicks(y0, y1, 4)) {
      grid.append(svgEl("line", { x1: pad.l, x2: pad.l + w, y1: Y(t), y2: Y(t) }));
      grid.append(svgEl("text", { x: pad.l - 6, y: Y(t) + 4, "text-anchor": "end" }, fmtTick(t, opts.asPct)));
    }
    const xt = niceTicks(x0, x1, Math.min(8, Math.max(1, Math.round(w / 70)))).filter((t) => Number.isInteger(t));
    for (const t of xt) {
      grid.append(svgEl("line", { x1: X(t), x2: X(t), y1: pad.t + h, y2: pad.t + h + 4 }));
      grid.append(svgEl("text", { x: X(t), y: pad.t + h + 16, "text-anchor": "middle" }, String(t)));
    }
    grid.append(svgEl("text", { x: pad.l + w / 2, y: height - 3, "text-anchor": "middle", class: "axis" }, "epoch"));
    grid.append(svgEl("rect", { x: pad.l, y: pad.t, width: w, height: h, class: "frame" }));
    svg.append(grid);
    const drawn = series.map((s, i) => ({ ...s, color: s.color || COLORS[i % COLORS.length] }));
    const order = drawn.slice().sort((a, b) => (b.dashed ? 1 : 0) - (a.dashed ? 1 : 0)); // dashed (train) under the rest
    order.forEach((s) => {
      const color = s.color;
      const g = svgEl("g", { class: "series", "data-name": s.name });
      g.append(svgEl("polyline", {
        points: s.points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" "),
        fill: "none", stroke: color, "stroke-width": 2, "stroke-dasharray": s.dashed ? "5 4" : "none",
      }));
      for (const p of s.dashed ? [] : s.points) { // dots on the main lines only
        const c = svgEl("circle", { cx: X(p[0]).toFixed(1), cy: Y(p[1]).toFixed(1), r: s.points.length > 60 ? 1.5 : 3, fill: color });
        c.append(svgEl("title", {}, `${s.name || opts.label} epoch ${p[0]}: ${fmtTick(p[1], opts.asPct)}`));
        g.append(c);
      }
      svg.append(g);
    });
    const legend = svg.parentNode.querySelector(".legend"); // HTML below the plot: it wraps
    if (legend) {
      legend.replaceChildren();
      if (series.length > 1 || series.some((s) => s.name)) {
        for (const s of drawn) {
          const item = document.createElement("span");
          item.className = "key" + (s.dashed ? " dashed" : "");
          const swatch = document.createElement("i");
          swatch.style.borderTopColor = s.color;
          item.append(swatch, document.createTextNode(s.name || opts.label));
          legend.append(item);
        }
      }
    }
  }

  // ------------------------------------------------------------------ one run, live
  function runPage(root) {
    const liveUrl = root.dataset.live;
    const log = $("log"), follow = $("follow");
    const rows = [];
    let m = 0, l = -1, final = false, started = null, ended = null, serverDuration = null, failures = 0;

    log.addEventListener("scroll", () => {
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 24;
      if (follow.checked !== atEnd && document.activeElement === log) follow.checked = atEnd;
    });
    follow.addEventListener("change", () => { if (follow.checked) log.scrollTop = log.scrollHeight; });

    function groups() {
      const by = new Map();
      for (const r of rows) {
        if (typeof r.epoch !== "number") continue;
        const name = String(r.condition || r.dataset || "");
        if (!by.has(name)) by.set(name, []);
        by.get(name).push(r);
      }
      for (const v of by.values()) v.sort((a, b) => a.epoch - b.epoch);
      if (by.size === 1) return new Map([["", [...by.values()][0]]]);
      return by;
    }

    function draw() {
      const g = groups();
      const loss = [], acc = [];
      for (const [name, rs] of g) {
        const lp = rs.map((r) => [r.epoch, first(r, LOSS_KEYS)]).filter((p) => p[1] !== null);
        if (lp.length) loss.push({ name, points: lp });
        const ap = rs.map((r) => [r.epoch, first(r, ACC_KEYS)]).filter((p) => p[1] !== null);
        if (ap.length) acc.push({ name: name ? name + " test" : (g.size > 1 ? "test" : "test"), points: ap });
        const tp = rs.map((r) => [r.epoch, first(r, TRAIN_KEYS)]).filter((p) => p[1] !== null);
        if (tp.length) acc.push({ name: name ? name + " train" : "train", points: tp, dashed: true });
      }
      if (g.size > 1) { // the same colour for a condition's test and train lines
        const colourOf = new Map([...g.keys()].map((k, i) => [k, COLORS[i % COLORS.length]]));
        for (const s of acc) s.color = colourOf.get(s.name.replace(/ (test|train)$/, ""));
      } else {
        for (const s of acc) s.color = s.dashed ? COLORS[1] : COLORS[0];
      }
      const waiting = final ? "no epochs recorded" : "waiting for the first epoch…";
      drawChart($("chart-loss"), loss, { label: "loss", waiting });
      drawChart($("chart-acc"), acc, { label: "accuracy", asPct: true, waiting });
    }

    function appendLog(text, skipped) {
      if (skipped > 0) log.append(document.createTextNode(`… (${skipped} earlier bytes not shown)\n`));
      if (text) log.append(document.createTextNode(text)); // text, never HTML
      if (log.textContent.length > LOG_KEEP) log.textContent = "… (earlier lines dropped)\n" + log.textContent.slice(-LOG_KEEP * 0.75);
      if (follow.checked) log.scrollTop = log.scrollHeight;
    }

    function tickClock() {
      const t0 = started ? Date.parse(started) : NaN;
      let secs = serverDuration;
      if (!final && !isNaN(t0)) secs = Math.max(0, (Date.now() - t0) / 1000);
      $("duration").textContent = duration(secs);
      const cost = $("cost");
      const est = parseFloat(cost.dataset.estimate), price = parseFloat(cost.dataset.price);
      if (final && !isNaN(est)) cost.textContent = money(est);
      else if (!isNaN(price) && typeof secs === "number") cost.textContent = money(price * secs / 3600) + (final ? "" : " so far");
    }

    function showReport(url) {
      const box = $("report"), frame = $("report-frame");
      if (!box.hidden) return;
      box.hidden = false;
      frame.addEventListener("load", () => {
        try {
          const doc = frame.contentDocument;
          frame.style.height = Math.max(300, doc.documentElement.scrollHeight + 24) + "px";
        } catch (e) { /* not ours to measure */ }
      });
      frame.src = url;
    }

    async function poll() {
      let data = null;
      try {
        const resp = await fetch(`${liveUrl}?m=${m}&l=${l}`, { cache: "no-cache" });
        if (resp.status === 404) { setBadge($("state"), "gone"); return; }
        if (!resp.ok) throw new Error(String(resp.status));
        data = await resp.json();
        failures = 0;
        root.classList.remove("stale");
      } catch (e) {
        failures += 1;
        root.classList.add("stale");
        setTimeout(poll, Math.min(30000, 2000 * 2 ** Math.min(failures, 4)));
        return;
      }
      if (data.metrics_reset) rows.length = 0;
      const grew = data.metrics.length > 0 || data.metrics_reset;
      rows.push(...data.metrics);
      m = data.m;
      if (data.log || data.log_skipped) appendLog(data.log, data.log_skipped);
      l = data.l;
      $("log-size").textContent = l <= 0 ? "" : l < 1024 ? `${l} B` : l < 1048576 ? `${(l / 1024).toFixed(1)} KiB` : `${(l / 1048576).toFixed(1)} MiB`;
      setBadge($("state"), data.state);
      root.dataset.state = data.state;
      const msg = $("message");
      if (data.message) { msg.textContent = data.message; msg.hidden = false; }
      if (typeof data.best_accuracy === "number") $("best").textContent = pct(data.best_accuracy);
      else if (rows.length) {
        const accs = rows.map((r) => first(r, ACC_KEYS)).filter((v) => v !== null);
        if (accs.length) $("best").textContent = pct(Math.max(...accs)) + (data.final ? "" : " so far");
      }
      started = data.started || started; ended = data.ended; serverDuration = data.duration_s;
      final = data.final;
      if (grew || final) draw();
      tickClock();
      if (final) {
        if (data.report) showReport(data.report);
        return;
      }
      setTimeout(poll, 2000);
    }

    draw();
    window.addEventListener("resize", () => { clearTimeout(runPage.t); runPage.t = setTimeout(draw, 150); });
    setInterval(() => { if (!final) tickClock(); }, 1000);
    poll();
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-refresh]").forEach(refresher);
    const run = $("run");
    if (run && run.dataset.live) runPage(run);
  });
})();
