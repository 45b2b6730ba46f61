/* jobenergy pages: API access with the user's credentials, sign-in, header, tables, CSV.
 *
 * Users' text (job names, comments, accounts, model names) only ever reaches the page as
 * text nodes (el(), textContent): nothing here assigns innerHTML.
 *
 * Each page calls JE.page(name, render). render(me) draws the page from the API; while it runs
 * <body data-state> is "loading", then "ready" (or "error", "signin"), and data-renders counts
 * finished renders, so that a test (or a person) can tell the page has settled.
 */
"use strict";
(function () {
  const JE = (window.JE = window.JE || {});
  const STORE = "jobenergy.credential";
  const NAV = [
    ["jobs", "/", "Jobs"],
    ["leaderboards", "/leaderboards", "Leaderboards"],
    ["usage", "/usage", "Usage"],
    ["budgets", "/budgets", "Budgets"],
    ["cluster", "/cluster", "Cluster"],
    ["docs", "/docs", "API"],
  ];

  class AuthRequired extends Error {}
  JE.AuthRequired = AuthRequired;

  /** Return a new element; attrs are attributes (dataset via "data-*"), children text or nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  JE.el = el;

  // ---------------------------------------------------------------------------------------
  // Credentials and API calls

  JE.credential = function () {
    try {
      return JSON.parse(sessionStorage.getItem(STORE) || "null");
    } catch (err) {
      return null;
    }
  };

  function authHeaders() {
    const cred = JE.credential();
    if (cred && cred.kind === "jwt") {
      return { "X-SLURM-USER-NAME": cred.user, "X-SLURM-USER-TOKEN": cred.token };
    }
    if (cred && cred.kind === "token") return { Authorization: "Bearer " + cred.token };
    return {};
  }

  async function detail(resp) {
    try {
      const body = await resp.json();
      return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (err) {
      return resp.statusText;
    }
  }

  /** GET an API path with the signed-in credential; throws AuthRequired on 401. */
  JE.api = async function (path, params) {
    const url = new URL(path, window.location.origin);
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, value);
    }
    const resp = await fetch(url, {
      headers: { Accept: "application/json", ...authHeaders() },
      cache: "no-store",
    });
    if (resp.status === 401) throw new AuthRequired(await detail(resp));
    if (!resp.ok) {
      const err = new Error(`${resp.status}: ${await detail(resp)}`);
      err.status = resp.status;
      throw err;
    }
    return resp.json();
  };

  function b64urlText(part) {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "===".slice((b64.length + 3) % 4));
    return new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
  }

  /**
   * Turn what the user pasted into a credential: `scontrol token` output (SLURM_JWT=...) or a
   * bare JWT is a Slurm JWT (user: the form's, else the token's "sun" claim); anything else
   * is a jobenergy token, sent as a Bearer token.
   */
  JE.parseCredential = function (text, user) {
    let value = String(text || "").trim();
    const line = value.match(/^(?:export\s+)?SLURM_JWT=(\S+)$/);
    if (line) value = line[1];
    if (!value) throw new Error("paste a Slurm JWT (scontrol token) or a jobenergy token");
    if (/\s/.test(value)) throw new Error("a token has no spaces: paste one token");
    if (/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/.test(value)) {
      let sun = null;
      try {
        sun = JSON.parse(b64urlText(value.split(".")[1])).sun || null;
      } catch (err) {
        sun = null;
      }
      const name = String(user || "").trim() || sun;
      if (!name) throw new Error("this JWT names no user (sun): type the user name");
      return { kind: "jwt", user: name, token: value };
    }
    return { kind: "token", token: value };
  };

  // ---------------------------------------------------------------------------------------
  // Page frame: header, identity, sign-in, state

  function setState(state) {
    document.body.dataset.state = state;
    if (state === "ready") {
      document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
    }
  }
  JE.setState = setState;

  function buildHeader(current) {
    const header = document.querySelector("header.top");
    const nav = el("nav", { "aria-label": "pages" });
    for (const [name, href, label] of NAV) {
      nav.append(el("a", { href, "aria-current": name === current ? "page" : null }, label));
    }
    header.replaceChildren(el("span", { class: "brand" }, "jobenergy"), nav,
      el("span", { class: "who", id: "who" }));
  }

  function showIdentity(me) {
    const who = document.getElementById("who");
    const text = me.mechanism === "none"
      ? "authentication off (demo)"
      : `${me.user || me.identity} (${me.mechanism}${me.reads_all ? ", reads all" : ""})`;
    who.replaceChildren(el("span", { id: "identity" }, text));
    if (JE.credential()) {
      const out = el("button", { type: "button", class: "secondary", id: "signout" }, "Sign out");
      out.addEventListener("click", () => {
        sessionStorage.removeItem(STORE);
        window.location.reload();
      });
      who.append(out);
    }
  }

  function showSignIn(reason, retry) {
    document.getElementById("content").classList.add("hidden");
    let box = document.getElementById("signin");
    if (!box) {
      const token = el("textarea", { id: "signin-token", name: "token", required: true,
        autocomplete: "off", spellcheck: "false",
        placeholder: "SLURM_JWT=eyJhbGciOi...   or   jobenergy token" });
      const user = el("input", { id: "signin-user", name: "user", autocomplete: "username",
        placeholder: "from the JWT when empty" });
      box = el("form", { id: "signin", class: "panel" },
        el("h1", {}, "Sign in"),
        el("p", { class: "muted" },
          "Paste the output of ", el("code", {}, "scontrol token"),
          " (a Slurm JWT) or a jobenergy token. It is kept in this tab only (sessionStorage) " +
          "and sent with each request to this server."),
        el("p", { class: "error", id: "signin-error" }),
        el("label", { for: "signin-token" }, "Token"), token,
        el("label", { for: "signin-user" }, "User name (Slurm JWT only)"), user,
        el("p", {}, el("button", { type: "submit", id: "signin-submit" }, "Sign in")));
      box.addEventListener("submit", (event) => {
        event.preventDefault();
        try {
          const cred = JE.parseCredential(token.value, user.value);
          sessionStorage.setItem(STORE, JSON.stringify(cred));
        } catch (err) {
          document.getElementById("signin-error").textContent = err.message;
          return;
        }
        box.classList.add("hidden");
        retry();
      });
      document.querySelector("main").prepend(box);
    }
    box.classList.remove("hidden");
    const stored = JE.credential();
    document.getElementById("signin-error").textContent =
      stored ? `Signed-in credential refused: ${reason}` : reason;
    if (stored) sessionStorage.removeItem(STORE);
    setState("signin");
  }

  /** Show an error in the page's error line. */
  JE.fail = function (err) {
    console.error(err);
    const line = document.getElementById("error");
    if (line) line.textContent = err && err.message ? err.message : String(err);
    setState("error");
  };

  /** Run ``render`` (async) with the state shown; sign-in on 401. */
  JE.run = async function (render) {
    setState("loading");
    const line = document.getElementById("error");
    if (line) line.textContent = "";
    try {
      await render();
      setState("ready");
    } catch (err) {
      if (err instanceof AuthRequired) showSignIn(err.message, JE.boot);
      else JE.fail(err);
    }
  };

  /** Register the page: header, who am I (sign-in when needed), then render(me). */
  JE.page = function (name, render) {
    JE.boot = function () {
      JE.run(async () => {
        const me = await JE.api("/api/v1/whoami");
        JE.me = me;
        showIdentity(me);
        document.getElementById("content").classList.remove("hidden");
        await render(me);
      });
    };
    document.addEventListener("DOMContentLoaded", () => {
      buildHeader(name);
      JE.boot();
    });
  };

  // ---------------------------------------------------------------------------------------
  // Filters: form fields <-> the page's query string

  JE.params = () => new URLSearchParams(window.location.search);

  /**
   * Fill ``form``'s fields from the query string (or ``defaults``), and on each change write
   * them back to it (history.replaceState) and call ``onChange``.
   */
  JE.bindFilters = function (form, defaults, onChange) {
    const params = JE.params();
    for (const field of form.elements) {
      if (!field.name) continue;
      const value = params.has(field.name) ? params.get(field.name) : defaults[field.name];
      if (value !== undefined && value !== null) field.value = value;
    }
    const update = () => {
      const next = new URLSearchParams(JE.params());
      for (const field of form.elements) {
        if (!field.name) continue;
        if (field.value) next.set(field.name, field.value);
        else next.delete(field.name);
      }
      window.history.replaceState(null, "", "?" + next.toString());
      onChange();
    };
    if (form.dataset.bound) return; // a second boot (after signing in again)
    form.dataset.bound = "true";
    form.addEventListener("change", update);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      update();
    });
  };

  /** Return the field values of ``form`` by name. */
  JE.values = function (form) {
    const out = {};
    for (const field of form.elements) if (field.name) out[field.name] = field.value;
    return out;
  };

  const PERIOD_S = { "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400,
    "365d": 365 * 86400 };

  /** Return {start, end} (ISO or null) of a period (1h, 24h, 7d, 30d, 365d, all) or from/to dates. */
  JE.window = function (values) {
    if (values.from || values.to) {
      const end = values.to ? new Date(Date.parse(values.to + "T00:00:00Z") + 86400e3) : null;
      return {
        start: values.from ? values.from + "T00:00:00Z" : null,
        end: end ? end.toISOString() : null,
      };
    }
    const span = PERIOD_S[values.period];
    return { start: span ? new Date(Date.now() - span * 1000).toISOString() : null, end: null };
  };

  /** The rolling windows the server keeps materialised (GET ...?period=). */
  const ROLLING = ["24h", "7d", "30d"];

  /** The API's span parameters: a materialised rolling window by name (answered in
   * milliseconds on a large database, as of as_of), any other span by start and end. */
  JE.spanParams = function (values) {
    if (!values.from && !values.to && ROLLING.includes(values.period)) {
      return { start: null, end: null, period: values.period };
    }
    const win = JE.window(values);
    return { start: win.start, end: win.end, period: null };
  };

  /** Fill a <select name=cluster> with the clusters the API knows ("" first when allowed). */
  JE.fillClusters = async function (select, withAll) {
    const clusters = await JE.api("/api/v1/clusters");
    const keep = select.value || JE.params().get("cluster") || "";
    const options = withAll ? [el("option", { value: "" }, "all clusters")] : [];
    for (const c of clusters) options.push(el("option", { value: c.cluster }, c.cluster));
    select.replaceChildren(...options);
    const names = clusters.map((c) => c.cluster);
    if (names.includes(keep)) select.value = keep;
    else if (!withAll && names.length) select.value = names[0];
    return clusters;
  };

  // ---------------------------------------------------------------------------------------
  // Formatting

  /** Format a number for display: at least 3 significant digits, whole numbers from 1000. */
  JE.fmt = function (x) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    const a = Math.abs(x);
    if (a === 0) return "0";
    if (a >= 1000) return x.toLocaleString("en-US", { maximumFractionDigits: 0 });
    if (a >= 100) return x.toFixed(1);
    if (a >= 10) return x.toFixed(2);
    if (a >= 1) return x.toFixed(3);
    return x.toPrecision(3);
  };

  /** Format epoch seconds or an ISO time as "YYYY-MM-DD HH:MM:SSZ" (UTC). */
  JE.time = function (value) {
    if (value === null || value === undefined || value === "") return "–";
    const ms = typeof value === "number" ? value * 1000 : Date.parse(value);
    if (Number.isNaN(ms)) return String(value);
    return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  };

  /** Return epoch seconds of an ISO time or a number (seconds). */
  JE.epoch = function (value) {
    if (value === null || value === undefined) return null;
    return typeof value === "number" ? value : Date.parse(value) / 1000;
  };

  JE.duration = function (s) {
    if (s === null || s === undefined) return "–";
    const total = Math.round(s);
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const sec = total % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
  };

  JE.UJ_PER_KWH = 3.6e12;
  JE.kwh = (uj) => (uj === null || uj === undefined ? null : uj / JE.UJ_PER_KWH);

  // ---------------------------------------------------------------------------------------
  // Tables and CSV

  function cellValue(col, row) {
    return col.value ? col.value(row) : row[col.key];
  }

  /**
   * Draw a table into ``container``. Columns: {key, label, num, value(row), format(v, row),
   * link(row) -> href}. Numeric cells carry the raw number in data-value; every cell its
   * column in data-col.
   */
  JE.table = function (container, columns, rows, empty) {
    if (!rows.length) {
      container.replaceChildren(el("p", { class: "muted" }, empty || "nothing to show"));
      return null;
    }
    const head = el("tr", {}, columns.map((c) => el("th", { class: c.num ? "num" : null }, c.label)));
    const body = rows.map((row) => el("tr", {}, columns.map((col) => {
      const value = cellValue(col, row);
      const text = col.format ? col.format(value, row)
        : col.num ? JE.fmt(value) : (value === null || value === undefined ? "–" : value);
      const td = el("td", { class: col.num ? "num" : null, "data-col": col.key,
        "data-value": col.num && value !== null && value !== undefined ? value : null });
      const href = col.link ? col.link(row) : null;
      td.append(href ? el("a", { href }, text) : text);
      return td;
    })));
    const table = el("table", { class: "data" }, el("thead", {}, head), el("tbody", {}, body));
    container.replaceChildren(table);
    return table;
  };

  /** Return one CSV cell; text starting with = + - @ (or tab, CR) gets a leading '. */
  JE.csvCell = function (value) {
    if (value === null || value === undefined) return "";
    let text = String(value);
    // Spreadsheets run such a cell as a formula (CSV injection): make it text.
    if (typeof value !== "number" && /^[=+\-@\t\r]/.test(text)) text = "'" + text;
    if (/[",\r\n]/.test(text)) text = '"' + text.replace(/"/g, '""') + '"';
    return text;
  };

  /** Return the CSV of ``rows`` with ``columns`` (raw values, not the formatted ones). */
  JE.csv = function (columns, rows) {
    const lines = [columns.map((c) => JE.csvCell(c.label))];
    for (const row of rows) lines.push(columns.map((c) => JE.csvCell(cellValue(c, row))));
    return lines.map((cells) => cells.join(",")).join("\r\n") + "\r\n";
  };

  /** Offer ``text`` as a file download (made here, nothing is fetched). */
  JE.download = function (filename, text, type) {
    const url = URL.createObjectURL(new Blob([text], { type: type || "text/csv;charset=utf-8" }));
    const link = el("a", { href: url, download: filename, class: "hidden" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  };

  /** Return a page link with query parameters (values encoded, never markup). */
  JE.href = function (path, params) {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) query.set(k, v);
    return `${path}?${query.toString()}`;
  };
})();
