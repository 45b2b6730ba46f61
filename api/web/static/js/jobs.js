/* Jobs page (/): the jobs the caller may read, newest first, with links to each job. */
"use strict";
(function () {
  const JE = window.JE;
  let rows = [];
  let next = null;

  const COLUMNS = [
    { key: "job_id", label: "Job",
      link: (j) => JE.href("/job", { id: j.job_id, cluster: j.cluster }) },
    { key: "cluster", label: "Cluster" },
    { key: "user", label: "User" },
    { key: "account", label: "Account" },
    { key: "partition", label: "Partition" },
    { key: "name", label: "Name" },
    { key: "state", label: "State" },
    { key: "start", label: "Start (UTC)", format: (v) => JE.time(v) },
    { key: "elapsed_s", label: "Elapsed", num: true, format: (v) => JE.duration(v) },
    { key: "energy_kwh", label: "kWh", num: true },
    { key: "facility_energy_kwh", label: "Facility kWh", num: true },
    { key: "co2e_kg", label: "kg CO2e", num: true },
    { key: "model", label: "Model" },
    { key: "phase", label: "Phase" },
    { key: "coverage", label: "Coverage", num: true, value: (j) => j.quality.coverage,
      format: (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(0) + " %") },
  ];

  function query(form) {
    const v = JE.values(form);
    const win = JE.window(v);
    return { cluster: v.cluster, job_id: v.job_id, user: v.user, account: v.account,
      state: v.state, start: win.start, end: win.end, limit: 100 };
  }

  async function load(form, more) {
    const params = query(form);
    if (more && next) params.after = next;
    const page = await JE.api("/api/v1/jobs", params);
    rows = more ? rows.concat(page.jobs) : page.jobs;
    next = page.next || null;
    JE.table(document.getElementById("jobs-table"), COLUMNS, rows, "no jobs match");
    const total = page.total_exact === false ? `at least ${page.total}` : String(page.total);
    document.getElementById("jobs-count").textContent = `${rows.length} of ${total} jobs`;
    document.getElementById("more").classList.toggle("hidden", !next);
  }

  JE.page("jobs", async () => {
    const form = document.getElementById("filters");
    await JE.fillClusters(form.elements.cluster, true);
    JE.bindFilters(form, { period: "30d" }, () => JE.run(() => load(form, false)));
    document.getElementById("more").onclick = () => JE.run(() => load(form, true));
    await load(form, false);
  });
})();
