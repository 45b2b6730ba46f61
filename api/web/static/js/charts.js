/* jobenergy pages: uPlot time and bar charts.
 *
 * Every chart is kept in JE.charts[name] (its uPlot object: series, data, axes) and its
 * container gets data-chart=name, so a test can read what was drawn.
 */
"use strict";
(function () {
  const JE = window.JE;
  const PALETTE = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989",
    "#0a7ea4", "#6e7781", "#e16f24", "#4c2889", "#116329", "#953800"];
  const BAND_FILL = { training: "rgba(31,111,235,0.12)", inference: "rgba(26,127,55,0.14)",
    other: "rgba(154,103,0,0.12)" };
  JE.color = (i) => PALETTE[i % PALETTE.length];
  JE.charts = {};

  function widthOf(el) {
    return Math.max(300, Math.floor(el.clientWidth || el.parentElement.clientWidth) - 16);
  }

  function register(name, el, u) {
    if (JE.charts[name] && JE.charts[name] !== u) JE.charts[name].destroy();
    JE.charts[name] = u;
    u.jeContainer = el;
    el.dataset.chart = name;
  }

  window.addEventListener("resize", () => {
    for (const u of Object.values(JE.charts)) {
      if (u.jeContainer && u.jeContainer.isConnected) {
        u.setSize({ width: widthOf(u.jeContainer), height: u.height });
      }
    }
  });

  const utc = (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");

  /** Time tick labels in UTC, ISO-like: the date on the first tick and where it changes. */
  function timeTicks(u, splits, axisIdx, space, incr) {
    let day = null;
    return splits.map((ts) => {
      const iso = new Date(ts * 1000).toISOString();
      const date = iso.slice(0, 10);
      const clock = incr < 60 ? iso.slice(11, 19) : iso.slice(11, 16);
      if (incr >= 86400) return date;
      const label = date !== day ? `${clock}\n${date}` : clock;
      day = date;
      return label;
    });
  }

  /** Shade [start, end) spans of the x axis (job phases) under the series. */
  function bandsPlugin(bands) {
    return {
      hooks: {
        drawClear: [(u) => {
          const ctx = u.ctx;
          const dpr = window.devicePixelRatio || 1;
          ctx.save();
          for (const band of bands) {
            const x0 = u.valToPos(band.start, "x", true);
            const x1 = u.valToPos(band.end, "x", true);
            const left = Math.max(u.bbox.left, Math.min(x0, x1));
            const right = Math.min(u.bbox.left + u.bbox.width, Math.max(x0, x1));
            if (!(right > left)) continue;
            ctx.fillStyle = BAND_FILL[band.phase] || BAND_FILL.other;
            ctx.fillRect(left, u.bbox.top, right - left, u.bbox.height);
            ctx.fillStyle = "#3b4352";
            ctx.font = `${11 * dpr}px sans-serif`;
            ctx.fillText(band.label, left + 4 * dpr, u.bbox.top + 13 * dpr);
          }
          ctx.restore();
        }],
      },
    };
  }

  /**
   * A line chart over time (x: epoch seconds, shown in UTC).
   *
   * o: {title, t, series: [{label, values, unit, scale}], axes: [{scale, label, unit}] (the
   * first is the left axis), bands: [{start, end, phase, label}], height}
   */
  JE.timeChart = function (el, name, o) {
    const axesIn = o.axes || [{ scale: "y", label: o.yLabel || "" }];
    const scales = { x: { time: true } };
    for (const a of axesIn) scales[a.scale] = { auto: true, range: a.range };
    const series = [{ label: "time (UTC)", value: (u, v) => (v === null ? "–" : JE.time(v)) }];
    o.series.forEach((s, i) => {
      const unit = s.unit ? " " + s.unit : "";
      series.push({
        label: s.label,
        scale: s.scale || axesIn[0].scale,
        stroke: s.color || JE.color(i),
        dash: s.dash,
        width: 1.5,
        spanGaps: false,
        points: { show: o.t.length < 3 },
        value: (u, v) => (v === null || v === undefined ? "–" : JE.fmt(v) + unit),
      });
    });
    const axes = [{ label: "time (UTC)", labelSize: 20, values: timeTicks, size: 60, space: 90 }];
    axesIn.forEach((a, i) => {
      axes.push({ scale: a.scale, label: a.label, side: i === 0 ? 3 : 1, labelSize: 20,
        size: 80, grid: { show: i === 0 }, values: (u, vals) => vals.map((v) => JE.fmt(v)) });
    });
    el.replaceChildren();
    const u = new uPlot({
      title: o.title,
      width: widthOf(el),
      height: o.height || 300,
      tzDate: utc,
      scales,
      series,
      axes,
      plugins: o.bands && o.bands.length ? [bandsPlugin(o.bands)] : [],
    }, [o.t, ...o.series.map((s) => s.values)], el);
    u.jeBands = o.bands || [];
    register(name, el, u);
    return u;
  };

  /**
   * Grouped bars: one group per category, one bar per series in it (side by side).
   *
   * The x axis holds (series + 1) slots per category: slot j of category i is series j's
   * bar, the last slot is the gap between groups. A series is null in the other slots, so a
   * missing value (a model without inference jobs) draws no bar.
   *
   * o: {title, categories, series: [{label, values, color}], yLabel, unit, height}
   */
  JE.barChart = function (el, name, o) {
    const n = o.categories.length;
    const k = o.series.length;
    const stride = k + 1;
    const x = Array.from({ length: n * stride }, (_, i) => i);
    const data = [x];
    const unit = o.unit ? " " + o.unit : "";
    let max = 0;
    o.series.forEach((s, j) => {
      const column = new Array(n * stride).fill(null);
      s.values.forEach((v, i) => {
        if (v !== null && v !== undefined) {
          column[i * stride + j] = v;
          max = Math.max(max, v);
        }
      });
      data.push(column);
    });
    const centers = o.categories.map((_, i) => i * stride + (k - 1) / 2);
    const category = (v) => o.categories[Math.floor(Math.round(v) / stride)];
    const bars = uPlot.paths.bars({ size: [0.9, 80], align: 0 });
    const series = [{ label: o.categoryLabel || "group",
      value: (u, v) => (v === null ? "–" : category(v)) }];
    o.series.forEach((s, j) => {
      series.push({
        label: s.label,
        stroke: s.color || JE.color(j),
        fill: s.color || JE.color(j),
        width: 1,
        paths: bars,
        points: { show: false },
        value: (u, v) => (v === null || v === undefined ? "–" : JE.fmt(v) + unit),
      });
    });
    el.replaceChildren();
    const rotate = n > 6 || o.categories.some((c) => String(c).length > 14);
    const u = new uPlot({
      title: o.title,
      width: widthOf(el),
      height: o.height || 280,
      scales: {
        x: { time: false, range: () => [-0.8, Math.max(1, n * stride - 1.2)] },
        y: { range: () => [0, max > 0 ? max * 1.08 : 1] },
      },
      series,
      axes: [
        { splits: () => centers, values: (u, splits) => splits.map(category),
          rotate: rotate ? -30 : 0, size: rotate ? 90 : 40, grid: { show: false } },
        { label: o.yLabel, labelSize: 20, size: 80,
          values: (u, vals) => vals.map((v) => JE.fmt(v)) },
      ],
      legend: { live: true },
      cursor: { points: { show: false } },
    }, data, el);
    u.jeCategories = o.categories.slice();
    u.jeStride = stride;
    register(name, el, u);
    return u;
  };

  /** Return the number of drawn (non-null) values of each series of a chart. */
  JE.counts = function (name) {
    const u = JE.charts[name];
    return u.data.slice(1).map((col) => col.filter((v) => v !== null && v !== undefined).length);
  };
})();
