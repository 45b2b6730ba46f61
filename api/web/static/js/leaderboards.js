/* Leaderboards page: per model, training and inference side by side: kWh per job, J per
 * sample, kg CO2e; a table of every (model, phase). */
"use strict";
(function () {
  const JE = window.JE;
  const PHASES = ["training", "inference", "other"];
  const PHASE_COLOR = { training: "#1f6feb", inference: "#1a7f37", other: "#9a6700" };
  const METRICS = [
    { chart: "kwh", box: "kwh-chart", key: "mean_energy_kwh", title: "kWh per job (mean)",
      unit: "kWh" },
    { chart: "jps", box: "jps-chart", key: "j_per_sample", title: "J per sample", unit: "J" },
    { chart: "co2", box: "co2-chart", key: "co2e_kg", title: "kg CO2e (total)", unit: "kg" },
  ];
  const COLUMNS = [
    { key: "model", label: "Model" }, { key: "phase", label: "Phase" },
    { key: "jobs", label: "Jobs", num: true, format: (v) => String(v) },
    { key: "total_energy_kwh", label: "kWh", num: true },
    { key: "mean_energy_kwh", label: "kWh per job", num: true },
    { key: "median_energy_kwh", label: "Median kWh", num: true },
    { key: "j_per_sample", label: "J per sample", num: true },
    { key: "samples", label: "Samples", num: true,
      format: (v) => (v === null || v === undefined ? "–" : String(v)) },
    { key: "facility_energy_kwh", label: "Facility kWh", num: true },
    { key: "co2e_kg", label: "kg CO2e", num: true },
    { key: "gpu_hours", label: "GPU hours", num: true },
    { key: "kwh_per_gpu_hour", label: "kWh per GPU hour", num: true },
  ];

  async function load(form) {
    const v = JE.values(form);
    const span = JE.spanParams(v);
    const rows = await JE.api("/api/v1/leaderboards/models", {
      cluster: v.cluster, phase: v.phase, start: span.start, end: span.end,
      period: span.period, metric: "total_energy_kwh", limit: 1000,
    });
    const models = [...new Set(rows.map((r) => r.model))].sort();
    const phases = PHASES.filter((p) => rows.some((r) => (r.phase || "other") === p));
    const by = new Map(rows.map((r) => [`${r.model}\u0000${r.phase || "other"}`, r]));
    for (const m of METRICS) {
      const box = document.getElementById(m.box);
      if (!models.length) {
        box.replaceChildren(JE.el("p", { class: "muted" }, `${m.title}: no jobs with a model tag`));
        continue;
      }
      JE.barChart(box, m.chart, {
        title: m.title,
        categories: models,
        categoryLabel: "model",
        series: phases.map((phase) => ({
          label: phase, color: PHASE_COLOR[phase],
          values: models.map((model) => {
            const row = by.get(`${model}\u0000${phase}`);
            return row ? row[m.key] : null;
          }),
        })),
        yLabel: m.unit,
        unit: m.unit,
      });
    }
    const sorted = rows.slice().sort((a, b) => a.model.localeCompare(b.model)
      || PHASES.indexOf(a.phase || "other") - PHASES.indexOf(b.phase || "other"));
    JE.table(document.getElementById("board-table"), COLUMNS, sorted,
      "no jobs with a model tag in this period");
    // How fresh the figures are: computed now, or the server's materialisation (as_of).
    const rolled = rows.find((r) => r.source === "rollup");
    document.getElementById("board-source").textContent = !rows.length ? ""
      : rolled ? `Materialised by the server, as of ${rolled.as_of}.` : "Computed now.";
  }

  JE.page("leaderboards", async () => {
    const form = document.getElementById("filters");
    await JE.fillClusters(form.elements.cluster, true);
    JE.bindFilters(form, { period: "30d" }, () => JE.run(() => load(form)));
    await load(form);
  });
})();
