/* Job page (/job?id=ID&cluster=C): energy, facility energy, CO2e, quality, power over time
 * per component and GPU with the phases shaded, phases and steps. */
"use strict";
(function () {
  const JE = window.JE;
  const el = JE.el;
  const kwhOf = (uj) => JE.kwh(uj);

  function stat(label, value, note, key) {
    return el("div", { "data-stat": key },
      el("dt", {}, label), el("dd", {}, value, note ? el("small", {}, note) : null));
  }

  function meta(container, pairs) {
    const items = [];
    for (const [label, value] of pairs) {
      items.push(el("dt", {}, label),
        el("dd", {}, value === null || value === undefined || value === "" ? "–" : value));
    }
    container.replaceChildren(...items);
  }

  function showStats(job) {
    const q = job.quality;
    const gpu = job.by_component.gpu;
    const coverage = q.coverage === null || q.coverage === undefined
      ? "–" : (100 * q.coverage).toFixed(1) + " %";
    document.getElementById("job-stats").replaceChildren(
      stat("Energy (cpu + dram + gpu)", JE.fmt(job.energy_kwh) + " kWh",
        gpu ? `GPUs ${JE.fmt(kwhOf(gpu))} kWh` : null, "energy"),
      stat("Facility energy", JE.fmt(job.facility_energy_kwh) + " kWh",
        `PUE ${job.pue.toFixed(2)} (${job.pue_source})`, "facility"),
      stat("Emissions", JE.fmt(job.co2e_kg) + " kg CO2e",
        `${JE.fmt(job.carbon_intensity_g_per_kwh)} g/kWh (${job.carbon_intensity_source})`,
        "co2e"),
      stat("Coverage", coverage,
        `${JE.duration(q.covered_s)} measured of ${JE.duration(q.elapsed_s)}`, "coverage"),
      stat("Samples", String(q.samples), `${q.sources.length} sources`, "samples"));
    const warnings = [];
    if (q.unmeasured) warnings.push("No energy source covered this job: 0 means unknown.");
    if (q.unmeasured_nodes.length) warnings.push(`Not measured on ${q.unmeasured_nodes.join(", ")}.`);
    if (q.estimated_uj) {
      warnings.push(`${JE.fmt(kwhOf(q.estimated_uj))} kWh estimated from power ` +
        `(${q.estimated_components.join(", ")}), not from energy counters.`);
    }
    if (job.carbon_intensity_fallback) {
      warnings.push("Carbon intensity: the world average was used for some of the energy.");
    }
    if (!job.final) warnings.push("Not final: the energy may still change.");
    document.getElementById("job-warnings").textContent = warnings.join(" ");
  }

  // What the agent did about an energy limit or budget (tags only the hooks can set).
  function limitText(tags) {
    const parts = [];
    if (tags.energy_limit_uj) parts.push(`${JE.fmt(kwhOf(Number(tags.energy_limit_uj)))} kWh`);
    if (tags.energy_limit_action) parts.push(tags.energy_limit_action);
    if (tags.energy_limit_budget_id) parts.push(`budget ${tags.energy_limit_budget_id}`);
    return parts.length ? parts.join(", ") : "none";
  }

  function showMeta(job) {
    const q = job.quality;
    const tags = Object.entries(job.tags || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    meta(document.getElementById("job-meta"), [
      ["Job id", job.job_id], ["Cluster", job.cluster], ["Name", job.name],
      ["User", job.user], ["Account", job.account], ["Partition", job.partition],
      ["State", job.state], ["Exit code", job.exit_code],
      ["Nodes", job.nodes.join(", ")], ["GPUs", (job.gpus || []).join(", ")],
      ["Start", JE.time(job.start)], ["End", JE.time(job.end)],
      ["Elapsed", JE.duration(job.elapsed_s)], ["Model", job.model], ["Phase", job.phase],
      ["Tags", tags], ["Final", job.final ? "yes" : "no"],
    ]);
    meta(document.getElementById("job-quality"), [
      ["Sources", q.sources.join(", ")], ["Samples", String(q.samples)],
      ["Covered", JE.duration(q.covered_s)], ["Elapsed", JE.duration(q.elapsed_s)],
      ["Coverage", q.coverage === null ? "–" : (100 * q.coverage).toFixed(1) + " %"],
      ["Counter wraps", String(q.wraps)], ["Counter resets", String(q.resets)],
      ["Estimated", q.estimated_uj ? `${JE.fmt(kwhOf(q.estimated_uj))} kWh` : "none"],
      ["PUE", `${job.pue.toFixed(3)} (${job.pue_source})`],
      ["Carbon intensity", job.carbon_intensity_sources.join("; ")],
      ["BMC reconciled", q.bmc_reconciled
        ? `yes (${(q.bmc_nodes || []).join(", ")})` : "no"],
      ["Energy limit", limitText(job.tags || {})],
    ]);
  }

  function componentRows(job) {
    const rows = [];
    const total = job.energy_uj || 0;
    for (const node of Object.keys(job.by_node).sort()) {
      const parts = job.by_node[node];
      for (const component of Object.keys(parts).sort()) {
        const devices = job.devices.filter((d) => d.node === node && d.component === component);
        if (devices.length) {
          for (const d of devices) {
            rows.push({ node, component, source: d.source, device: d.device_name,
              kwh: kwhOf(d.energy_uj), share: total ? d.energy_uj / total : null });
          }
        } else {
          rows.push({ node, component, source: null, device: null,
            kwh: kwhOf(parts[component]), share: total ? parts[component] / total : null });
        }
      }
    }
    return rows;
  }

  const percent = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %");

  function showTables(job) {
    JE.table(document.getElementById("components-table"), [
      { key: "node", label: "Node" }, { key: "component", label: "Component" },
      { key: "source", label: "Source" }, { key: "device", label: "Device" },
      { key: "kwh", label: "kWh", num: true },
      { key: "share", label: "Share", num: true, format: percent },
    ], componentRows(job), "no energy recorded");
    JE.table(document.getElementById("phases-table"), [
      { key: "phase", label: "Phase" }, { key: "model", label: "Model" },
      { key: "start", label: "Start (UTC)", format: (v) => JE.time(v) },
      { key: "end", label: "End (UTC)", format: (v) => JE.time(v) },
      { key: "energy_kwh", label: "kWh", num: true },
      { key: "samples", label: "Samples", num: true,
        format: (v) => (v === null || v === undefined ? "–" : String(v)) },
      { key: "j_per_sample", label: "J per sample", num: true },
      { key: "metrics", label: "Metrics",
        value: (p) => Object.entries(p.metrics || {}).map(([k, v]) => `${k}=${v}`).join(", ") },
    ], job.phases, "no phases announced (in-job annotations)");
    const total = job.energy_uj || 0;
    JE.table(document.getElementById("steps-table"), [
      { key: "step", label: "Step" },
      { key: "energy_kwh", label: "kWh", num: true },
      { key: "share", label: "Share", num: true,
        value: (s) => (total ? s.energy_uj / total : null), format: percent },
      { key: "by_component", label: "Per component",
        value: (s) => Object.entries(s.by_component)
          .map(([k, v]) => `${k} ${JE.fmt(kwhOf(v))} kWh`).join(", ") },
    ], job.steps, "no step data (step cgroups' CPU time) for this job");
  }

  function lineLabel(line) {
    const source = String(line.source || "").replace(line.component + "/", "");
    return `${line.node} ${line.component} ${source}`.trim();
  }

  async function showSeries(job) {
    const note = document.getElementById("power-note");
    const box = document.getElementById("power-chart");
    let series;
    try {
      series = await JE.api(`/api/v1/jobs/${encodeURIComponent(job.job_id)}/series`,
        { cluster: job.cluster });
    } catch (err) {
      if (err.status === 404 || err.status === 405) {
        box.classList.add("hidden");
        note.textContent = `No power series: ${err.message}`;
        return;
      }
      throw err;
    }
    const half = (series.step_s || 0) / 2;
    const t = series.t.map((v) => v + half);
    const lines = series.lines.slice().sort((a, b) => lineLabel(a).localeCompare(lineLabel(b)));
    const phases = (series.phases && series.phases.length ? series.phases : job.phases) || [];
    const bands = phases.filter((p) => p.start && p.end).map((p) => ({
      start: JE.epoch(p.start), end: JE.epoch(p.end), phase: p.phase,
      label: p.model ? `${p.phase} (${p.model})` : p.phase,
    }));
    if (!t.length) {
      box.classList.add("hidden");
      note.textContent = "No intervals recorded for this job yet.";
      return;
    }
    box.classList.remove("hidden");
    JE.timeChart(box, "power", {
      title: "Power per component and GPU",
      t,
      series: lines.map((line) => ({ label: lineLabel(line), values: line.power_w, unit: "W" })),
      axes: [{ scale: "W", label: "power (W)" }],
      bands,
    });
    note.textContent = `${series.resolution || ""} buckets of ${series.step_s} s; ` +
      `${JE.fmt(kwhOf(series.energy_uj))} kWh in the window. Shaded: the job's phases.`;
  }

  JE.page("jobs", async () => {
    const params = JE.params();
    const id = params.get("id");
    if (!id) throw new Error("No job id: open a job from the Jobs page (/job?id=1001&cluster=c1).");
    const job = await JE.api(`/api/v1/jobs/${encodeURIComponent(id)}`,
      { cluster: params.get("cluster") });
    document.title = `Job ${job.job_id} - jobenergy`;
    document.getElementById("job-title").textContent =
      `Job ${job.job_id} on ${job.cluster}` + (job.name ? `: ${job.name}` : "");
    showStats(job);
    showMeta(job);
    showTables(job);
    await showSeries(job);
  });
})();
