// moodstream dashboard: the probability charts (uPlot on a canvas), with the decision threshold, each
// score's interval, bands behind the points, and the points drawn by kind: labelled (filled), collecting
// speech (hollow: below the evidence rule, no label yet) and scored late (an orange ring).
// Where things were drawn is written into data- attributes, so browser tests can check the geometry.
(function () {
  "use strict";

  const ms = window.moodstream;
  const { byId, fmtThreshold, hasInterval, hhmm, shortDay, now } = ms;
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
  // width); such labels are left out, the tick itself stays. The plot's left edge is uPlot's bbox, in
  // canvas pixels: uPlot lays out the axes before it moves its overlay, so the overlay's style still
  // holds the previous layout (none at all on a chart's first draw) when this runs. A margin allows for
  // text rendering.
  const LABEL_MARGIN = 2;
  function labelsInsideCanvas(format) {
    return (u, splits, ...rest) => {
      const labels = format(u, splits, ...rest);
      const plotLeft = u.bbox.left / (window.devicePixelRatio || 1);
      measurer.font = AXIS_FONT;
      return labels.map((text, i) => {
        if (text === null || text === undefined) return text;
        const x = plotLeft + u.valToPos(splits[i], "x");
        const half = measurer.measureText(String(text)).width / 2;
        return x - half >= LABEL_MARGIN && x + half <= u.width - LABEL_MARGIN ? text : null;
      });
    };
  }

  // The decision threshold as a dashed line across the plot, with its value written beside it on a light
  // backing: above the line, or below it where the line runs too near the plot's top, never across it.
  // Unlike a series it shows for a single point too.
  function drawThreshold(thresholdOf, node) {
    return (u) => {
      const threshold = thresholdOf();
      if (threshold === null || threshold === undefined) return;
      const ctx = u.ctx, ratio = window.devicePixelRatio || 1;
      const y = u.valToPos(threshold, "y", true);
      ctx.save();
      ctx.strokeStyle = "#b91c1c";
      ctx.lineWidth = 1.5 * ratio;
      ctx.setLineDash([6 * ratio, 4 * ratio]);
      ctx.beginPath();
      ctx.moveTo(u.bbox.left, y);
      ctx.lineTo(u.bbox.left + u.bbox.width, y);
      ctx.stroke();
      ctx.setLineDash([]);
      const text = "threshold " + fmtThreshold(threshold);
      ctx.font = Math.round(12 * ratio) + "px system-ui, sans-serif";
      const width = ctx.measureText(text).width, height = 15 * ratio, pad = 2 * ratio, clear = 3 * ratio;
      const right = u.bbox.left + u.bbox.width - 4 * ratio, left = right - width;
      let top = y - clear - pad - height; // the box's text rows; the backing adds `pad` around them
      if (top - pad < u.bbox.top) top = y + clear + pad;
      ctx.fillStyle = "rgba(255, 255, 255, 0.88)";
      ctx.fillRect(left - pad, top - pad, width + 2 * pad, height + 2 * pad);
      ctx.fillStyle = "#b91c1c";
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      ctx.fillText(text, left, top + height / 2);
      ctx.restore();
      // Canvas pixels of the line's row and of the label's backing box, for tests.
      node.dataset.thresholdRow = String(Math.round(y));
      node.dataset.thresholdLabel = JSON.stringify([left - pad, top - pad, right + pad, top + height + pad]
        .map(Math.round));
    };
  }

  // Where the latest points were drawn (canvas px) and of which kind, for tests.
  function recordPoints(node) {
    return (u) => {
      const drawn = [];
      for (const [index, kind] of [[2, "labelled"], [3, "collecting"]]) {
        u.data[index].forEach((value, i) => {
          if (value === null || value === undefined) return;
          drawn.push([Math.round(u.valToPos(u.data[0][i], "x", true)), Math.round(u.valToPos(value, "y", true)), kind]);
        });
      }
      node.dataset.pointsDrawn = JSON.stringify(drawn.slice(-40));
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

  // Scores at `xs`: the line through all, each point filled (labelled) or hollow (collecting speech), and
  // an orange ring around each score marked late.
  function setScores(chart, xs, scores, range) {
    const collecting = (s) => s.evidence_sufficient === false;
    const data = [xs, scores.map((s) => s.probability),
      scores.map((s) => (collecting(s) ? null : s.probability)),
      scores.map((s) => (collecting(s) ? s.probability : null))];
    if (chart.withLate) data.push(scores.map((s) => (s.late ? s.probability : null)));
    setChartData(chart, data, range);
  }

  // The session clock: at least two minutes shown, never before the session's start.
  function sessionRange(min, max) {
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
    // The line joins every score; the points on it are drawn by the series after it, by kind.
    const line = { label: options.seriesLabel, stroke: "#1d4ed8", width: 2, spanGaps: false, points: { show: false } };
    if (options.pointsOnly) line.paths = () => null;
    const size = options.pointsOnly ? 9 : 7;
    const series = [{ label: options.xLabel }, line,
      { label: "labelled", stroke: "#1d4ed8", width: 0, paths: () => null,
        points: { show: true, size: size, width: 1, stroke: "#1d4ed8", fill: "#1d4ed8", space: 0 } },
      { label: "collecting speech", stroke: "#1d4ed8", width: 0, paths: () => null,
        points: { show: true, size: size + 2, width: 2, stroke: "#1d4ed8", fill: "#ffffff", space: 0 } }];
    if (options.late) {
      series.push({ label: "scored late", stroke: "#b45309", width: 0, paths: () => null,
        points: { show: true, size: size + 5, width: 2.5, stroke: "#b45309", fill: "#ffffff", space: 0 } });
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
        draw: [drawThreshold(options.thresholdOf, node), recordXLabels(node), recordPoints(node)],
      },
    };
    const chart = new uPlot(opts, series.map(() => []), node);
    chart.withLate = Boolean(options.late);
    node.dataset.xAxis = options.xLabel;
    let pending = null;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(() => chart.setSize({ width: chartWidth(node), height: 260 }), 100);
    });
    return chart;
  }

  Object.assign(ms, { makeChart, setScores, intervalOf, showIntervalLegend, sessionRange, dayRange, dayLabels,
    chartWidth });
})();
