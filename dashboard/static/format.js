// moodstream dashboard: how numbers, times, labels and states are written, and the DOM helpers every view
// uses. Loaded before chart.js and app.js; all text is inserted as text (never as HTML).
(function () {
  "use strict";

  const ms = (window.moodstream = window.moodstream || {});
  ms.skew = 0; // dashboard clock minus browser clock, seconds

  const now = () => Date.now() / 1000 + ms.skew;
  // As moodstream.wire.probability_text: what would read 0.00 or 1.00 reads "<0.01" or ">0.99", since no
  // screening score is certain.
  const fmtProb = (p) => ({ "0.00": "<0.01", "1.00": ">0.99" })[p.toFixed(2)] || p.toFixed(2);
  const hasInterval = (s) => s.probability_low !== null && s.probability_low !== undefined;
  // A score's probability with its interval, as moodstream.wire.interval_text writes it: "0.72 (0.61–0.80)".
  const intervalText = (s) => fmtProb(s.probability) +
    (hasInterval(s) ? " (" + fmtProb(s.probability_low) + "–" + fmtProb(s.probability_high) + ")" : "");
  const percent = (level) => Math.round(level * 100) + "%";
  const fmtThreshold = (t) => t.toFixed(2);
  const shortVersion = (v) => (v && v.length > 14 ? v.slice(0, 12) + "…" : v || "–");
  const clock = (t) => new Date(t * 1000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const hhmm = (t) => new Date(t * 1000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  const dateTime = (t) => new Date(t * 1000).toLocaleString();
  const day = (t) => new Date(t * 1000).toLocaleDateString(undefined,
    { weekday: "short", year: "numeric", month: "short", day: "numeric" });
  const shortDay = (t) => new Date(t * 1000).toLocaleDateString(undefined, { month: "short", day: "numeric" });

  // A time on the session clock: m:ss, or h:mm:ss past an hour.
  function sessionTime(seconds) {
    const s = Math.max(0, Math.round(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = String(s % 60).padStart(2, "0");
    return h ? h + ":" + String(m).padStart(2, "0") + ":" + r : m + ":" + r;
  }

  // A length of time, to the second below an hour: also how much speech there is.
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

  // A table cell that names its column, so that narrow screens can show rows as labelled cards.
  const cell = (label, props, ...children) => el("td", Object.assign({ "data-label": label }, props), ...children);
  const segmentCount = (n) => n + (n === 1 ? " segment" : " segments");

  // How much speech a label needs and how much a score had: "label after 3 segments / 21 s; 1 segment / 7 s
  // so far". `rule` is the model's evidence rule ({segments, seconds}), null where the server has not said.
  function evidenceText(score, rule) {
    const sofar = segmentCount(score.segments) + " / " + duration(score.speech_seconds) + " so far";
    if (!rule) return "label after more speech; " + sofar;
    return "label after " + segmentCount(rule.segments) + " / " + duration(rule.seconds) + "; " + sofar;
  }

  // A score below the checkpoint's evidence rule carries no label; its probability is still shown, and how
  // much speech it had against how much a label needs.
  function labelBadge(score, model) {
    if (score.evidence_sufficient === false) {
      return el("span", { class: "label-text" }, el("span", { class: "badge collecting", text: "collecting speech" }),
        " ", el("span", { class: "evidence", text: evidenceText(score, model && model.evidence) }));
    }
    const above = score.above_threshold;
    return el("span", { class: "badge " + (above ? "above" : "below"),
      text: (above ? "above" : "below") + " threshold " + fmtThreshold(score.threshold) });
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

  // Rebuilds `node` from `build()` only when `key` (its content's inputs) changed since the last time, so a
  // "details" a reader opened stays open while the same message is rendered again.
  function replaceWhenChanged(node, key, build) {
    const text = JSON.stringify(key);
    if (node.dataset.renderedFrom === text) return;
    node.dataset.renderedFrom = text;
    node.replaceChildren(...build());
  }

  // ------------------------------------------------------------ session states
  const STATE_CLASS = { streaming: "ok", idle: "idle", finished: "done", interrupted: "warn" };
  const STATE_HELP = {
    streaming: "scores are arriving",
    idle: "the session is open but no score came for a while (no speech kept, or the agent paused)",
    finished: "the agent ended the session: no more speech will come",
    interrupted: "the agent's stream closed without ending the session; it may still resume",
  };

  function stateText(summary) {
    const since = summary.state_since ? hhmm(summary.state_since) : "";
    if (summary.state === "streaming") return "streaming";
    if (summary.state === "idle") return "idle since " + since;
    return summary.state + (since ? " " + since : "");
  }

  // `stale`: the dashboard cannot hear the server (or this page the dashboard) now, so the state is only
  // the last one known.
  function stateBadge(summary, stale) {
    return el("span", { class: "state " + (STATE_CLASS[summary.state] || "idle") + (stale ? " stale" : ""),
      "data-state": summary.state, title: STATE_HELP[summary.state] || "",
      text: (stale ? "last known: " : "") + stateText(summary) });
  }

  Object.assign(ms, {
    now, fmtProb, hasInterval, intervalText, percent, fmtThreshold, clock, hhmm, dateTime, day, shortDay,
    sessionTime, duration, ago, el, cell, segmentCount, evidenceText, labelBadge, modelCell, withDetails,
    replaceWhenChanged, stateBadge, byId: (id) => document.getElementById(id),
  });
})();
