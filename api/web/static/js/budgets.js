/* Budgets page: each budget the caller may see (GET /api/v1/budgets, which decides who sees
 * which) as a bar of used against limit, with the projection at the current rate.
 *
 * The bar's scale is the limit, or more when the use or the projection is past it (up to
 * twice the limit; beyond that the marks stop at the edge): the limit is then a tick inside
 * the bar. Sizes are set through the CSSOM (element.style), which the pages' CSP
 * (style-src 'self') allows; names (users, accounts) are text nodes only.
 */
"use strict";
(function () {
  const JE = window.JE;
  const el = JE.el;
  /** The bar's widest scale, in percent of the limit. */
  const MAX_SCALE = 200;

  const SUBMIT = {
    deny: "deny: new jobs are refused once the budget is used up",
    warn: "warn: new jobs are accepted, with a warning, once the budget is used up",
  };
  const RUNNING = {
    none: "none: running jobs are left alone",
    warn: "warn: running jobs get the warning signal at 90 % and at 100 %",
    cancel: "cancel: running jobs get the warning signal at 90 % and are cancelled at 100 %",
  };

  const unitText = (unit) => (unit === "kWh" ? "kWh" : "kg CO2e");
  const pct = (p) => `${p.toFixed(1)} %`;

  /** Return "ok", "near" (from 90 %) or "over" (from 100 %, or the API says so). */
  JE.budgetLevel = function (b) {
    if (b.over || b.percent >= 100) return "over";
    return b.percent >= 90 ? "near" : "ok";
  };

  /** Return the bar's geometry in percent of its width: scale, fill, limit, projection. */
  JE.budgetGeometry = function (b) {
    const proj = b.projection_percent;
    const scale = Math.min(MAX_SCALE, Math.max(100, b.percent, proj === null ? 0 : proj));
    const at = (p) => (100 * Math.min(p, scale)) / scale;
    return { scale, fill: at(b.percent), limit: at(100),
      projection: proj === null ? null : at(proj), beyond: proj !== null && proj > scale };
  };

  function title(b) {
    if (b.scope === "user") return `user ${b.user}`;
    if (b.scope === "account") return `account ${b.account}`;
    return `user ${b.user} in account ${b.account}`;
  }

  function state(b) {
    const now = Date.now();
    if (b.active) return "under way";
    return Date.parse(b.period_start) > now ? "not started" : "ended";
  }

  function bar(b, level) {
    const g = JE.budgetGeometry(b);
    const fill = el("div", { class: "budget-fill" });
    fill.style.width = `${g.fill}%`;
    const box = el("div", { class: "budget-bar", role: "progressbar", "aria-valuemin": 0,
      "aria-valuemax": b.limit, "aria-valuenow": b.used,
      "aria-valuetext": `${JE.fmt(b.used)} of ${JE.fmt(b.limit)} ${unitText(b.unit)}`,
      "data-level": level, "data-scale": g.scale, "data-fill": g.fill }, fill);
    if (g.scale > 100) {
      const tick = el("div", { class: "budget-limit", title: "the limit" });
      tick.style.left = `${g.limit}%`;
      box.append(tick);
    }
    if (g.projection !== null) {
      const mark = el("div", { class: "budget-projection" + (g.beyond ? " beyond" : ""),
        title: `projected at the current rate: ${pct(b.projection_percent)} of the limit`,
        "data-left": g.projection });
      mark.style.left = `${g.projection}%`;
      box.append(mark);
    }
    return box;
  }

  function row(label, field, ...text) {
    return [el("dt", {}, label), el("dd", { "data-field": field }, ...text)];
  }

  function card(b) {
    const level = JE.budgetLevel(b);
    const unit = unitText(b.unit);
    const kind = b.unit === "kWh" ? "facility energy" : "CO2e";
    const over = b.used - b.limit;
    const projection = b.projection === null ? "– (the period has not started)"
      : `${JE.fmt(b.projection)} ${unit} (${pct(b.projection_percent)} of the limit)` +
        (state(b) === "ended" ? ": the period is over" : " at the current rate");
    return el("section", { class: `card budget level-${level}`, "data-budget": b.id,
      "data-level": level },
      el("h2", {}, el("span", { "data-field": "title" }, title(b)),
        el("small", { class: "muted", "data-field": "what" },
          ` ${b.cluster} · ${b.period} · ${kind}`)),
      bar(b, level),
      el("p", { class: "budget-used" },
        el("span", { "data-field": "used" },
          `${JE.fmt(b.used)} of ${JE.fmt(b.limit)} ${unit} used`), " ",
        el("strong", { "data-field": "percent" }, pct(b.percent))),
      el("dl", { class: "meta" },
        row("remaining", "remaining", `${JE.fmt(b.remaining)} ${unit}` +
          (over > 0 ? ` (over the limit by ${JE.fmt(over)} ${unit})` : "")),
        row("period", "period", `${b.period}: ${JE.time(b.period_start)} – ` +
          `${JE.time(b.period_end)} (${state(b)})`),
        row("resets", "resets", b.resets_at ? JE.time(b.resets_at)
          : `never: a range, it ends ${JE.time(b.period_end)}`),
        row("projection", "projection", projection),
        row("at submission", "submit_policy", SUBMIT[b.submit_policy] || b.submit_policy),
        row("running jobs", "running_policy", RUNNING[b.running_policy] || b.running_policy)));
  }

  async function load(form) {
    const v = JE.values(form);
    const budgets = await JE.api("/api/v1/budgets", { cluster: v.cluster });
    JE.budgets = budgets;
    const box = document.getElementById("budgets");
    const count = document.getElementById("budgets-count");
    if (!budgets.length) {
      count.textContent = "";
      box.replaceChildren(el("p", { class: "muted" }, JE.me && JE.me.reads_all
        ? "No budgets are set." : "No budget applies to you."));
      return;
    }
    count.textContent = budgets.length === 1 ? "1 budget" : `${budgets.length} budgets`;
    box.replaceChildren(...budgets.map(card));
  }

  JE.page("budgets", async () => {
    const form = document.getElementById("filters");
    await JE.fillClusters(form.elements.cluster, true);
    JE.bindFilters(form, {}, () => JE.run(() => load(form)));
    await load(form);
  });
})();
