// moodstream clinician dashboard: renders the server-sent event stream of one view.
// Scores are a screening aid, not a diagnosis. All text is inserted as text (never as HTML).
(function () {
  "use strict";

  const body = document.body;
  const view = body.dataset.view;
  const root = body.dataset.root || "";
  let settings = { idle_seconds: 60, gap_seconds: 60, late_seconds: 30, now: Date.now() / 1000 };
  let skew = 0; // dashboard clock minus browser clock, seconds
  let connection = null;
  // This page's own connection to the dashboard: "connecting", "live" or "lost".
  const page = { state: "connecting", lostAt: null, freshAt: null };

  // ------------------------------------------------------------ formatting
  const now = () => Date.now() / 1000 + skew;
  const fmtProb = (p) => p.toFixed(2);
  const hasInterval = (s) => s.probability_low !== null && s.probability_low !== undefined;
  // A score's probability with its interval, as moodstream.wire.interval_text writes it: "0.72 (0.61–0.80)".
  const intervalText = (s) => fmtProb(s.probability) +
    (hasInterval(s) ? " (" + fmtProb(s.probability_low) + "–" + fmtProb(s.probability_high) + ")" : "");
  const percent = (level) => Math.round(level * 100) + "%";
  const fmtThreshold = (t) => t.toFixed(2);
  const minutes = (s) => (s / 60).toFixed(1);
  const shortVersion = (v) => (v && v.length > 14 ? v.slice(0, 12) + "…" : v || "–");
  const clock = (t) => new Date(t * 1000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const hhmm = (t) => new Date(t * 1000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  const dateTime = (t) => new Date(t * 1000).toLocaleString();
  const day = (t) => new Date(t * 1000).toLocaleDateString(undefined,
    { weekday: "short", year: "numeric", month: "short", day: "numeric" });
  const shortDay = (t) => new Date(t * 1000).toLocaleDateString(undefined, { month: "short", day: "numeric" });

  // Speech time on the session clock: m:ss, or h:mm:ss past an hour.
  function speechTime(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = String(s % 60).padStart(2, "0");
    return h ? h + ":" + String(m).padStart(2, "0") + ":" + r : m + ":" + r;
  }

  function duration(seconds) {
    const s = Math.round(seconds);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
  }

  function ago(t) {
    const d = Math.max(0, now() - t);
    if (d < 60) return Math.round(d) + " s ago";
    if (d < 3600) return Math.round(d / 60) + " min ago";
    if (d < 86400) return Math.round(d / 3600) + " h ago";
    return Math.round(d / 86400) + " d ago";
  }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const byId = (id) => document.getElementById(id);
  // A table cell that names its column, so that narrow screens can show rows as labelled cards.
  const cell = (label, props, ...children) => el("td", Object.assign({ "data-label": label }, props), ...children);
  const sessionHref = (ref) => root + "/s/" + encodeURIComponent(ref);
  const participantHref = (ref) => root + "/p/" + encodeURIComponent(ref);

  // A score below the checkpoint's evidence rule carries no label; its probability is still shown.
  function labelBadge(above, threshold, evidence) {
    if (evidence === false) return el("span", { class: "badge collecting", text: "collecting speech" });
    const text = (above ? "above" : "below") + " threshold " + fmtThreshold(threshold);
    return el("span", { class: "badge " + (above ? "above" : "below"), text: text });
  }

  function modelCell(version) {
    return el("span", { class: "mono", title: "model version " + version, text: shortVersion(version) });
  }

  // Raw error text stays behind a toggle: the plain message says what it means.
  function withDetails(message, details) {
    const node = el("span", { class: "message" }, message);
    if (details) {
      node.append(" ", el("details", { class: "raw" }, el("summary", { text: "details" }),
        el("code", { text: details })));
    }
    return node;
  }

  // ------------------------------------------------------------ session states
  const STATE_CLASS = { streaming: "ok", idle: "idle", finished: "done", interrupted: "warn" };

  function stateText(summary) {
    const since = summary.state_since ? hhmm(summary.state_since) : "";
    if (summary.state === "streaming") return "streaming";
    if (summary.state === "idle") return "idle since " + since;
    return summary.state + (since ? " " + since : "");
  }

  function stateBadge(summary) {
    return el("span", { class: "state " + (STATE_CLASS[summary.state] || "idle"), "data-state": summary.state,
      title: STATE_HELP[summary.state] || "", text: stateText(summary) });
  }

  const STATE_HELP = {
    streaming: "scores are arriving",
    idle: "the session is open but no score came for a while (no speech kept, or the agent paused)",
    finished: "the agent ended the session: no more speech will come",
    interrupted: "the agent's stream closed without ending the session; it may still resume",
  };

  // ------------------------------------------------------------ connection banners
  function frozen() {
    return page.state !== "live" || !connection || connection.server.state !== "connected";
  }

  function renderConnection() {
    const pagePill = byId("live-pill");
    pagePill.textContent = "this page: " + (page.state === "live" ? "live" : page.state === "lost" ? "reconnecting" : "connecting");
    pagePill.className = "pill " + (page.state === "live" ? "ok" : "warn");
    const serverPill = byId("server-pill");
    const pageBanner = byId("page-banner");
    if (page.state === "lost") {
      // What the dashboard sees of the server is unknown while this page cannot hear from it.
      serverPill.textContent = "server: unknown";
      serverPill.className = "pill unknown";
      pageBanner.hidden = false;
      pageBanner.replaceChildren(el("strong", { text: "Data as of " + hhmm(page.lostAt) + "." }),
        " This page lost its connection to the dashboard at " + clock(page.lostAt) +
        "; scores and states shown may be out of date. Reconnecting…");
    } else {
      pageBanner.hidden = true;
    }
    if (!connection) return;
    const server = connection.server;
    if (page.state !== "lost") {
      serverPill.textContent = "server: " + server.state;
      serverPill.className = "pill " + (server.state === "connected" ? "ok" : "warn");
    }
    const serverBanner = byId("server-banner");
    if (server.state === "connected" || server.state === "connecting") {
      serverBanner.hidden = true;
    } else {
      serverBanner.hidden = false;
      serverBanner.replaceChildren(el("strong", { text: "Data as of " + hhmm(server.since) + "." }),
        " The dashboard has not reached the scoring server since " + clock(server.since) + " (" + server.state +
        "). It keeps retrying; scores recorded meanwhile appear, marked late, once the server is back. ",
        withDetails("", server.details));
    }
    const tokenBanner = byId("token-error");
    const problem = connection.participants.find((p) => p.state === "token rejected");
    tokenBanner.hidden = !problem;
    if (problem) tokenBanner.replaceChildren("Access problem: ", withDetails(problem.message, problem.details));
    document.body.classList.toggle("frozen", frozen());
  }

  // ------------------------------------------------------------ what the score means
  function renderModels(models) {
    const box = byId("model-notes");
    if (!box) return;
    const unique = new Map();
    for (const m of models) if (m && !unique.has(m.model_version)) unique.set(m.model_version, m);
    box.replaceChildren();
    for (const m of unique.values()) {
      const interval = m.interval_level === null || m.interval_level === undefined
        ? el("p", { class: "interval-note", "data-interval": "none",
          text: "This model gives no interval around its scores." })
        : el("p", { class: "interval-note", "data-interval": String(m.interval_level),
          text: "In brackets after each probability, and shaded around it on the chart: its " +
            percent(m.interval_level) + " interval, how far the calibration fitted on speakers the model never " +
            "saw could move it." });
      box.append(el("div", { class: "model-note", "data-model": m.model_version },
        m.flag ? el("p", { class: "demo-flag", text: m.flag }) : null,
        el("p", { class: "meaning", text: m.meaning + " Decision threshold: " + fmtThreshold(m.threshold) +
          " (a probability at or above it is labelled “above threshold”)." }), interval));
    }
    box.hidden = !unique.size;
  }

  // ------------------------------------------------------------ overview
  const overview = { sessions: new Map() };
  const ORDER = { streaming: 0, idle: 1, interrupted: 2, finished: 3 };

  function renderOverview() {
    const tbody = byId("sessions").tBodies[0];
    const rows = [...overview.sessions.values()].sort((a, b) =>
      (ORDER[a.state] ?? 9) - (ORDER[b.state] ?? 9) || b.last_update_unix - a.last_update_unix);
    tbody.replaceChildren();
    if (!rows.length) {
      const none = connection && connection.discovering
        ? "No recent sessions that this dashboard's token may read."
        : "No sessions yet for the participants followed.";
      tbody.append(el("tr", { class: "empty" }, el("td", { colspan: "8", text: none })));
    }
    for (const s of rows) {
      tbody.append(el("tr", { "data-ref": s.ref, "data-state": s.state, class: "session-row" },
        cell("State", {}, stateBadge(s)),
        cell("Participant", { class: "id" }, el("a", { href: participantHref(s.participant_ref), text: s.participant_id })),
        cell("Session", { class: "id" }, el("a", { href: sessionHref(s.ref), class: "session-link", text: s.session_id })),
        cell("Latest probability", { class: "num probability", text: intervalText(s) }),
        cell("Label", {}, labelBadge(s.above_threshold, s.threshold, s.evidence_sufficient)),
        cell("Segments", { class: "num segments", text: s.segments }),
        cell("Last score", { title: dateTime(s.last_update_unix), text: ago(s.last_update_unix) }),
        cell("Model", { class: "opt" }, modelCell(s.model_version))));
    }
    renderModels(rows.map((s) => s.model));
    const list = byId("participants");
    list.replaceChildren();
    for (const p of (connection ? connection.participants : [])) {
      const ok = p.state === "following";
      list.append(el("li", { class: "participant " + (ok ? "ok" : "warn") },
        el("a", { href: participantHref(p.ref), text: p.participant_id }), " ",
        el("span", { class: "state " + (ok ? "ok" : "warn"), text: p.state }),
        p.message ? el("span", {}, " – ", withDetails(p.message, p.details)) : null));
    }
  }

  // ------------------------------------------------------------ charts
  const AXIS_FONT = "12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  const measurer = document.createElement("canvas").getContext("2d");

  // The node's inner width: a canvas as wide as its border box would stick out past the border.
  function chartWidth(node) {
    return Math.max(240, Math.floor(node.clientWidth));
  }

  // Records where the x labels were drawn (page px), so a test can check that none collide.
  function recordXLabels(node) {
    return (u) => {
      const axis = u.axes[0];
      const splits = axis._splits || [], values = axis._values || [];
      const over = u.over.getBoundingClientRect();
      measurer.font = AXIS_FONT;
      const boxes = [];
      splits.forEach((split, i) => {
        const text = values[i];
        if (text === null || text === undefined || text === "") return;
        const x = over.left + u.valToPos(split, "x");
        const half = measurer.measureText(String(text)).width / 2;
        boxes.push([Math.round((x - half) * 10) / 10, Math.round((x + half) * 10) / 10, String(text)]);
      });
      node.dataset.xLabels = JSON.stringify(boxes);
      node.dataset.xRange = JSON.stringify([u.scales.x.min, u.scales.x.max]);
    };
  }

  // A tick label centred near the plot's edge would be drawn past the canvas (cut off at phone
  // width); such labels are left out, the tick itself stays. The plot's left edge is read from the
  // style uPlot sets (offsetLeft is rounded to whole pixels), with a margin for text rendering.
  const LABEL_MARGIN = 2;
  function labelsInsideCanvas(format) {
    return (u, splits, ...rest) => {
      const labels = format(u, splits, ...rest);
      const plotLeft = parseFloat(u.over.style.left) || u.over.offsetLeft;
      measurer.font = AXIS_FONT;
      return labels.map((text, i) => {
        if (text === null || text === undefined) return text;
        const x = plotLeft + u.valToPos(splits[i], "x");
        const half = measurer.measureText(String(text)).width / 2;
        return x - half >= LABEL_MARGIN && x + half <= u.width - LABEL_MARGIN ? text : null;
      });
    };
  }

  // The decision threshold as a dashed line across the plot, with its value written on it;
  // unlike a series it shows for a single point too.
  function drawThreshold(thresholdOf, node) {
    return (u) => {
      const threshold = thresholdOf();
      if (threshold === null || threshold === undefined) return;
      const ctx = u.ctx, ratio = window.devicePixelRatio || 1;
      const y = u.valToPos(threshold, "y", true);
      node.dataset.thresholdRow = String(Math.round(y)); // canvas pixel row of the line, for tests
      ctx.save();
      ctx.strokeStyle = "#b91c1c";
      ctx.lineWidth = 1.5 * ratio;
      ctx.setLineDash([6 * ratio, 4 * ratio]);
      ctx.beginPath();
      ctx.moveTo(u.bbox.left, y);
      ctx.lineTo(u.bbox.left + u.bbox.width, y);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = "#b91c1c";
      ctx.font = Math.round(12 * ratio) + "px system-ui, sans-serif";
      ctx.textAlign = "right";
      ctx.fillText("threshold " + fmtThreshold(threshold), u.bbox.left + u.bbox.width - 4 * ratio, y - 4 * ratio);
      ctx.restore();
    };
  }

  function shadeBands(bandsOf) {
    return (u) => {
      const ctx = u.ctx;
      ctx.save();
      for (const band of bandsOf()) {
        const x0 = u.valToPos(band.from, "x", true), x1 = u.valToPos(band.to, "x", true);
        ctx.fillStyle = band.kind === "late" ? "rgba(217, 119, 6, 0.16)" : "rgba(107, 114, 128, 0.18)";
        ctx.fillRect(x0, u.bbox.top, Math.max(2, x1 - x0), u.bbox.height);
      }
      ctx.restore();
    };
  }

  // Each score's interval, shaded behind the probability: one band along the line over consecutive scores
  // that carry one (`joined`), else a bar per score. `intervalsOf` gives {x, low, high} or null per point.
  function drawIntervals(intervalsOf, node, joined) {
    return (u) => {
      const intervals = intervalsOf();
      const ratio = window.devicePixelRatio || 1, half = 4 * ratio;
      const at = (item) => [u.valToPos(item.x, "x", true), u.valToPos(item.high, "y", true),
        u.valToPos(item.low, "y", true)];
      const runs = [];
      let run = [];
      for (const item of intervals) {
        if (item) run.push(item);
        if ((!item || !joined) && run.length) { runs.push(run); run = []; }
      }
      if (run.length) runs.push(run);
      const ctx = u.ctx;
      ctx.save();
      ctx.beginPath();
      ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
      ctx.clip();
      ctx.fillStyle = "rgba(29, 78, 216, 0.18)";
      let probe = null; // canvas column and rows inside the latest band, for tests
      for (const r of runs) {
        ctx.beginPath();
        if (r.length === 1) {
          const [x, top, bottom] = at(r[0]);
          ctx.rect(x - half, top, 2 * half, Math.max(1, bottom - top));
          probe = [x, top, bottom];
        } else {
          r.forEach((item, i) => { const [x, top] = at(item); if (i) ctx.lineTo(x, top); else ctx.moveTo(x, top); });
          r.slice().reverse().forEach((item) => { const [x, , bottom] = at(item); ctx.lineTo(x, bottom); });
          ctx.closePath();
          const a = at(r[r.length - 2]), b = at(r[r.length - 1]);
          probe = a.map((value, i) => (value + b[i]) / 2);
        }
        ctx.fill();
      }
      ctx.restore();
      node.dataset.intervals = String(intervals.filter(Boolean).length);
      node.dataset.intervalProbe = probe ? JSON.stringify(probe.map(Math.round)) : "";
    };
  }

  const intervalOf = (x, s) => (hasInterval(s) ? { x: x, low: s.probability_low, high: s.probability_high } : null);

  function showIntervalLegend(count) {
    const item = byId("legend-interval");
    if (item) item.hidden = !count;
  }

  // The x range is set here, not left to uPlot, which spans years around a lone time point.
  function setChartData(chart, data, range) {
    const xs = data[0];
    const [min, max] = range(xs.length ? Math.min(...xs) : null, xs.length ? Math.max(...xs) : null);
    chart.setData(data, false);
    chart.setScale("x", { min: min, max: max });
  }

  // Speech time: at least two minutes shown, never before the session's start.
  function speechRange(min, max) {
    if (min === null || max === null) return [0, 120];
    if (max - min < 120) {
      const lo = Math.max(0, (min + max) / 2 - 60);
      return [lo, lo + 120];
    }
    const margin = (max - min) * 0.03;
    return [Math.max(0, min - margin), max + margin];
  }

  // Days: at least a day shown, centred on a lone point.
  function dayRange(min, max) {
    if (min === null || max === null) { const t = now(); return [t - 43200, t + 43200]; }
    if (max - min < 86400) { const mid = (min + max) / 2; return [mid - 43200, mid + 43200]; }
    const margin = (max - min) * 0.05;
    return [min - margin, max + margin];
  }

  function dayLabels(u, splits) {
    const span = u.scales.x.max - u.scales.x.min;
    return splits.map((t) => (span <= 2 * 86400 ? hhmm(t) : shortDay(t)));
  }

  function makeChart(node, options) {
    const initial = options.range(null, null);
    const narrow = () => chartWidth(node) < 480;
    const probability = {
      label: options.seriesLabel, stroke: "#1d4ed8", width: 2, spanGaps: false,
      points: { show: true, size: options.pointsOnly ? 9 : 6, fill: "#1d4ed8" },
    };
    if (options.pointsOnly) {
      probability.paths = () => null;
      probability.points.space = 0;
    }
    const series = [{ label: options.xLabel }, probability];
    if (options.late) {
      series.push({ label: "scored late", stroke: "#b45309", width: 0, paths: () => null,
        points: { show: true, size: 11, width: 2.5, stroke: "#b45309", fill: "#ffffff", space: 0 } });
    }
    const xAxis = { stroke: "#374151", font: AXIS_FONT, label: options.xLabel, labelFont: AXIS_FONT, labelSize: 18,
      space: () => (narrow() ? options.narrowSpace : options.space), values: labelsInsideCanvas(options.xValues) };
    const opts = {
      width: chartWidth(node), height: 260,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: options.time, auto: false, min: initial[0], max: initial[1] }, y: { range: [0, 1] } },
      series: series,
      axes: [xAxis, { stroke: "#374151", font: AXIS_FONT, label: "probability", labelFont: AXIS_FONT, size: 44,
        values: (u, vals) => vals.map((v) => v.toFixed(1)) }],
      hooks: {
        drawClear: [options.bandsOf ? shadeBands(options.bandsOf) : null,
          drawIntervals(options.intervalsOf, node, !options.pointsOnly)].filter(Boolean),
        draw: [drawThreshold(options.thresholdOf, node), recordXLabels(node)],
      },
    };
    const chart = new uPlot(opts, series.map(() => []), node);
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(() => chart.setSize({ width: chartWidth(node), height: 260 }), 100);
    });
    return chart;
  }

  // ------------------------------------------------------------ session view
  const session = { summary: null, points: [], bands: [], chart: null };
  const SEGMENT_ROWS = 50;

  // Bands behind the points: gaps in speech (no speech kept) and runs of late scores, with their cause.
  function sessionBands(points) {
    const bands = [];
    points.forEach((p, i) => {
      if (p.gap_before && i > 0) {
        const previous = points[i - 1];
        const chunk = previous.speech_seconds - (i > 1 ? points[i - 2].speech_seconds : 0);
        bands.push({ kind: "gap", from: previous.start_seconds + chunk, to: p.start_seconds, cause: p.gap_before });
      }
      if (p.late) {
        const last = bands[bands.length - 1];
        const end = p.start_seconds + (p.speech_seconds - (i > 0 ? points[i - 1].speech_seconds : 0));
        if (last && last.kind === "late" && last.cause === p.late_cause && last.lastIndex === i - 1) {
          last.to = end; last.lastIndex = i; last.count += 1;
        } else {
          bands.push({ kind: "late", from: p.start_seconds, to: end, cause: p.late_cause, lastIndex: i, count: 1,
            delay: p.delay_seconds });
        }
      }
    });
    return bands;
  }

  function describeChart(points, threshold) {
    if (!points.length) return "No scores yet.";
    const late = points.filter((p) => p.late).length;
    const last = points[points.length - 1];
    return points.length + " scores over " + speechTime(last.start_seconds) + " of session time; latest " +
      intervalText(last) + ", decision threshold " + fmtThreshold(threshold) +
      (late ? "; " + late + " scored late" : "") + ".";
  }

  function renderSession() {
    const s = session.summary;
    if (!s) return;
    byId("session-id").textContent = s.session_id;
    const link = byId("participant-link");
    link.textContent = s.participant_id;
    link.href = participantHref(s.participant_ref);
    const stateNode = byId("session-state");
    if (s.waiting) {
      stateNode.replaceChildren(el("span", { class: "state idle", "data-state": "waiting", text: "waiting for the first score" }));
      return;
    }
    byId("device-id").textContent = s.device_id || "–";
    stateNode.replaceChildren(stateBadge(s));
    byId("tile-probability").replaceChildren(fmtProb(s.probability), hasInterval(s)
      ? el("span", { class: "interval", text: " " + intervalText(s).slice(fmtProb(s.probability).length + 1) }) : "");
    byId("tile-label").replaceChildren(labelBadge(s.above_threshold, s.threshold, s.evidence_sufficient));
    byId("tile-threshold").textContent = fmtThreshold(s.threshold);
    byId("tile-segments").textContent = s.segments;
    byId("tile-speech").textContent = minutes(s.speech_seconds) + " min";
    const updated = byId("tile-updated");
    updated.textContent = ago(s.last_update_unix);
    updated.title = dateTime(s.last_update_unix);
    byId("tile-model").textContent = s.model_versions.join(", ");
    renderModels([s.model]);
  }

  function renderSessionPoints() {
    const node = byId("chart");
    if (!session.chart) {
      session.chart = makeChart(node, {
        seriesLabel: "probability", xLabel: "speech time (min:s on the session clock)", time: false,
        range: speechRange, space: 60, narrowSpace: 56, late: true,
        xValues: (u, splits) => splits.map(speechTime),
        bandsOf: () => session.bands,
        intervalsOf: () => session.points.map((p) => intervalOf(p.start_seconds, p)),
        thresholdOf: () => (session.points.length ? session.points[session.points.length - 1].threshold : null),
      });
    }
    const points = session.points;
    session.bands = sessionBands(points);
    setChartData(session.chart, [points.map((p) => p.start_seconds), points.map((p) => p.probability),
      points.map((p) => (p.late ? p.probability : null))], speechRange);
    const threshold = points.length ? points[points.length - 1].threshold : null;
    node.dataset.points = String(points.length);
    node.dataset.gaps = String(session.bands.filter((b) => b.kind === "gap").length);
    node.dataset.late = String(points.filter((p) => p.late).length);
    showIntervalLegend(points.filter(hasInterval).length);
    node.dataset.x = JSON.stringify(points.map((p) => p.start_seconds));
    node.setAttribute("aria-label", "Chart of the probability per segment by speech time. " + describeChart(points, threshold || 0));
    byId("legend-threshold").textContent = threshold === null ? "–" : fmtThreshold(threshold);
    const bandList = byId("bands");
    bandList.replaceChildren();
    for (const b of session.bands) {
      const span = speechTime(b.from) + "–" + speechTime(b.to);
      bandList.append(el("li", { class: "band " + b.kind, "data-kind": b.kind },
        b.kind === "gap" ? "Gap " + span + ": " + b.cause + "."
          : span + ": " + b.count + (b.count === 1 ? " score" : " scores") + " scored late (" + b.cause +
            ", up to " + duration(b.delay) + " after the speech) — placed where the speech was recorded."));
    }
    bandList.hidden = !session.bands.length;
    const tbody = byId("points").tBodies[0];
    tbody.replaceChildren();
    const shown = points.slice(-SEGMENT_ROWS).reverse();
    byId("points-note").textContent = points.length > SEGMENT_ROWS
      ? "The latest " + SEGMENT_ROWS + " of " + points.length + " segments; the chart shows all of them." : "";
    for (const p of shown) {
      const scored = el("span", { title: dateTime(p.time_unix), text: clock(p.time_unix) });
      tbody.append(el("tr", { class: p.late ? "late" : null },
        cell("Segment", { class: "num", text: p.segments }),
        cell("Recorded at", { class: "num", text: speechTime(p.start_seconds) }),
        cell("Scored at", {}, scored, p.late ? el("span", { class: "late-mark", text: " late by " + duration(p.delay_seconds) + " (" + p.late_cause + ")" }) : null),
        cell("Probability", { class: "num", text: intervalText(p) }),
        cell("Label", {}, labelBadge(p.above_threshold, p.threshold, p.evidence_sufficient)),
        cell("Speech (min)", { class: "num opt", text: minutes(p.speech_seconds) }),
        cell("Model", { class: "opt" }, modelCell(p.model_version))));
    }
  }

  // ------------------------------------------------------------ participant view
  // The chart shows one model version's sessions at a time (their probabilities and thresholds are
  // different scales); a participant with sessions under several versions gets a switch between them.
  const participant = { info: null, sessions: new Map(), shown: [], chart: null, threshold: null, version: null };

  function renderVersionSwitch(versions, rows) {
    const box = byId("history-versions");
    box.hidden = versions.length < 2;
    box.replaceChildren();
    if (versions.length < 2) return;
    box.append("Sessions under model ");
    versions.forEach((version, index) => {
      const count = rows.filter((s) => s.model_version === version).length;
      const button = el("button", { type: "button", class: "version", "data-model": version,
        "aria-pressed": String(version === participant.version),
        text: version + " (" + count + (count === 1 ? " session)" : " sessions)") });
      button.addEventListener("click", () => { participant.version = version; renderParticipant(); });
      if (index) box.append(" ");
      box.append(button);
    });
  }

  function renderParticipant() {
    const info = participant.info;
    if (!info) return;
    const sub = participantState(info.participant_id) || info;
    byId("participant-id").textContent = info.participant_id;
    const stateNode = byId("participant-state");
    stateNode.replaceChildren(el("span", { class: "state " + (sub.state === "following" ? "ok" : "warn"),
      text: "subscription: " + sub.state }));
    if (sub.message) stateNode.append(" – ", withDetails(sub.message, sub.details));
    const rows = [...participant.sessions.values()].sort((a, b) => a.started_unix - b.started_unix);
    const versions = [...new Set(rows.map((s) => s.model_version))];
    if (!versions.includes(participant.version)) participant.version = rows.length ? rows[rows.length - 1].model_version : null;
    const shown = rows.filter((s) => s.model_version === participant.version);
    participant.shown = shown;
    participant.threshold = shown.length ? shown[shown.length - 1].threshold : null;
    renderVersionSwitch(versions, rows);
    const node = byId("history-chart");
    if (!participant.chart) {
      participant.chart = makeChart(node, {
        seriesLabel: "session score", xLabel: "day", time: true, range: dayRange, space: 90, narrowSpace: 80,
        pointsOnly: true, late: false, xValues: dayLabels, bandsOf: null, thresholdOf: () => participant.threshold,
        intervalsOf: () => participant.shown.map((s) => intervalOf(s.started_unix, s)),
      });
    }
    setChartData(participant.chart, [shown.map((s) => s.started_unix), shown.map((s) => s.probability)], dayRange);
    node.dataset.points = String(shown.length);
    node.dataset.modelVersion = participant.version || "";
    showIntervalLegend(shown.filter(hasInterval).length);
    node.setAttribute("aria-label", "Chart of each session's latest score by day: " + shown.length + " sessions" +
      (versions.length > 1 ? " under model " + participant.version : "") +
      (participant.threshold === null ? "." : ", decision threshold " + fmtThreshold(participant.threshold) + "."));
    byId("legend-threshold").textContent = participant.threshold === null ? "–" : fmtThreshold(participant.threshold);
    renderModels(rows.map((s) => s.model));
    const tbody = byId("history").tBodies[0];
    tbody.replaceChildren();
    if (!rows.length) {
      tbody.append(el("tr", { class: "empty" }, el("td", { colspan: "7", text: "No sessions to show." })));
    }
    for (const s of rows.slice().reverse()) {
      tbody.append(el("tr", { "data-ref": s.ref, "data-state": s.state },
        cell("State", {}, stateBadge(s)),
        cell("Day", { title: dateTime(s.started_unix), text: day(s.started_unix) }),
        cell("Session", { class: "id" }, el("a", { href: sessionHref(s.ref), text: s.session_id })),
        cell("Segments", { class: "num", text: s.segments }),
        cell("Probability", { class: "num", text: intervalText(s) }),
        cell("Label", {}, labelBadge(s.above_threshold, s.threshold, s.evidence_sufficient)),
        cell("Model", { class: "opt" }, modelCell(s.model_version))));
    }
  }

  function participantState(participantId) {
    if (!connection) return null;
    return connection.participants.find((p) => p.participant_id === participantId) || null;
  }

  // ------------------------------------------------------------ events
  function takeSettings(next) {
    if (!next) return;
    settings = next;
    skew = next.now - Date.now() / 1000;
  }

  function render() {
    renderConnection();
    if (view === "overview") renderOverview();
    else if (view === "session") renderSession();
    else if (view === "participant") renderParticipant();
  }

  function onSnapshot(snapshot) {
    takeSettings(snapshot.settings);
    connection = snapshot.connection;
    if (view === "overview") {
      overview.sessions = new Map(snapshot.sessions.map((s) => [s.ref, s]));
    } else if (view === "session") {
      session.summary = snapshot.session;
      session.points = snapshot.points;
      renderSessionPoints();
    } else if (view === "participant") {
      participant.info = snapshot.participant;
      participant.sessions = new Map(snapshot.sessions.map((s) => [s.ref, s]));
    }
    render();
  }

  function onSession(message) {
    takeSettings(message.settings);
    const s = message.session;
    if (view === "overview") {
      // Without named participants the overview shows only the session directory's recent sessions.
      if (s.on_overview === false) overview.sessions.delete(s.ref);
      else overview.sessions.set(s.ref, s);
    } else if (view === "session") session.summary = s;
    else if (view === "participant") participant.sessions.set(s.ref, s);
    render();
  }

  function onScore(message) {
    if (view === "session") {
      const last = session.points[session.points.length - 1];
      if (last && message.point.seq <= last.seq) return; // already shown (snapshot overlap)
      session.points.push(message.point);
      renderSessionPoints();
    }
    onSession(message);
  }

  function onConnection(message) {
    takeSettings(message.settings);
    connection = message.connection;
    render();
  }

  function setPage(state) {
    if (state === "lost" && page.state !== "lost") page.lostAt = now();
    page.state = state;
    render();
  }

  function connect() {
    const url = body.dataset.events;
    if (!url) return;
    const source = new EventSource(url);
    source.onopen = () => setPage("live");
    source.onerror = () => {
      setPage("lost");
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(connect, 5000);
      }
    };
    source.addEventListener("snapshot", (e) => { page.state = "live"; onSnapshot(JSON.parse(e.data)); });
    source.addEventListener("score", (e) => onScore(JSON.parse(e.data)));
    source.addEventListener("session", (e) => onSession(JSON.parse(e.data)));
    source.addEventListener("connection", (e) => onConnection(JSON.parse(e.data)));
  }

  if (view === "missing") {
    byId("live-pill").hidden = true;
    byId("server-pill").hidden = true;
    return;
  }
  connect();
  setInterval(render, 5000); // relative times without new events
})();
