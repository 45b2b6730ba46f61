/* Cluster page: measured, attributed and unattributed energy per node (operators and
 * admins: the API's /nodes), a node's power over time, and the cluster's power, PUE and
 * carbon intensity over time. */
"use strict";
(function () {
  const JE = window.JE;
  const IT = ["cpu", "dram", "gpu"];
  const MAX_WINDOW_MS = 31 * 86400e3;
  const COMPONENT_DASH = { cpu: undefined, dram: [2, 3], gpu: [8, 4], psys: [1, 6] };
  const KIND_COLOR = { measured: "#6e7781", attributed: "#1f6feb", unattributed: "#d1242f" };

  const inSelection = (component, selected) =>
    (selected === "it" ? IT.includes(component) : component === selected);

  function showFactors(cfg) {
    const el = JE.el;
    const box = document.getElementById("cluster-stats");
    if (!cfg) {
      box.replaceChildren();
      return;
    }
    // With a series, the value shown holds outside it; the chart below has the series.
    const note = (s, source) => (s
      ? `${source} outside a series of ${s.points} steps, ${JE.time(s.start)} – ${JE.time(s.end)}`
      : source);
    box.replaceChildren(
      el("div", { "data-stat": "pue" }, el("dt", {}, "PUE"),
        el("dd", {}, cfg.pue.value.toFixed(2),
          el("small", {}, note(cfg.pue.series, cfg.pue.source)))),
      el("div", { "data-stat": "carbon" }, el("dt", {}, "Carbon intensity"),
        el("dd", {}, `${JE.fmt(cfg.carbon.g_per_kwh)} g/kWh`,
          el("small", {}, note(cfg.carbon.series, cfg.carbon.label || cfg.carbon.source)))));
  }

  async function showNodes(v, cluster) {
    const note = document.getElementById("nodes-note");
    const chartBox = document.getElementById("nodes-chart");
    note.textContent = "";
    let listing;
    try {
      listing = await JE.api("/api/v1/nodes", { cluster });
    } catch (err) {
      if (err.status === 403) {
        note.textContent = `Per-node energy is for operators and admins (${err.message}).`;
        chartBox.classList.add("hidden");
        document.getElementById("nodes-table").replaceChildren();
        return null;
      }
      throw err;
    }
    const times = (key) => listing.nodes.map((r) => r[key]).filter((x) => x).map(Date.parse);
    const extent = times("first_at").length
      ? { first: Math.min(...times("first_at")), last: Math.max(...times("last_at")) } : null;
    const rows = listing.nodes.filter((r) => inSelection(r.component, v.component));
    const nodes = [...new Set(rows.map((r) => r.node))].sort();
    const sum = (node, key) => rows.filter((r) => r.node === node)
      .reduce((acc, r) => acc + r[key], 0);
    if (nodes.length) {
      chartBox.classList.remove("hidden");
      JE.barChart(chartBox, "nodes", {
        title: "Energy per node",
        categories: nodes,
        categoryLabel: "node",
        series: ["measured", "attributed", "unattributed"].map((kind) => ({
          label: kind, color: KIND_COLOR[kind],
          values: nodes.map((node) => JE.kwh(sum(node, `${kind}_uj`))),
        })),
        yLabel: "kWh",
        unit: "kWh",
      });
    } else {
      chartBox.classList.add("hidden");
    }
    const table = rows.map((r) => ({ ...r,
      measured_kwh: JE.kwh(r.measured_uj), attributed_kwh: JE.kwh(r.attributed_uj),
      unattributed_kwh: JE.kwh(r.unattributed_uj),
      attributed_share: r.measured_uj ? r.attributed_uj / r.measured_uj : null }))
      .sort((a, b) => a.node.localeCompare(b.node) || a.component.localeCompare(b.component));
    JE.table(document.getElementById("nodes-table"), [
      { key: "node", label: "Node",
        link: (r) => JE.href("/cluster", { ...v, cluster, node: r.node }) },
      { key: "component", label: "Component" },
      { key: "measured_kwh", label: "Measured kWh", num: true },
      { key: "attributed_kwh", label: "Attributed kWh", num: true },
      { key: "unattributed_kwh", label: "Unattributed kWh", num: true },
      { key: "attributed_share", label: "Attributed", num: true,
        format: (x) => (x === null ? "–" : (100 * x).toFixed(1) + " %") },
      { key: "intervals", label: "Intervals", num: true, format: (x) => String(x) },
      { key: "first_at", label: "First (UTC)", format: (x) => JE.time(x) },
      { key: "last_at", label: "Last (UTC)", format: (x) => JE.time(x) },
    ], table, "no node has sent energy for these components");
    const refusals = listing.refusals || [];
    document.getElementById("refusals").classList.toggle("hidden", !refusals.length);
    JE.table(document.getElementById("refusals-table"), [
      { key: "node", label: "Node" }, { key: "refused", label: "Refused", num: true },
      { key: "conflicts", label: "Conflicts", num: true },
      { key: "last_status", label: "Last status" }, { key: "last_reason", label: "Last reason" },
      { key: "last_at", label: "Last (UTC)", format: (x) => JE.time(x) },
    ], refusals);
    return extent;
  }

  /**
   * Return the window of the series: the period's, or without one the nodes' data (first to
   * last interval), at most the 31 days the series endpoints answer for.
   */
  function seriesWindow(win, extent) {
    let start = win.start ? Date.parse(win.start) : null;
    let end = win.end ? Date.parse(win.end) : null;
    if (start === null && end === null && extent) {
      start = extent.first;
      end = extent.last;
    }
    const last = end === null ? Date.now() : end;
    if (start !== null && last - start > MAX_WINDOW_MS) start = last - MAX_WINDOW_MS;
    const iso = (ms) => (ms === null ? null : new Date(ms).toISOString());
    return { start: iso(start), end: iso(end) };
  }

  async function optional(path, params, note) {
    try {
      return await JE.api(path, params);
    } catch (err) {
      if (err.status === 404 || err.status === 403) {
        note.textContent = err.message;
        return null;
      }
      throw err;
    }
  }

  async function showNode(v, cluster, win) {
    const box = document.getElementById("node-detail");
    const node = JE.params().get("node");
    box.classList.toggle("hidden", !node);
    if (!node) return;
    document.getElementById("node-title").textContent = `Node ${node}: power over time`;
    const chart = document.getElementById("node-chart");
    const note = document.getElementById("series-note");
    const series = await optional(`/api/v1/nodes/${encodeURIComponent(node)}/series`,
      { cluster, step: v.step, start: win.start, end: win.end }, note);
    if (!series) return;
    const half = (series.step_s || 0) / 2;
    const lines = series.lines.filter((l) => inSelection(l.component, v.component));
    JE.timeChart(chart, "node", {
      title: `${node}: measured, attributed and unattributed power`,
      t: series.t.map((x) => x + half),
      series: lines.map((l) => ({ label: `${l.kind} ${l.component}`, values: l.power_w,
        unit: "W", color: KIND_COLOR[l.kind], dash: COMPONENT_DASH[l.component] })),
      axes: [{ scale: "W", label: "power (W)" }],
    });
  }

  async function showSeries(v, cluster, win) {
    const note = document.getElementById("series-note");
    note.textContent = "";
    const series = await optional(`/api/v1/clusters/${encodeURIComponent(cluster)}/series`,
      { step: v.step, start: win.start, end: win.end }, note);
    const power = document.getElementById("cluster-power-chart");
    const factors = document.getElementById("factors-chart");
    power.classList.toggle("hidden", !series);
    factors.classList.toggle("hidden", !series);
    if (!series) return;
    const t = series.t.map((x) => x + (series.step_s || 0) / 2);
    JE.timeChart(power, "cluster-power", {
      title: "IT and facility power",
      t,
      series: [
        { label: "IT power", values: series.power_w, unit: "W" },
        { label: "facility power", values: series.facility_power_w, unit: "W" },
      ],
      axes: [{ scale: "W", label: "power (W)" }],
    });
    JE.timeChart(factors, "factors", {
      title: "PUE and carbon intensity",
      t,
      series: [
        { label: "PUE", values: series.pue, scale: "pue" },
        { label: "carbon intensity", values: series.carbon_g_per_kwh, scale: "co2",
          unit: "g/kWh" },
      ],
      // PUE from 1, carbon from 0: the two lines do not sit on top of each other.
      axes: [
        { scale: "pue", label: "PUE", range: (u, min, max) => [1, Math.max(2, max * 1.1)] },
        { scale: "co2", label: "g CO2e/kWh",
          range: (u, min, max) => [0, Math.max(1, max) * 1.6] },
      ],
    });
    note.textContent = `${t.length} buckets of ${series.step_s} s, ` +
      `${JE.time(series.start)} – ${JE.time(series.end)}.`;
  }

  JE.page("cluster", async () => {
    const form = document.getElementById("filters");
    const clusters = await JE.fillClusters(form.elements.cluster, false);
    const load = async () => {
      const v = JE.values(form);
      const cluster = v.cluster;
      document.getElementById("cluster-title").textContent =
        cluster ? `Cluster ${cluster}` : "Cluster";
      if (!cluster) throw new Error("No cluster has data yet.");
      showFactors(clusters.find((c) => c.cluster === cluster));
      const extent = await showNodes(v, cluster);
      const win = seriesWindow(JE.window(v), extent);
      await showNode(v, cluster, win);
      await showSeries(v, cluster, win);
    };
    JE.bindFilters(form, { period: "7d", component: "it" }, () => JE.run(load));
    await load();
  });
})();
