/* Usage page: energy per user, account or partition over a period, as a chart and a table,
 * with a CSV of the same rows (made in the page; text cells that a spreadsheet would run as
 * a formula are prefixed with '). */
"use strict";
(function () {
  const JE = window.JE;
  let current = { rows: [], columns: [], groupBy: "user" };

  function columns(groupBy) {
    return [
      { key: "group", label: groupBy, value: (r) => (r.group === null ? "(none)" : r.group) },
      { key: "jobs", label: "jobs", num: true, format: (v) => String(v) },
      { key: "energy_kwh", label: "kWh", num: true },
      { key: "gpu_energy_kwh", label: "GPU kWh", num: true },
      { key: "facility_energy_kwh", label: "facility kWh", num: true },
      { key: "co2e_kg", label: "kg CO2e", num: true },
      { key: "gpu_hours", label: "GPU hours", num: true },
    ];
  }

  async function load(form) {
    const v = JE.values(form);
    const win = JE.window(v);
    const span = JE.spanParams(v);
    const rows = await JE.api("/api/v1/summary", {
      group_by: v.group_by, cluster: v.cluster, phase: v.phase, start: span.start,
      end: span.end, period: span.period,
    });
    const cols = columns(v.group_by);
    current = { rows, columns: cols, groupBy: v.group_by, window: win };
    const box = document.getElementById("usage-chart");
    if (rows.length) {
      box.classList.remove("hidden");
      JE.barChart(box, "usage", {
        title: `Energy per ${v.group_by}`,
        categoryLabel: v.group_by,
        categories: rows.map((r) => (r.group === null ? "(none)" : r.group)),
        series: [
          { label: "kWh (cpu + dram + gpu)", values: rows.map((r) => r.energy_kwh) },
          { label: "GPU kWh", values: rows.map((r) => r.gpu_energy_kwh) },
        ],
        yLabel: "kWh",
        unit: "kWh",
      });
    } else {
      box.classList.add("hidden");
    }
    JE.table(document.getElementById("usage-table"), cols, rows, "no jobs in this period");
    document.getElementById("csv").disabled = !rows.length;
  }

  /** Return the CSV of the rows shown (also what the download button saves). */
  JE.usageCsv = () => JE.csv(current.columns, current.rows);

  JE.page("usage", async () => {
    const form = document.getElementById("filters");
    await JE.fillClusters(form.elements.cluster, true);
    JE.bindFilters(form, { period: "30d", group_by: "user" }, () => JE.run(() => load(form)));
    document.getElementById("csv").onclick = () => {
      const day = new Date().toISOString().slice(0, 10);
      JE.download(`jobenergy-usage-per-${current.groupBy}-${day}.csv`, JE.usageCsv());
    };
    await load(form);
  });
})();
