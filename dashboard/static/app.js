// moodstream clinician dashboard: renders the server-sent event stream of one view (after format.js and
// chart.js). Scores are a screening aid, not a diagnosis. All text is inserted as text (never as HTML).
(function () {
  "use strict";

  const ms = window.moodstream;
  const { el, cell, byId, fmtProb, hasInterval, intervalText, percent, fmtThreshold, clock, hhmm, dateTime, day,
    sessionTime, duration, ago, labelBadge, modelCell, withDetails, replaceWhenChanged, segmentCount } = ms;
  const body = document.body;
  const view = body.dataset.view;
  const root = body.dataset.root || "";
  let settings = { idle_seconds: 60, gap_seconds: 60, late_seconds: 30, now: Date.now() / 1000 };
  let connection = null;
  const sessionHref = (ref) => root + "/s/" + encodeURIComponent(ref);
  const participantHref = (ref) => root + "/p/" + encodeURIComponent(ref);
  // A state as last known while the dashboard cannot hear the server, or this page the dashboard.
  const stateBadge = (summary) => ms.stateBadge(summary, frozen());
  // The models the server holds, the one new sessions get first: shown before any score.
  const servedModels = () => (connection && connection.models) || [];
  // This page's own connection to the dashboard: "connecting", "live" or "lost".
  const page = { state: "connecting", lostAt: null, freshAt: null };

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
    const rejected = connection.token_rejected;
    if (page.state !== "lost") {
      // A rejected token reads nothing from a server that answers: never a green "connected" then.
      serverPill.textContent = "server: " + (rejected ? "token rejected" : server.state);
      serverPill.className = "pill " + (rejected ? "bad" : server.state === "connected" ? "ok" : "warn");
    }
    const serverBanner = byId("server-banner");
    if (server.state === "connected" || server.state === "connecting") {
      serverBanner.hidden = true;
    } else {
      serverBanner.hidden = false;
      replaceWhenChanged(serverBanner, [server.state, server.since, server.details], () => [
        el("strong", { text: "Data as of " + hhmm(server.since) + "." }),
        " The dashboard has not reached the scoring server since " + clock(server.since) + " (" + server.state +
        "). It keeps retrying; scores recorded meanwhile appear, marked late, once the server is back. ",
        withDetails("", server.details)]);
    }
    // Every mode: a token the subscriptions or the session directory were refused with.
    const tokenBanner = byId("token-error");
    const problem = connection.participants.find((p) => p.state === "token rejected");
    tokenBanner.hidden = !connection.token_error;
    if (connection.token_error) {
      replaceWhenChanged(tokenBanner, [rejected, problem && problem.message, problem && problem.details,
                                       connection.token_error], () => [
        el("strong", { text: rejected ? "Token rejected." : "Access problem." }), " ",
        problem ? withDetails(problem.message, problem.details) : connection.token_error]);
    }
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
          " (a probability at or above it is labelled “above threshold”)." }),
        m.evidence ? el("p", { class: "evidence-note", text: "A score carries a label once its session has " +
          segmentCount(m.evidence.segments) + " / " + duration(m.evidence.seconds) + " of speech; before that " +
          "it reads “collecting speech” and is drawn hollow." }) : null, interval));
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
      const none = connection && connection.token_error
        ? "No sessions can be shown: " + connection.token_error + "."
        : connection && connection.discovering
          ? "No recent sessions that this dashboard's token may read."
          : "No sessions yet for the participants followed.";
      tbody.append(el("tr", { class: "empty" }, el("td", { colspan: "9", text: none })));
    }
    for (const s of rows) {
      tbody.append(el("tr", { "data-ref": s.ref, "data-state": s.state, class: "session-row" },
        cell("State", {}, stateBadge(s)),
        cell("Participant", { class: "id" }, el("a", { href: participantHref(s.participant_ref), text: s.participant_id })),
        cell("Session", { class: "id" }, el("a", { href: sessionHref(s.ref), class: "session-link", text: s.session_id })),
        cell("Latest probability", { class: "num probability", text: intervalText(s) }),
        cell("Label", {}, labelBadge(s, s.model)),
        cell("Segments", { class: "num segments", text: s.segments }),
        cell("Speech", { class: "num speech", text: duration(s.speech_seconds) }),
        cell("Last score", { title: dateTime(s.last_update_unix), text: ago(s.last_update_unix) }),
        cell("Model", { class: "opt" }, modelCell(s.model_version))));
    }
    renderModels(rows.length ? rows.map((s) => s.model) : servedModels());
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
    const collecting = points.filter((p) => p.evidence_sufficient === false).length;
    const last = points[points.length - 1];
    return points.length + " scores over " + sessionTime(last.start_seconds) + " on the session clock, from " +
      duration(last.speech_seconds) + " of speech; latest " + intervalText(last) + ", decision threshold " +
      fmtThreshold(threshold) + (collecting ? "; " + collecting + " collecting speech (no label yet)" : "") +
      (late ? "; " + late + " scored late" : "") + ".";
  }

  // The speech behind the scores, apart from the session clock the chart runs on (which counts pauses).
  function speechNote(points) {
    if (!points.length) return "No speech scored yet.";
    const last = points[points.length - 1];
    return "Speech scored: " + duration(last.speech_seconds) + " in " + segmentCount(last.segments) + ", over " +
      sessionTime(last.start_seconds) + " on the session clock (pauses and silence are not kept).";
  }

  // Before the first score: the threshold, meaning and evidence rule of the model new sessions get.
  function renderWaiting() {
    const model = servedModels()[0];
    byId("tile-speech").textContent = duration(0);
    byId("tile-segments").textContent = "0";
    if (!model) return;
    byId("tile-threshold").textContent = fmtThreshold(model.threshold);
    byId("legend-threshold").textContent = fmtThreshold(model.threshold);
    byId("tile-label").replaceChildren(labelBadge({ segments: 0, speech_seconds: 0, evidence_sufficient: false }, model));
    renderModels([model]);
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
      renderWaiting();
      return;
    }
    byId("device-id").textContent = s.device_id || "–";
    stateNode.replaceChildren(stateBadge(s));
    byId("tile-probability").replaceChildren(fmtProb(s.probability), hasInterval(s)
      ? el("span", { class: "interval", text: " " + intervalText(s).slice(fmtProb(s.probability).length + 1) }) : "");
    byId("tile-label").replaceChildren(labelBadge(s, s.model));
    byId("tile-threshold").textContent = fmtThreshold(s.threshold);
    byId("tile-segments").textContent = s.segments;
    byId("tile-speech").textContent = duration(s.speech_seconds);
    const updated = byId("tile-updated");
    updated.textContent = ago(s.last_update_unix);
    updated.title = dateTime(s.last_update_unix);
    byId("tile-model").textContent = s.model_versions.join(", ");
    renderModels([s.model]);
  }

  function renderSessionPoints() {
    const node = byId("chart");
    if (!session.chart) {
      session.chart = ms.makeChart(node, {
        seriesLabel: "probability", xLabel: "session clock (min:s since the session started)", time: false,
        range: ms.sessionRange, space: 60, narrowSpace: 56, late: true,
        xValues: (u, splits) => splits.map(sessionTime),
        bandsOf: () => session.bands,
        intervalsOf: () => session.points.map((p) => ms.intervalOf(p.start_seconds, p)),
        thresholdOf: () => (session.points.length ? session.points[session.points.length - 1].threshold : null),
      });
    }
    const points = session.points;
    session.bands = sessionBands(points);
    ms.setScores(session.chart, points.map((p) => p.start_seconds), points, ms.sessionRange);
    const threshold = points.length ? points[points.length - 1].threshold : null;
    node.dataset.points = String(points.length);
    node.dataset.gaps = String(session.bands.filter((b) => b.kind === "gap").length);
    node.dataset.late = String(points.filter((p) => p.late).length);
    ms.showIntervalLegend(points.filter(hasInterval).length);
    node.dataset.x = JSON.stringify(points.map((p) => p.start_seconds));
    node.setAttribute("aria-label", "Chart of the probability per segment by when its speech was recorded on the " +
      "session clock. " + describeChart(points, threshold || 0));
    byId("chart-speech").textContent = speechNote(points);
    byId("legend-threshold").textContent = threshold === null ? "–" : fmtThreshold(threshold);
    const bandList = byId("bands");
    bandList.replaceChildren();
    for (const b of session.bands) {
      const span = sessionTime(b.from) + "–" + sessionTime(b.to);
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
        cell("Recorded at", { class: "num", text: sessionTime(p.start_seconds) }),
        cell("Scored at", {}, scored, p.late ? el("span", { class: "late-mark", text: " late by " + duration(p.delay_seconds) + " (" + p.late_cause + ")" }) : null),
        cell("Probability", { class: "num", text: intervalText(p) }),
        cell("Label", {}, labelBadge(p, session.summary && session.summary.model)),
        cell("Speech", { class: "num opt", text: duration(p.speech_seconds) }),
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
      participant.chart = ms.makeChart(node, {
        seriesLabel: "session score", xLabel: "day", time: true, range: ms.dayRange, space: 90, narrowSpace: 80,
        pointsOnly: true, late: false, xValues: ms.dayLabels, bandsOf: null, thresholdOf: () => participant.threshold,
        intervalsOf: () => participant.shown.map((s) => ms.intervalOf(s.started_unix, s)),
      });
    }
    ms.setScores(participant.chart, shown.map((s) => s.started_unix), shown, ms.dayRange);
    node.dataset.points = String(shown.length);
    node.dataset.modelVersion = participant.version || "";
    ms.showIntervalLegend(shown.filter(hasInterval).length);
    node.setAttribute("aria-label", "Chart of each session's latest score by day: " + shown.length + " sessions" +
      (versions.length > 1 ? " under model " + participant.version : "") +
      (participant.threshold === null ? "." : ", decision threshold " + fmtThreshold(participant.threshold) + "."));
    byId("legend-threshold").textContent = participant.threshold === null ? "–" : fmtThreshold(participant.threshold);
    renderModels(rows.length ? rows.map((s) => s.model) : servedModels());
    const tbody = byId("history").tBodies[0];
    tbody.replaceChildren();
    if (!rows.length) {
      tbody.append(el("tr", { class: "empty" }, el("td", { colspan: "8", text: "No sessions to show." })));
    }
    for (const s of rows.slice().reverse()) {
      tbody.append(el("tr", { "data-ref": s.ref, "data-state": s.state },
        cell("State", {}, stateBadge(s)),
        cell("Day", { title: dateTime(s.started_unix), text: day(s.started_unix) }),
        cell("Session", { class: "id" }, el("a", { href: sessionHref(s.ref), text: s.session_id })),
        cell("Segments", { class: "num", text: s.segments }),
        cell("Speech", { class: "num", text: duration(s.speech_seconds) }),
        cell("Probability", { class: "num", text: intervalText(s) }),
        cell("Label", {}, labelBadge(s, s.model)),
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
    ms.skew = next.now - Date.now() / 1000;
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
    if (state === "lost" && page.state !== "lost") page.lostAt = ms.now();
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

  const printButton = byId("print-summary");
  if (printButton) printButton.addEventListener("click", () => window.print());
  if (view === "missing") {
    byId("live-pill").hidden = true;
    byId("server-pill").hidden = true;
    return;
  }
  connect();
  setInterval(render, 5000); // relative times without new events
})();
