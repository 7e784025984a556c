// The sales-ops thresholds page: what-if simulation, proposals, saving and rolling back routing thresholds.
//
// Hooks that tests and scripts may rely on (kept stable):
//   #api-key, #api-key-apply            API key field (kept in sessionStorage) and the button that applies it
//   #grade-A #grade-B #grade-C          grade cut-offs (fit score 0-100)
//   #stage-MQL #stage-SQL               readiness cut-offs, in percent ("1.7" or "1.7 %"; the API takes probabilities)
//   #sales-reps #sales-per-rep #sdr-reps #sdr-per-rep #hours-per-week   team capacity (kept across saves and rollbacks)
//   #data-source                        "auto" | "holdout" | "recent": which scored leads to replay
//   #propose, #reset                    "Propose thresholds", "Back to the policy in force"
//   #propose-note                       what the last proposal changed
//   #status, #save-status               messages; data-kind = "info" | "ok" | "error"; #save-status data-version
//   #policy-summary                     the version in force; data-version
//   #lifecycle-table                    tbody tr[data-stage] (sql, requalified, lost, won) with td[data-field] queue,
//                                       priority, sla_hours: the routes of leads readiness does not apply to
//   #data-basis                         which data the simulation ran on and why; data-kind = "holdout" | "recent",
//                                       data-requested = what #data-source asked for
//   #queue-table                        tbody tr[data-queue] with td[data-field]; tr.overloaded when load > 100 %
//   #matrix-table                       td[data-grade][data-stage][data-queue]
//   #segment-table                      one row per segment result
//   #curve-stage                        "MQL" | "SQL": which cut-off the charts move
//   #chart-volume #chart-quality #chart-sqls   plotly charts (element.data, element.layout);
//                                       data-cutoff = where the marker stands, data-stage = the cut-off moved
//   #save-reason #save-author #save     the save form
//   #history-table                      tbody tr[data-version]; button[data-testid="rollback-<version>"]
//   #rollback-dialog                    the dialog a rollback button opens: #rollback-reason, #rollback-confirm,
//                                       #rollback-cancel, #rollback-status
//   body[data-busy]                     "true" while a request is in flight (the webhooks section's requests too)
//   window.leadscorePage                the helpers webhooks.js shares (api, el, showStatus...); "leadscore:key-applied"
//                                       is dispatched on document when a key is applied
//   body[data-simulations]              how many simulations have been drawn (grows by one per redraw)
"use strict";

(() => {
  const KEY_STORAGE = "leadscore.apiKey";
  // Dispatched on document when a key is applied, so every section of the page reloads with it.
  const KEY_EVENT = "leadscore:key-applied";
  // Typed numbers settle within a quarter second; simulating every keystroke would queue stale requests.
  const DEBOUNCE_MS = 250;
  // Readiness cut-offs are probabilities in the API and percentages on the page ("1.7 %"), rounded for reading; an
  // input left as shown keeps its exact value (see readCutoff), so saving an untouched or proposed cut-off stores
  // exactly what was loaded or what the solver judged.
  // Used when the policy in force records no capacities (a model's default policy, or one saved before them).
  const DEFAULT_CAPACITIES = {
    queues: {
      sales: { reps: 4, leads_per_rep_per_week: 25 },
      sdr: { reps: 6, leads_per_rep_per_week: 60 },
    },
    working_hours_per_week: 40,
  };
  const QUEUE_ORDER = ["sales", "sdr", "nurture", "disqualify", "owner", "customer"];
  const GRADES = ["A", "B", "C", "D"];
  const STAGES = ["SQL", "MQL", "nurture"];
  const QUEUE_COLOURS = {
    sales: "#1f6feb", sdr: "#8250df", nurture: "#2da44e", disqualify: "#8c959f", owner: "#bf8700", customer: "#0969da",
  };
  // Lifecycle stages routed by stage, not by readiness, as sales ops name them.
  const LIFECYCLE_STAGES = [
    ["sql", "SQL (opportunity)"],
    ["requalified", "Requalified (opportunity)"],
    ["lost", "Lost, not recycled"],
    ["won", "Won (customer)"],
  ];

  const $ = (id) => document.getElementById(id);
  const state = {
    loaded: null, // the PolicyVersionOut in force when last loaded
    simulation: null,
    seq: 0, // simulation requests are numbered so only the latest answer is drawn
    timer: null,
    inflight: 0,
    drawn: 0,
  };

  // ---- HTTP ----

  // `detail` is the API's own (FastAPI's detail: a string, or a 422's list of problems with their field's loc).
  class ApiError extends Error {
    constructor(status, message, detail) {
      super(message);
      this.status = status;
      this.detail = detail;
    }
  }

  function describeDetail(detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail
        .map((problem) => {
          const where = Array.isArray(problem.loc) ? problem.loc.filter((p) => p !== "body").join(".") : "";
          return where ? `${where}: ${problem.msg}` : String(problem.msg ?? JSON.stringify(problem));
        })
        .join("; ");
    }
    return detail === undefined ? "" : JSON.stringify(detail);
  }

  const STATUS_HINTS = {
    401: "Not authorised (401)",
    403: "Forbidden (403)",
    409: "Conflict (409)",
    422: "Not accepted (422)",
  };

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers["X-API-Key"] = key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    setBusy(+1);
    try {
      let response;
      try {
        response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      } catch (err) {
        throw new ApiError(0, `The service did not answer (${err.message}).`);
      }
      const text = await response.text();
      let payload = null;
      try {
        payload = text ? JSON.parse(text) : null;
      } catch {
        payload = null;
      }
      if (!response.ok) {
        const detail = describeDetail(payload && payload.detail) || text || response.statusText;
        const prefix = STATUS_HINTS[response.status] || `Error ${response.status}`;
        throw new ApiError(response.status, `${prefix}: ${detail}`, payload ? payload.detail : undefined);
      }
      return payload;
    } finally {
      setBusy(-1);
    }
  }

  function setBusy(delta) {
    state.inflight += delta;
    document.body.dataset.busy = String(state.inflight > 0);
  }

  // ---- small DOM helpers (API text always goes in as text, never as HTML) ----

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "className") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function showStatus(target, kind, message) {
    const node = $(target);
    node.textContent = message;
    node.dataset.kind = kind;
  }

  const dash = "–";
  const fmtNumber = (x, digits = 1) =>
    x === null || x === undefined ? dash : Number(x).toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });
  const fmtPct = (x, digits = 1) => (x === null || x === undefined ? dash : `${(100 * x).toFixed(digits)} %`);
  const fmtWhen = (iso) => {
    const when = new Date(iso);
    return Number.isNaN(when.getTime()) ? iso : when.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });
  };
  // The API's messages end without a full stop; a hint of ours after one reads as a new sentence.
  const withHint = (message, hint) => (hint ? `${message.replace(/[.\s]*$/, "")}. ${hint}` : message);
  // A cut-off in percent as sales ops read it: one decimal (1.7), two below 1 % (0.25), three below 0.1 %; as the
  // command line shows it.
  const percentText = (p) => {
    const percent = 100 * Number(p);
    return percent.toFixed(percent >= 1 ? 1 : percent >= 0.1 ? 2 : 3);
  };
  const fmtCutoff = (p) => `${percentText(p)} %`;

  // The page's other sections (webhooks.js, loaded after this script) call the API with the same key, busy mark and
  // error messages, and build their rows the same way.
  window.leadscorePage = Object.freeze({ api, el, showStatus, withHint, dash, KEY_EVENT });

  // ---- reading and filling the inputs ----

  function readNumber(id, label) {
    const input = $(id);
    if (input.dataset.shown !== undefined && input.value === input.dataset.shown) return Number(input.dataset.exact);
    const value = input.value.trim() === "" ? NaN : Number(input.value);
    if (!Number.isFinite(value)) {
      input.setAttribute("aria-invalid", "true");
      throw new Error(`${label} must be a number.`);
    }
    input.removeAttribute("aria-invalid");
    return value;
  }

  // A readiness cut-off typed in percent ("1.7", "1.7%", "1,7 %") as the probability the API takes.
  function readCutoff(id, label) {
    const input = $(id);
    if (input.dataset.shown !== undefined && input.value === input.dataset.shown) return Number(input.dataset.exact);
    const text = input.value.trim().replace(/\s*%$/, "").replace(",", ".");
    const percent = text === "" ? NaN : Number(text);
    if (!(percent > 0 && percent < 100)) {
      input.setAttribute("aria-invalid", "true");
      throw new Error(`${label} must be a percentage between 0 and 100, such as 1.7 or 1.7 %.`);
    }
    input.removeAttribute("aria-invalid");
    return percent / 100;
  }

  function readCapacities() {
    return {
      queues: {
        sales: { reps: readNumber("sales-reps", "Sales reps"), leads_per_rep_per_week: readNumber("sales-per-rep", "Sales leads per rep") },
        sdr: { reps: readNumber("sdr-reps", "SDR reps"), leads_per_rep_per_week: readNumber("sdr-per-rep", "SDR leads per rep") },
      },
      working_hours_per_week: readNumber("hours-per-week", "Working hours per week"),
    };
  }

  // The policy in force with the cut-offs and capacities of the inputs (matrix, SLAs and segments kept as loaded).
  function readPolicy() {
    if (!state.loaded) throw new Error("The policy in force is not loaded yet.");
    return {
      ...state.loaded.policy,
      grades: { A: readNumber("grade-A", "Grade A cut-off"), B: readNumber("grade-B", "Grade B cut-off"), C: readNumber("grade-C", "Grade C cut-off") },
      stages: { MQL: readCutoff("stage-MQL", "MQL cut-off"), SQL: readCutoff("stage-SQL", "SQL cut-off") },
      capacities: readCapacities(),
    };
  }

  function fillCutoffs(policy) {
    for (const grade of ["A", "B", "C"]) $(`grade-${grade}`).value = String(policy.grades[grade]);
    for (const stage of ["MQL", "SQL"]) {
      const input = $(`stage-${stage}`);
      input.value = percentText(policy.stages[stage]);
      input.dataset.shown = input.value;
      input.dataset.exact = String(policy.stages[stage]);
      input.removeAttribute("aria-invalid");
    }
  }

  function fillCapacities(capacities) {
    const caps = capacities || DEFAULT_CAPACITIES;
    const queue = (name) => caps.queues?.[name] || DEFAULT_CAPACITIES.queues[name];
    $("sales-reps").value = String(queue("sales").reps);
    $("sales-per-rep").value = String(queue("sales").leads_per_rep_per_week);
    $("sdr-reps").value = String(queue("sdr").reps);
    $("sdr-per-rep").value = String(queue("sdr").leads_per_rep_per_week);
    $("hours-per-week").value = String(caps.working_hours_per_week ?? DEFAULT_CAPACITIES.working_hours_per_week);
  }

  // ---- loading ----

  // Load the policy in force into the form. The team capacities are filled from it too, unless asked to keep them.
  async function loadAll({ keepCapacities = false } = {}) {
    showStatus("status", "info", "Loading the policy in force…");
    try {
      const current = await api("GET", "/v1/thresholds");
      showLoaded(current, { keepCapacities });
      showStatus("status", "info", `Loaded version ${current.version}.`);
    } catch (err) {
      showStatus("status", "error", withHint(err.message, err.status === 401 ? "Enter an API key above." : ""));
      return;
    }
    await Promise.all([loadHistory(), simulateNow()]);
  }

  function showLoaded(current, { keepCapacities }) {
    state.loaded = current;
    fillCutoffs(current.policy);
    if (!keepCapacities) fillCapacities(current.policy.capacities);
    drawSummary(current);
    drawLifecycleRoutes(current.policy);
  }

  function drawLifecycleRoutes(policy) {
    const routes = policy.lifecycle_routes || {};
    const sla = policy.sla_hours || {};
    $("lifecycle-table").tBodies[0].replaceChildren(
      ...LIFECYCLE_STAGES.filter(([stage]) => routes[stage]).map(([stage, label]) => {
        const route = routes[stage];
        const hours = sla[route.queue];
        return el(
          "tr",
          { "data-stage": stage },
          el("th", { scope: "row" }, label),
          el("td", { "data-field": "queue" }, el("span", { className: `queue-chip queue-${route.queue}` }), route.queue),
          el("td", { "data-field": "priority" }, String(route.priority)),
          el("td", { "data-field": "sla_hours" }, hours === null || hours === undefined ? "none" : String(hours)),
        );
      }),
    );
  }

  // After a save or rollback: the version the service stored is in force. It is shown as answered (another worker
  // may still serve the previous one for a second), and the teams stay as the user set them: the size of a team
  // does not change because its thresholds did.
  async function showSaved(saved) {
    showLoaded(saved, { keepCapacities: true });
    await Promise.all([loadHistory(), simulateNow()]);
  }

  function drawSummary(current) {
    const node = $("policy-summary");
    const { grades, stages } = current.policy;
    node.dataset.version = String(current.version);
    node.replaceChildren(
      el("strong", {}, `Version ${current.version}`),
      `, saved ${fmtWhen(current.created_at)} by ${current.author || "unknown"}: “${current.reason}”. `,
      `Grades A ≥ ${grades.A}, B ≥ ${grades.B}, C ≥ ${grades.C}; MQL ≥ ${fmtCutoff(stages.MQL)}, SQL ≥ ${fmtCutoff(stages.SQL)}.`,
      current.policy.segments && current.policy.segments.length
        ? ` ${current.policy.segments.length} segment rule(s) kept as they are.`
        : "",
    );
  }

  async function loadHistory() {
    try {
      const history = await api("GET", "/v1/thresholds/history");
      drawHistory(history.versions);
    } catch (err) {
      showStatus("status", "error", `History: ${err.message}`);
    }
  }

  // ---- simulation ----

  function scheduleSimulation() {
    clearTimeout(state.timer);
    state.timer = setTimeout(simulateNow, DEBOUNCE_MS);
  }

  // The policy and capacities on the form, as simulate and solve take them; null (with the reason shown) if invalid.
  // Cut-offs left as loaded are sent as no policy at all: the service then replays the version in force itself.
  function candidate() {
    try {
      const policy = readPolicy();
      const body = { capacities: readCapacities(), data: $("data-source").value };
      if (!sameCutoffs(policy, state.loaded.policy)) body.policy = policy;
      return { body, policy };
    } catch (err) {
      showStatus("status", "error", err.message);
      return null;
    }
  }

  function sameCutoffs(a, b) {
    return ["A", "B", "C"].every((g) => a.grades[g] === b.grades[g]) && ["MQL", "SQL"].every((s) => a.stages[s] === b.stages[s]);
  }

  async function simulateNow() {
    clearTimeout(state.timer);
    const seq = ++state.seq;
    const asked = candidate();
    if (asked === null) return;
    try {
      const simulation = await api("POST", "/v1/thresholds/simulate", asked.body);
      if (seq !== state.seq) return; // a newer request is on its way: its answer is the one to draw
      drawSimulation(simulation, asked.policy, asked.body.capacities);
      showStatus(
        "status",
        "info",
        simulation.policy_version !== null && simulation.policy_version !== undefined
          ? `Simulated version ${simulation.policy_version}, in force, with the capacity above.`
          : `Simulated your changes to version ${state.loaded.version} with the capacity above.`,
      );
    } catch (err) {
      if (seq === state.seq) showStatus("status", "error", err.message);
    }
  }

  function drawDataBasis(data) {
    const node = $("data-basis");
    node.dataset.kind = data.kind;
    node.dataset.requested = data.requested;
    const what = data.kind === "holdout" ? "The model’s holdout" : "Recently scored leads";
    node.replaceChildren(
      el("strong", {}, `${what}: `),
      `${data.leads.toLocaleString("en")} leads over ${fmtNumber(data.weeks)} weeks ` +
        `(${String(data.start).slice(0, 10)} to ${String(data.end).slice(0, 10)}). `,
      // The service's own words for why this data: whoever reads the figures must know what they come from.
      data.reason ? `${data.reason.charAt(0).toUpperCase()}${data.reason.slice(1)}.` : "",
    );
  }

  function drawSimulation(simulation, policy, capacities) {
    state.simulation = simulation;
    drawDataBasis(simulation.data);
    drawQueues(simulation);
    drawMatrix(simulation.matrix);
    drawSegments(simulation.segments || []);
    drawCharts(simulation, policy, capacities);
    state.drawn += 1;
    document.body.dataset.simulations = String(state.drawn);
  }

  function drawQueues(simulation) {
    const rows = [...simulation.queues].sort((a, b) => QUEUE_ORDER.indexOf(a.queue) - QUEUE_ORDER.indexOf(b.queue));
    $("queue-table").tBodies[0].replaceChildren(
      ...rows.map((q) => {
        const overloaded = q.load !== null && q.load > 1;
        return el(
          "tr",
          { "data-queue": q.queue, className: overloaded ? "overloaded" : undefined },
          el("th", { scope: "row" }, el("span", { className: `queue-chip queue-${q.queue}` }), q.queue),
          el("td", { "data-field": "weekly_leads" }, fmtNumber(q.weekly_leads)),
          el("td", { "data-field": "capacity" }, fmtNumber(q.capacity, 0)),
          el("td", { "data-field": "load", title: overloaded ? "More leads than the team can work" : undefined },
            fmtPct(q.load, 0), overloaded ? el("span", { className: "badge" }, "over capacity") : null),
          el("td", { "data-field": "expected_sqls" }, fmtNumber(q.expected_sqls)),
          el("td", { "data-field": "precision" }, fmtPct(q.precision)),
          el("td", { "data-field": "recall" }, fmtPct(q.recall)),
          el("td", { "data-field": "past_sla_weekly" }, fmtNumber(q.past_sla_weekly)),
        );
      }),
    );
    const t = simulation.totals;
    $("queue-table").tFoot.replaceChildren(
      el(
        "tr",
        { "data-queue": "worked" },
        el("th", { scope: "row" }, "Worked (sales + SDR)"),
        el("td", { "data-field": "weekly_leads" }, fmtNumber(t.weekly_leads_worked)),
        el("td", { colspan: 2 }),
        el("td", { "data-field": "expected_sqls" }, fmtNumber(t.expected_sqls)),
        el("td", { "data-field": "precision" }, fmtPct(t.precision)),
        el("td", { "data-field": "recall" }, fmtPct(t.recall)),
        el("td"),
      ),
    );
  }

  function drawMatrix(cells) {
    const table = $("matrix-table");
    const byKey = new Map(cells.map((c) => [`${c.grade}|${c.stage}`, c]));
    const most = Math.max(1e-9, ...cells.map((c) => c.weekly_leads));
    table.tHead.replaceChildren(
      el("tr", {}, el("th", { scope: "col" }, "Grade \\ stage"), ...STAGES.map((s) => el("th", { scope: "col" }, s))),
    );
    table.tBodies[0].replaceChildren(
      ...GRADES.map((grade) =>
        el(
          "tr",
          {},
          el("th", { scope: "row" }, grade),
          ...STAGES.map((stage) => {
            const cell = byKey.get(`${grade}|${stage}`);
            if (!cell) return el("td", { "data-grade": grade, "data-stage": stage }, dash);
            // Heat: the share of the busiest cell's volume, so the eye finds where the leads are.
            const heat = Math.sqrt(cell.weekly_leads / most);
            return el(
              "td",
              {
                "data-grade": grade,
                "data-stage": stage,
                "data-queue": cell.queue,
                style: `--heat: ${heat.toFixed(3)}`,
                title: `${cell.leads} leads in the data`,
              },
              el("span", { className: "cell-volume" }, `${fmtNumber(cell.weekly_leads)} / wk`),
              el("span", { className: "cell-rate" }, `${fmtPct(cell.conversion_rate)} conv.`),
              el("span", { className: `cell-queue queue-${cell.queue}` }, cell.queue),
            );
          }),
        ),
      ),
    );
  }

  function drawSegments(segments) {
    $("segments").hidden = segments.length === 0;
    $("segment-table").tBodies[0].replaceChildren(
      ...segments.map((s) =>
        el(
          "tr",
          {},
          el("th", { scope: "row" }, `${s.dimension} = ${s.value}`),
          el("td", {}, s.queue),
          el("td", {}, fmtNumber(s.weekly_leads)),
          el("td", {}, fmtNumber(s.expected_sqls)),
          el("td", {}, fmtPct(s.precision)),
          el("td", {}, fmtPct(s.recall)),
        ),
      ),
    );
  }

  // ---- charts ----

  const CHART_CONFIG = { displaylogo: false, responsive: true, displayModeBar: false };

  function baseLayout(title, yTitle, cutoff, stage) {
    return {
      title: { text: title, font: { size: 14 } },
      margin: { l: 56, r: 16, t: 40, b: 44 },
      height: 280,
      xaxis: { title: { text: `${stage} cut-off (chance of becoming SQL)` }, zeroline: false, tickformat: ".1%" },
      yaxis: { title: { text: yTitle }, rangemode: "tozero" },
      legend: { x: 1, xanchor: "right", y: 1, yanchor: "top", bgcolor: "rgba(255,255,255,0.8)" },
      shapes: [
        { type: "line", xref: "x", yref: "paper", x0: cutoff, x1: cutoff, y0: 0, y1: 1, line: { color: "#cf222e", dash: "dash", width: 2 } },
      ],
      annotations: [
        { x: cutoff, y: 1, xref: "x", yref: "paper", yanchor: "bottom", showarrow: false, text: `${stage} ${fmtCutoff(cutoff)}`, font: { color: "#cf222e", size: 11 } },
      ],
      paper_bgcolor: "rgba(0,0,0,0)",
    };
  }

  function plot(id, traces, layout, stage, cutoff) {
    const node = $(id);
    node.dataset.stage = stage;
    node.dataset.cutoff = String(cutoff);
    window.Plotly.react(node, traces, layout, CHART_CONFIG);
  }

  function drawCharts(simulation, policy, capacities) {
    if (!window.Plotly) {
      showStatus("status", "error", "The chart library did not load; the tables above are still current.");
      return;
    }
    const stage = $("curve-stage").value;
    const points = (simulation.curves && simulation.curves[stage]) || [];
    const cutoff = policy.stages[stage];
    const x = points.map((p) => p.cutoff);
    const capacity = ["sales", "sdr"].reduce(
      (sum, q) => sum + capacities.queues[q].reps * capacities.queues[q].leads_per_rep_per_week,
      0,
    );

    const volume = baseLayout("Leads worked per week (sales + SDR)", "leads / week", cutoff, stage);
    volume.shapes.push({ type: "line", xref: "paper", yref: "y", x0: 0, x1: 1, y0: capacity, y1: capacity, line: { color: "#57606a", dash: "dot", width: 1.5 } });
    volume.annotations.push({ x: 1, y: capacity, xref: "paper", yref: "y", xanchor: "right", yanchor: "bottom", showarrow: false, text: `capacity ${capacity}`, font: { color: "#57606a", size: 11 } });
    plot("chart-volume", [{ x, y: points.map((p) => p.weekly_leads), type: "scatter", mode: "lines", name: "leads worked / week", line: { color: "#1f6feb" } }], volume, stage, cutoff);

    const quality = baseLayout("Precision and recall of worked leads", "share", cutoff, stage);
    quality.yaxis = { title: { text: "share" }, range: [0, 1], tickformat: ".0%" };
    plot(
      "chart-quality",
      [
        { x, y: points.map((p) => p.precision), type: "scatter", mode: "lines", name: "precision", line: { color: "#8250df" } },
        { x, y: points.map((p) => p.recall), type: "scatter", mode: "lines", name: "recall", line: { color: "#2da44e" } },
      ],
      quality,
      stage,
      cutoff,
    );

    const sqls = baseLayout("Expected SQLs captured per week", "SQLs / week", cutoff, stage);
    plot("chart-sqls", [{ x, y: points.map((p) => p.expected_sqls), type: "scatter", mode: "lines", name: "expected SQLs / week", line: { color: "#bf8700" } }], sqls, stage, cutoff);
  }

  // ---- proposing, saving, rolling back ----

  async function propose() {
    const button = $("propose");
    const asked = candidate();
    if (asked === null) return;
    const body = asked.body;
    button.disabled = true;
    showStatus("status", "info", "Looking for cut-offs that fit the team…");
    try {
      const before = asked.policy.stages;
      const answer = await api("POST", "/v1/thresholds/solve", body);
      fillCutoffs(answer.policy);
      const after = answer.policy.stages;
      const note = $("propose-note");
      note.dataset.feasible = String(answer.feasible !== false);
      note.textContent =
        `Proposed MQL ${fmtCutoff(before.MQL)} → ${fmtCutoff(after.MQL)}, SQL ${fmtCutoff(before.SQL)} → ${fmtCutoff(after.SQL)} ` +
        `for ${body.capacities.queues.sales.reps} sales and ${body.capacities.queues.sdr.reps} SDR reps` +
        `${answer.note ? `: ${answer.note}` : ""}. Not saved yet.`;
      await simulateNow(); // draws exactly what saving now would store
    } catch (err) {
      showStatus("status", "error", err.message);
    } finally {
      button.disabled = false;
    }
  }

  async function save(event) {
    event.preventDefault();
    const reasonInput = $("save-reason");
    const reason = reasonInput.value.trim();
    if (!reason) {
      reasonInput.setAttribute("aria-invalid", "true");
      reasonInput.focus();
      showStatus("save-status", "error", "Say why you change the thresholds: a reason is required.");
      return;
    }
    reasonInput.removeAttribute("aria-invalid");
    let policy;
    try {
      policy = readPolicy();
    } catch (err) {
      showStatus("save-status", "error", err.message);
      return;
    }
    const author = $("save-author").value.trim();
    const body = { policy, reason, base_version: state.loaded.version };
    if (author) body.author = author;
    const button = $("save");
    button.disabled = true;
    showStatus("save-status", "info", "Saving…");
    try {
      const saved = await api("PUT", "/v1/thresholds", body);
      showStatus("save-status", "ok", `Saved as version ${saved.version}; the service routes with it within seconds.`);
      $("save-status").dataset.version = String(saved.version);
      reasonInput.value = "";
      $("propose-note").textContent = "";
      await showSaved(saved);
    } catch (err) {
      // A 409 says itself what to do (reload, reapply); a 403 does not say which key would do.
      showStatus("save-status", "error", withHint(err.message, err.status === 403 ? "Saving needs an admin key." : ""));
    } finally {
      button.disabled = false;
    }
  }

  function drawHistory(versions) {
    const latest = versions.length ? versions[0].version : null;
    $("history-table").tBodies[0].replaceChildren(
      ...versions.map((v) => {
        const { grades, stages } = v.policy;
        const action =
          v.version === latest
            ? el("span", { className: "badge in-force" }, "in force")
            : el("button", { type: "button", className: "secondary", "data-testid": `rollback-${v.version}`, "data-version": v.version }, "Roll back to this");
        return el(
          "tr",
          { "data-version": v.version },
          el("td", {}, v.version),
          el("td", {}, fmtWhen(v.created_at)),
          el("td", {}, v.author || dash),
          el("td", { className: "reason" }, v.reason),
          el("td", {}, `${grades.A} / ${grades.B} / ${grades.C}`),
          el("td", {}, `${fmtCutoff(stages.MQL)} / ${fmtCutoff(stages.SQL)}`),
          el("td", {}, action),
        );
      }),
    );
  }

  // A rollback asks why in a dialog of the page (a browser prompt cannot be styled, checked or read by screen readers
  // as part of the page); the dialog stays open with the service's answer when it refuses.
  function openRollback(version) {
    const dialog = $("rollback-dialog");
    dialog.dataset.version = String(version);
    $("rollback-version").textContent = String(version);
    $("rollback-reason").value = "";
    $("rollback-reason").removeAttribute("aria-invalid");
    showStatus("rollback-status", "info", "");
    dialog.showModal();
    $("rollback-reason").focus();
  }

  async function confirmRollback(event) {
    event.preventDefault();
    const dialog = $("rollback-dialog");
    const version = Number(dialog.dataset.version);
    const reasonInput = $("rollback-reason");
    const reason = reasonInput.value.trim();
    if (!reason) {
      reasonInput.setAttribute("aria-invalid", "true");
      reasonInput.focus();
      showStatus("rollback-status", "error", "Say why you roll back: a reason is required.");
      return;
    }
    reasonInput.removeAttribute("aria-invalid");
    const body = { version, reason };
    const author = $("save-author").value.trim();
    if (author) body.author = author;
    const button = $("rollback-confirm");
    button.disabled = true;
    showStatus("rollback-status", "info", "Rolling back…");
    try {
      const saved = await api("POST", "/v1/thresholds/rollback", body);
      dialog.close();
      showStatus("save-status", "ok", `Rolled back: version ${saved.version} holds the policy of version ${version}.`);
      $("save-status").dataset.version = String(saved.version);
      await showSaved(saved);
    } catch (err) {
      showStatus("rollback-status", "error", withHint(err.message, err.status === 403 ? "Rolling back needs an admin key." : ""));
    } finally {
      button.disabled = false;
    }
  }

  // ---- wiring ----

  function start() {
    $("api-key").value = sessionStorage.getItem(KEY_STORAGE) || "";
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
      document.dispatchEvent(new Event(KEY_EVENT));
      loadAll();
    });
    $("inputs-form").addEventListener("input", scheduleSimulation);
    $("inputs-form").addEventListener("submit", (event) => event.preventDefault());
    $("curve-stage").addEventListener("change", () => {
      if (!state.simulation) return;
      try {
        drawCharts(state.simulation, readPolicy(), readCapacities());
      } catch (err) {
        showStatus("status", "error", err.message);
      }
    });
    $("propose").addEventListener("click", propose);
    $("reset").addEventListener("click", () => {
      $("propose-note").textContent = "";
      loadAll();
    });
    $("save-form").addEventListener("submit", save);
    $("history-table").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-version]");
      if (button) openRollback(Number(button.dataset.version));
    });
    $("rollback-form").addEventListener("submit", confirmRollback);
    $("rollback-cancel").addEventListener("click", () => $("rollback-dialog").close());
    $("data-source").addEventListener("change", () => simulateNow());
    document.body.dataset.simulations = "0";
    loadAll();
  }

  start(); // the script is deferred: the document is parsed by now
})();
