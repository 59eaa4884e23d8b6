// moodstream clinician dashboard: renders the server-sent event stream of one view.
// Scores are a screening aid, not a diagnosis. All text is inserted as text (never as HTML).
(function () {
  "use strict";

  const body = document.body;
  const view = body.dataset.view;
  const root = body.dataset.root || "";
  let settings = { live_seconds: 120, gap_seconds: 60, now: Date.now() / 1000 };
  let skew = 0; // dashboard clock minus browser clock, seconds
  let connection = null;

  // ------------------------------------------------------------ formatting
  const now = () => Date.now() / 1000 + skew;
  const fmtProb = (p) => p.toFixed(3);
  const labelOf = (above) => (above ? "above threshold" : "below threshold");
  const minutes = (s) => (s / 60).toFixed(1);
  const shortVersion = (v) => (v && v.length > 14 ? v.slice(0, 12) + "…" : v || "–");
  const clock = (t) => new Date(t * 1000).toLocaleTimeString();
  const dateTime = (t) => new Date(t * 1000).toLocaleString();
  const day = (t) => new Date(t * 1000).toLocaleDateString(undefined,
    { weekday: "short", year: "numeric", month: "short", day: "numeric" });

  function ago(t) {
    const d = Math.max(0, now() - t);
    if (d < 60) return Math.round(d) + " s ago";
    if (d < 3600) return Math.round(d / 60) + " min ago";
    if (d < 86400) return Math.round(d / 3600) + " h ago";
    return Math.round(d / 86400) + " d ago";
  }

  function liveness(summary) {
    return now() - summary.last_update_unix <= settings.live_seconds ? "live" : "idle";
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
  function labelBadge(above, evidence) {
    if (evidence === false) return el("span", { class: "badge collecting", text: "collecting speech" });
    return el("span", { class: "badge " + (above ? "above" : "below"), text: labelOf(above) });
  }

  function modelCell(version) {
    return el("span", { class: "mono", title: "model version " + version, text: shortVersion(version) });
  }

  function participantState(participantId) {
    if (!connection) return null;
    return connection.participants.find((p) => p.participant_id === participantId) || null;
  }

  // The state of a session row: the dashboard's subscription trouble first, else live/idle.
  function rowState(summary) {
    const sub = participantState(summary.participant_id);
    if (connection && connection.server.state !== "connected") return { text: "server " + connection.server.state, cls: "warn" };
    if (sub && sub.state !== "following") return { text: sub.state, cls: "warn" };
    const state = liveness(summary);
    return { text: state, cls: state };
  }

  // ------------------------------------------------------------ connection banners
  function setLivePill(state) {
    const pill = byId("live-pill");
    pill.textContent = "updates: " + state;
    pill.className = "pill " + (state === "connected" ? "ok" : "warn");
  }

  function renderConnection() {
    if (!connection) return;
    const server = connection.server;
    const pill = byId("server-pill");
    pill.textContent = "server: " + server.state;
    pill.className = "pill " + (server.state === "connected" ? "ok" : "warn");
    const serverError = byId("server-error");
    if (server.state === "connected") {
      serverError.hidden = true;
    } else {
      serverError.hidden = false;
      serverError.textContent = "Scoring server " + server.target + " is " + server.state +
        (server.message ? " (" + server.message + ")" : "") +
        ". Scores shown may be out of date; the dashboard keeps retrying.";
    }
    const tokenError = byId("token-error");
    tokenError.hidden = !connection.token_error;
    tokenError.textContent = connection.token_error ? "Access problem: " + connection.token_error : "";
  }

  // ------------------------------------------------------------ overview
  const overview = { sessions: new Map() };

  function renderOverview() {
    const tbody = byId("sessions").tBodies[0];
    const rows = [...overview.sessions.values()].sort((a, b) => {
      const la = liveness(a) === "live", lb = liveness(b) === "live";
      if (la !== lb) return la ? -1 : 1;
      return b.last_update_unix - a.last_update_unix;
    });
    tbody.replaceChildren();
    if (!rows.length) {
      tbody.append(el("tr", { class: "empty" }, el("td", { colspan: "10", text: "No sessions yet for the participants followed." })));
    }
    for (const s of rows) {
      const state = rowState(s);
      tbody.append(el("tr", { "data-ref": s.ref, class: "session-row " + state.cls },
        cell("Participant", {}, el("a", { href: participantHref(s.participant_ref), text: s.participant_id })),
        cell("Session", {}, el("a", { href: sessionHref(s.ref), class: "session-link", text: s.session_id })),
        cell("Device", { class: "opt", text: s.device_id || "–" }),
        cell("Segments", { class: "num segments", text: s.segments }),
        cell("Speech (min)", { class: "num opt", text: minutes(s.speech_seconds) }),
        cell("Latest probability", { class: "num probability", text: fmtProb(s.probability) }),
        cell("Label", {}, labelBadge(s.above_threshold, s.evidence_sufficient)),
        cell("Model", {}, modelCell(s.model_version)),
        cell("Last update", { title: dateTime(s.last_update_unix), text: ago(s.last_update_unix) }),
        cell("State", {}, el("span", { class: "state " + state.cls, text: state.text }))));
    }
    const list = byId("participants");
    list.replaceChildren();
    for (const p of (connection ? connection.participants : [])) {
      list.append(el("li", { class: "participant " + (p.state === "following" ? "ok" : "warn") },
        el("a", { href: participantHref(p.ref), text: p.participant_id }), " ",
        el("span", { class: "state " + (p.state === "following" ? "ok" : "warn"), text: p.state }),
        p.message ? el("span", { class: "message", text: " " + p.message }) : null));
    }
  }

  // ------------------------------------------------------------ charts
  function chartWidth(node) {
    return Math.max(240, Math.floor(node.getBoundingClientRect().width));
  }

  function shadeGaps(gapsOf) {
    return (u) => {
      const ctx = u.ctx;
      ctx.save();
      ctx.fillStyle = "rgba(107, 114, 128, 0.18)";
      for (const [a, b] of gapsOf()) {
        const x0 = u.valToPos(a, "x", true), x1 = u.valToPos(b, "x", true);
        ctx.fillRect(x0, u.bbox.top, Math.max(1, x1 - x0), u.bbox.height);
      }
      ctx.restore();
    };
  }

  // At least a minute (or a day, for session histories) on the time axis, with a margin either side.
  function timeRange(u, min, max) {
    if (min === null || max === null) return [min, max];
    const least = u.series[1].label === "session score" ? 86400 : 60;
    if (max - min < least) return [min - least * 0.03, min + least * 1.03]; // grows to the right
    const margin = (max - min) * 0.03;
    return [min - margin, max + margin];
  }

  function makeChart(node, seriesLabel, pointsOnly, gapsOf) {
    const probability = {
      label: seriesLabel, stroke: "#1d4ed8", width: 2, spanGaps: false,
      value: (u, v) => (v === null || v === undefined ? "–" : fmtProb(v)),
      points: { show: true, size: pointsOnly ? 9 : 6, fill: "#1d4ed8" },
    };
    if (pointsOnly) {
      probability.paths = () => null;
      probability.points.space = 0;
    }
    const opts = {
      width: chartWidth(node), height: 260,
      scales: { x: { time: true, range: timeRange }, y: { range: [0, 1] } },
      series: [
        { label: "time", value: (u, v) => (v === null || v === undefined ? "–" : dateTime(v)) },
        probability,
        { label: "decision threshold", stroke: "#b91c1c", width: 1.5, dash: [6, 4], spanGaps: true,
          points: { show: false }, value: (u, v) => (v === null || v === undefined ? "–" : v.toFixed(2)) },
      ],
      axes: [{ stroke: "#374151" }, { stroke: "#374151", label: "probability", size: 50,
        values: (u, vals) => vals.map((v) => v.toFixed(1)) }],
      hooks: gapsOf ? { drawClear: [shadeGaps(gapsOf)] } : {},
    };
    const chart = new uPlot(opts, [[], [], []], node);
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(() => chart.setSize({ width: chartWidth(node), height: 260 }), 100);
    });
    return chart;
  }

  // ------------------------------------------------------------ session view
  const session = { summary: null, points: [], gaps: [], chart: null };
  const SEGMENT_ROWS = 50;

  function sessionChartData(points, gapSeconds) {
    const xs = [], ys = [], th = [], gaps = [];
    points.forEach((p, i) => {
      if (i > 0 && p.time_unix - points[i - 1].time_unix > gapSeconds) {
        const a = points[i - 1].time_unix, b = p.time_unix;
        gaps.push([a, b]);
        xs.push((a + b) / 2); ys.push(null); th.push(p.threshold); // breaks the line: no scores here
      }
      xs.push(p.time_unix); ys.push(p.probability); th.push(p.threshold);
    });
    return { data: [xs, ys, th], gaps };
  }

  function renderSession() {
    const s = session.summary;
    if (!s) return;
    byId("session-id").textContent = s.session_id;
    const link = byId("participant-link");
    link.textContent = s.participant_id;
    link.href = participantHref(s.participant_ref);
    byId("gap-seconds").textContent = Math.round(settings.gap_seconds);
    if (s.waiting) {
      const stateNode = byId("session-state");
      stateNode.textContent = "waiting for the first score";
      stateNode.className = "state idle";
      return;
    }
    byId("device-id").textContent = s.device_id || "–";
    const state = rowState(s);
    const stateNode = byId("session-state");
    stateNode.textContent = state.text;
    stateNode.className = "state " + state.cls;
    byId("tile-probability").textContent = fmtProb(s.probability);
    byId("tile-label").replaceChildren(labelBadge(s.above_threshold, s.evidence_sufficient));
    byId("tile-segments").textContent = s.segments;
    byId("tile-speech").textContent = minutes(s.speech_seconds) + " min";
    const updated = byId("tile-updated");
    updated.textContent = ago(s.last_update_unix);
    updated.title = dateTime(s.last_update_unix);
    byId("tile-model").textContent = s.model_versions.join(", ");
    document.title = "Session " + s.session_id + " · moodstream dashboard";
  }

  function renderSessionPoints() {
    const node = byId("chart");
    if (!session.chart) session.chart = makeChart(node, "probability", false, () => session.gaps);
    const built = sessionChartData(session.points, settings.gap_seconds);
    session.gaps = built.gaps;
    session.chart.setData(built.data);
    node.dataset.points = String(session.points.length);
    node.dataset.gaps = String(built.gaps.length);
    const tbody = byId("points").tBodies[0];
    tbody.replaceChildren();
    const shown = session.points.slice(-SEGMENT_ROWS).reverse();
    byId("points-note").textContent = session.points.length > SEGMENT_ROWS
      ? "The latest " + SEGMENT_ROWS + " of " + session.points.length + " segments; the chart shows all of them." : "";
    for (const p of shown) {
      tbody.append(el("tr", {},
        cell("Segment", { class: "num", text: p.segments }),
        cell("Time", { title: dateTime(p.time_unix), text: clock(p.time_unix) }),
        cell("Probability", { class: "num", text: fmtProb(p.probability) }),
        cell("Label", {}, labelBadge(p.above_threshold, p.evidence_sufficient)),
        cell("Speech (min)", { class: "num opt", text: minutes(p.speech_seconds) }),
        cell("Model", {}, modelCell(p.model_version))));
    }
  }

  // ------------------------------------------------------------ participant view
  const participant = { info: null, sessions: new Map(), chart: null };

  function renderParticipant() {
    const info = participant.info;
    if (!info) return;
    const sub = participantState(info.participant_id) || info;
    byId("participant-id").textContent = info.participant_id;
    const stateNode = byId("participant-state");
    stateNode.textContent = "subscription: " + sub.state + (sub.message ? " (" + sub.message + ")" : "");
    stateNode.className = "state " + (sub.state === "following" ? "ok" : "warn");
    document.title = "Participant " + info.participant_id + " · moodstream dashboard";
    const rows = [...participant.sessions.values()].sort((a, b) => a.started_unix - b.started_unix);
    const node = byId("history-chart");
    if (!participant.chart) participant.chart = makeChart(node, "session score", true, null);
    participant.chart.setData([rows.map((s) => s.started_unix), rows.map((s) => s.probability),
      rows.map((s) => s.threshold)]);
    node.dataset.points = String(rows.length);
    const tbody = byId("history").tBodies[0];
    tbody.replaceChildren();
    if (!rows.length) {
      tbody.append(el("tr", { class: "empty" }, el("td", { colspan: "9", text: "No sessions to show." })));
    }
    for (const s of rows.slice().reverse()) {
      const state = rowState(s);
      tbody.append(el("tr", { "data-ref": s.ref },
        cell("Day", { title: dateTime(s.started_unix), text: day(s.started_unix) }),
        cell("Session", {}, el("a", { href: sessionHref(s.ref), text: s.session_id })),
        cell("Device", { class: "opt", text: s.device_id || "–" }),
        cell("Segments", { class: "num", text: s.segments }),
        cell("Speech (min)", { class: "num opt", text: minutes(s.speech_seconds) }),
        cell("Probability", { class: "num", text: fmtProb(s.probability) }),
        cell("Label", {}, labelBadge(s.above_threshold, s.evidence_sufficient)),
        cell("Model", {}, modelCell(s.model_version)),
        cell("State", {}, el("span", { class: "state " + state.cls, text: state.text }))));
    }
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

  function onScore(message) {
    takeSettings(message.settings);
    const s = message.session;
    if (view === "overview") {
      overview.sessions.set(s.ref, s);
    } else if (view === "session") {
      const last = session.points[session.points.length - 1];
      if (last && message.point.seq <= last.seq) return; // already shown (snapshot overlap)
      session.summary = s;
      session.points.push(message.point);
      renderSessionPoints();
    } else if (view === "participant") {
      participant.sessions.set(s.ref, s);
    }
    render();
  }

  function onConnection(message) {
    takeSettings(message.settings);
    connection = message.connection;
    render();
  }

  function connect() {
    const url = body.dataset.events;
    if (!url) return;
    const source = new EventSource(url);
    setLivePill("connecting");
    source.onopen = () => setLivePill("connected");
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        setLivePill("closed, retrying");
        setTimeout(connect, 5000);
      } else {
        setLivePill("reconnecting");
      }
    };
    source.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
    source.addEventListener("score", (e) => onScore(JSON.parse(e.data)));
    source.addEventListener("connection", (e) => onConnection(JSON.parse(e.data)));
  }

  if (view === "missing") {
    setLivePill("none");
    byId("server-pill").hidden = true;
    return;
  }
  connect();
  setInterval(render, 5000); // relative times and live/idle age without new events
})();
