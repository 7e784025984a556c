// The page's Webhooks section: list, add, pause, test and delete subscriptions, read their delivery log, replay.
//
// Uses the helpers thresholds.js shares (window.leadscorePage): the same admin key, busy mark and error messages.
// Hooks that tests and scripts may rely on (kept stable):
//   #webhooks-status                    messages of the section; data-kind = "info" | "ok" | "error"
//   #webhooks-table                     tbody tr[data-id] (data-active = "true" | "false") with td[data-field] url,
//                                       events, min_score_change, active, last_delivery (data-status); buttons
//                                       [data-action] toggle | test | log | delete
//   #webhook-form                       #webhook-url, input[name=events] (one per event type), #webhook-min-change,
//                                       #webhook-description, #webhook-add; #webhook-form-status (data-kind); a
//                                       refused field gets aria-invalid (#webhook-events: data-invalid)
//   #webhook-secret                     shown once after an add: #webhook-secret-value (data-id), #webhook-secret-done
//   #webhook-log                        the open delivery log (data-id): #webhook-log-table tbody tr[data-id]
//                                       (data-status) with td[data-field]; button[data-action=replay];
//                                       #webhook-log-status, #webhook-log-refresh, #webhook-log-close
//   #webhook-delete-dialog              asks before a delete: #webhook-delete-confirm, #webhook-delete-cancel,
//                                       #webhook-delete-status
"use strict";

(() => {
  const page = window.leadscorePage;
  if (!page) return; // thresholds.js did not run: it reports its own failure
  const { api, el, showStatus, withHint, dash } = page;
  const $ = (id) => document.getElementById(id);

  // A delivery log with pending deliveries is re-read this often, so a test event is seen to arrive.
  const LOG_POLL_MS = 1000;
  // ... for at most this many reads (a minute): a receiver that is down keeps a delivery pending for hours.
  const LOG_POLL_LIMIT = 60;
  // The form's fields as the API names them (a 422's loc), and as the form labels them.
  const FIELD_LABELS = {
    url: "URL",
    events: "Events",
    min_score_change: "Min score change",
    description: "Description",
    active: "Active",
  };
  const FIELD_INPUTS = { url: "webhook-url", min_score_change: "webhook-min-change", description: "webhook-description" };
  const ADMIN_HINT = "Webhooks need an admin API key: enter one above.";

  const state = {
    subscriptions: [],
    log: null, // { id, url }: the subscription whose delivery log is open
    logSeq: 0, // log reads are numbered so only the latest answer is drawn
    logTimer: null,
    logPolls: 0,
    deleting: null, // the subscription the delete dialog asks about
  };

  // ---- messages ----

  const fieldOf = (problem) => (Array.isArray(problem.loc) ? problem.loc.filter((p) => p !== "body") : []);

  // An API refusal in words: a 422 names each field (as the form labels it and as the API names it) and what is
  // wrong with it; a 401 or 403 says which key is needed. Never the raw JSON.
  function describe(err, what) {
    if (err.status === 422 && Array.isArray(err.detail)) {
      const problems = err.detail.map((problem) => {
        const field = fieldOf(problem);
        const name = field.join(".");
        const label = FIELD_LABELS[field[0]];
        // pydantic prefixes the words of a validator's ValueError with "Value error, ": noise to the reader.
        const message = String(problem.msg ?? "not accepted").replace(/^Value error,\s*/, "");
        if (!name) return message;
        return label ? `${label} (${name}): ${message}` : `${name}: ${message}`;
      });
      return `${what} was not accepted. ${problems.join("; ")}.`;
    }
    if (err.status === 401 || err.status === 403) return withHint(err.message, ADMIN_HINT);
    return err.message;
  }

  function markInvalid(err) {
    for (const id of Object.values(FIELD_INPUTS)) $(id).removeAttribute("aria-invalid");
    delete $("webhook-events").dataset.invalid; // a fieldset takes no aria-invalid: its message says it
    if (err === null || err.status !== 422 || !Array.isArray(err.detail)) return;
    for (const problem of err.detail) {
      const field = fieldOf(problem)[0];
      if (field === "events") $("webhook-events").dataset.invalid = "true";
      else if (FIELD_INPUTS[field]) $(FIELD_INPUTS[field]).setAttribute("aria-invalid", "true");
    }
  }

  const fmtTime = (iso) => {
    if (!iso) return dash;
    const when = new Date(iso);
    // Seconds matter in a delivery log: a retry comes seconds after the attempt before it.
    return Number.isNaN(when.getTime()) ? iso : when.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "medium" });
  };
  const fmtPoints = (x) => `${Number(x).toLocaleString("en", { maximumFractionDigits: 2 })} pts`;
  // The receiver's answer: its status code, or why there was none.
  const answerOf = (code, error) => (code !== null && code !== undefined ? `HTTP ${code}${error ? `: ${error}` : ""}` : error || dash);
  const lastAttempt = (delivery) => (delivery.attempts.length ? delivery.attempts[delivery.attempts.length - 1] : null);

  // ---- the list ----

  async function loadList() {
    try {
      const listed = await api("GET", "/v1/webhooks");
      state.subscriptions = listed.subscriptions;
      // The list has no delivery state: each subscription's newest delivery is one small read, made side by side.
      const latest = await Promise.all(listed.subscriptions.map((s) => latestDelivery(s.id)));
      drawList(listed.subscriptions, latest);
      if (state.log && !listed.subscriptions.some((s) => s.id === state.log.id)) closeLog();
      return true;
    } catch (err) {
      state.subscriptions = [];
      drawList([], []);
      showStatus("webhooks-status", "error", describe(err, "Listing webhooks"));
      return false;
    }
  }

  async function latestDelivery(id) {
    try {
      const newest = await api("GET", `/v1/webhooks/${encodeURIComponent(id)}/deliveries?limit=1`);
      return newest.deliveries[0] || null;
    } catch (err) {
      return { error: err.message };
    }
  }

  function drawLatest(delivery) {
    if (delivery === null) return el("td", { "data-field": "last_delivery", "data-status": "none" }, "none yet");
    if (delivery.error) return el("td", { "data-field": "last_delivery", "data-status": "unknown", title: delivery.error }, "unknown");
    const attempt = lastAttempt(delivery);
    return el(
      "td",
      { "data-field": "last_delivery", "data-status": delivery.status, title: `${delivery.event_type}, ${delivery.id}` },
      el("span", { className: `delivery-status status-${delivery.status}` }, delivery.status),
      delivery.last_status_code !== null ? ` HTTP ${delivery.last_status_code}` : delivery.last_error ? " no answer" : "",
      el("small", { className: "when" }, fmtTime(attempt ? attempt.attempted_at : delivery.created_at)),
    );
  }

  function rowActions(s) {
    const button = (action, label, attrs = {}) =>
      el("button", { type: "button", className: "secondary", "data-action": action, ...attrs }, label);
    return el(
      "div",
      { className: "row-actions" },
      button("toggle", s.active ? "Pause" : "Resume"),
      // A paused subscription refuses test events (409): the button says so before anyone tries.
      button("test", "Send test", {
        disabled: !s.active,
        title: s.active ? "Send a webhook.test event to this URL" : "Resume it to send to it",
      }),
      button("log", "Delivery log"),
      button("delete", "Delete", { className: "secondary danger" }),
    );
  }

  function drawList(subscriptions, latest) {
    $("webhooks-empty").hidden = subscriptions.length > 0;
    $("webhooks-table").tBodies[0].replaceChildren(
      ...subscriptions.map((s, i) =>
        el(
          "tr",
          { "data-id": s.id, "data-active": String(s.active), className: s.active ? undefined : "paused" },
          el(
            "td",
            { "data-field": "url", className: "url" },
            el("span", {}, s.url),
            s.description ? el("small", { className: "when" }, s.description) : null,
          ),
          el("td", { "data-field": "events", className: "events" }, s.events.join(", ")),
          el("td", { "data-field": "min_score_change" }, fmtPoints(s.min_score_change)),
          el(
            "td",
            { "data-field": "active" },
            el("span", { className: `badge ${s.active ? "in-force" : "paused"}` }, s.active ? "active" : "paused"),
          ),
          drawLatest(latest[i] ?? null),
          el("td", {}, rowActions(s)),
        ),
      ),
    );
  }

  const subscription = (id) => state.subscriptions.find((s) => s.id === id);

  // ---- adding ----

  function readForm() {
    const body = {
      url: $("webhook-url").value.trim(),
      events: [...document.querySelectorAll("#webhook-events input[name=events]:checked")].map((box) => box.value),
    };
    // Left empty: the service's default. Out of range goes as typed, for the API to judge and name.
    const change = $("webhook-min-change").value.trim();
    if (change !== "") body.min_score_change = Number(change);
    const description = $("webhook-description").value.trim();
    if (description) body.description = description;
    return body;
  }

  async function add(event) {
    event.preventDefault();
    hideSecret();
    // A number input holds "" for text it cannot read as a number: sent as such it would become the default.
    if ($("webhook-min-change").validity.badInput) {
      markInvalid(null);
      $("webhook-min-change").setAttribute("aria-invalid", "true");
      showStatus(
        "webhook-form-status",
        "error",
        "Min score change (min_score_change): not a number. Points from 0 to 100, or empty for the service's default.",
      );
      return;
    }
    const button = $("webhook-add");
    button.disabled = true;
    showStatus("webhook-form-status", "info", "Adding…");
    try {
      const created = await api("POST", "/v1/webhooks", readForm());
      markInvalid(null);
      $("webhook-form").reset();
      showSecret(created);
      showStatus("webhook-form-status", "ok", `Added ${created.url} (${created.events.join(", ")}).`);
      await loadList();
    } catch (err) {
      markInvalid(err);
      showStatus("webhook-form-status", "error", describe(err, "The subscription"));
    } finally {
      button.disabled = false;
    }
  }

  // The secret is in the create answer only: it stays on screen until dismissed, and is never kept by the page.
  function showSecret(created) {
    $("webhook-secret-url").textContent = created.url;
    $("webhook-secret-value").value = created.secret;
    $("webhook-secret-value").dataset.id = created.id;
    $("webhook-secret-copy").hidden = !(navigator.clipboard && window.isSecureContext);
    $("webhook-secret").hidden = false;
    $("webhook-secret-value").focus();
    $("webhook-secret-value").select();
  }

  function hideSecret() {
    $("webhook-secret").hidden = true;
    $("webhook-secret-value").value = "";
    delete $("webhook-secret-value").dataset.id;
  }

  async function copySecret() {
    try {
      await navigator.clipboard.writeText($("webhook-secret-value").value);
      showStatus("webhook-form-status", "ok", "Secret copied.");
    } catch (err) {
      showStatus("webhook-form-status", "error", `Could not copy (${err.message}): select the secret and copy it.`);
    }
  }

  // ---- row actions ----

  async function toggle(s) {
    const resume = !s.active;
    try {
      await api("PATCH", `/v1/webhooks/${encodeURIComponent(s.id)}`, { active: resume });
      showStatus(
        "webhooks-status",
        "ok",
        resume
          ? `Resumed ${s.url}: its waiting deliveries go now, and new events are queued for it again.`
          : `Paused ${s.url}: no new events are queued for it, and those queued wait until it is resumed.`,
      );
    } catch (err) {
      showStatus("webhooks-status", "error", describe(err, resume ? "Resuming" : "Pausing"));
    }
    await loadList();
  }

  async function sendTest(s) {
    try {
      const queued = await api("POST", `/v1/webhooks/${encodeURIComponent(s.id)}/test`);
      showStatus("webhooks-status", "ok", `Test event ${queued.id} queued for ${s.url}: its delivery log follows it.`);
      await Promise.all([openLog(s), loadList()]);
    } catch (err) {
      showStatus("webhooks-status", "error", describe(err, "The test event"));
    }
  }

  // A delete asks in a dialog of the page (a browser confirm cannot be styled or read as part of the page).
  function askDelete(s) {
    state.deleting = s;
    $("webhook-delete-url").textContent = s.url;
    showStatus("webhook-delete-status", "info", "");
    $("webhook-delete-dialog").showModal();
    $("webhook-delete-cancel").focus(); // the safe choice under Enter
  }

  async function confirmDelete(event) {
    event.preventDefault();
    const s = state.deleting;
    if (!s) return;
    const button = $("webhook-delete-confirm");
    button.disabled = true;
    try {
      await api("DELETE", `/v1/webhooks/${encodeURIComponent(s.id)}`);
      $("webhook-delete-dialog").close();
      state.deleting = null;
      showStatus("webhooks-status", "ok", `Deleted the subscription to ${s.url}, with its queued deliveries and their log.`);
      if (state.log && state.log.id === s.id) closeLog();
      await loadList();
    } catch (err) {
      showStatus("webhook-delete-status", "error", describe(err, "The delete"));
    } finally {
      button.disabled = false;
    }
  }

  // ---- the delivery log ----

  async function openLog(s) {
    state.log = { id: s.id, url: s.url };
    state.logPolls = 0;
    $("webhook-log").dataset.id = s.id;
    $("webhook-log-url").textContent = s.url;
    $("webhook-log").hidden = false;
    await loadLog();
  }

  function closeLog() {
    clearTimeout(state.logTimer);
    state.log = null;
    state.logSeq += 1; // an answer still on its way is for a log no longer open
    $("webhook-log").hidden = true;
    delete $("webhook-log").dataset.id;
    $("webhook-log-table").tBodies[0].replaceChildren();
    showStatus("webhook-log-status", "info", "");
  }

  async function loadLog() {
    clearTimeout(state.logTimer);
    if (!state.log) return;
    const { id } = state.log;
    const seq = ++state.logSeq;
    try {
      const found = await api("GET", `/v1/webhooks/${encodeURIComponent(id)}/deliveries`);
      if (seq !== state.logSeq) return;
      drawLog(found.deliveries);
      const pending = found.deliveries.some((d) => d.status === "pending");
      if (pending && state.logPolls < LOG_POLL_LIMIT) {
        state.logPolls += 1;
        state.logTimer = setTimeout(loadLog, LOG_POLL_MS);
      } else if (state.logPolls > 0) {
        state.logPolls = 0;
        await loadList(); // what the polling saw arrive, in the list's last-delivery column too
      }
      const more = found.next_before ? " Older deliveries are left out: the API pages them (next_before)." : "";
      const count = found.deliveries.length;
      showStatus("webhook-log-status", "info", count ? `${count} ${count === 1 ? "delivery" : "deliveries"}, newest first.${more}` : "No deliveries yet.");
    } catch (err) {
      if (seq !== state.logSeq) return;
      showStatus("webhook-log-status", "error", describe(err, "The delivery log"));
    }
  }

  function drawAttempts(delivery) {
    if (!delivery.attempts.length) return dash;
    return el(
      "details",
      {},
      el("summary", {}, String(delivery.attempts.length)),
      el(
        "ol",
        { className: "attempts" },
        ...delivery.attempts.map((a) =>
          el("li", {}, `${fmtTime(a.attempted_at)}: ${answerOf(a.status_code, a.error)} in ${Math.round(a.duration_ms)} ms`),
        ),
      ),
    );
  }

  function drawLog(deliveries) {
    $("webhook-log-table").tBodies[0].replaceChildren(
      ...deliveries.map((d) => {
        const attempt = lastAttempt(d);
        const replayable = d.status === "dead" || d.status === "delivered";
        return el(
          "tr",
          { "data-id": d.id, "data-status": d.status },
          el("td", { "data-field": "event" }, d.event_type, el("small", { className: "when" }, d.id)),
          el(
            "td",
            { "data-field": "status" },
            el("span", { className: `delivery-status status-${d.status}` }, d.status),
            d.status === "pending" && d.next_attempt_at ? el("small", { className: "when" }, `next try ${fmtTime(d.next_attempt_at)}`) : null,
          ),
          el("td", { "data-field": "attempts" }, drawAttempts(d)),
          el("td", { "data-field": "last_answer", className: "answer" }, answerOf(d.last_status_code, d.last_error)),
          el("td", { "data-field": "created_at" }, fmtTime(d.created_at)),
          el("td", { "data-field": "last_attempt" }, fmtTime(d.delivered_at || (attempt && attempt.attempted_at))),
          el(
            "td",
            {},
            replayable
              ? el("button", { type: "button", className: "secondary", "data-action": "replay", "data-delivery": d.id }, "Replay")
              : null,
          ),
        );
      }),
    );
  }

  async function replay(deliveryId) {
    if (!state.log) return;
    try {
      await api("POST", `/v1/webhooks/${encodeURIComponent(state.log.id)}/deliveries/${encodeURIComponent(deliveryId)}/replay`);
      showStatus("webhooks-status", "ok", `Delivery ${deliveryId} queued again, same id and body.`);
      state.logPolls = 0;
    } catch (err) {
      showStatus("webhooks-status", "error", describe(err, "The replay"));
    }
    await Promise.all([loadLog(), loadList()]);
  }

  // ---- wiring ----

  function start() {
    $("webhook-form").addEventListener("submit", add);
    $("webhook-secret-copy").addEventListener("click", copySecret);
    $("webhook-secret-done").addEventListener("click", hideSecret);
    $("webhooks-refresh").addEventListener("click", async () => {
      if (await loadList()) showStatus("webhooks-status", "info", "");
    });
    $("webhooks-table").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      const s = button && subscription(button.closest("tr[data-id]").dataset.id);
      if (!s) return;
      const action = { toggle, test: sendTest, log: openLog, delete: askDelete }[button.dataset.action];
      if (action) action(s);
    });
    $("webhook-log-table").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action=replay]");
      if (button) replay(button.dataset.delivery);
    });
    $("webhook-log-refresh").addEventListener("click", () => {
      state.logPolls = 0;
      loadLog();
    });
    $("webhook-log-close").addEventListener("click", closeLog);
    $("webhook-delete-form").addEventListener("submit", confirmDelete);
    $("webhook-delete-cancel").addEventListener("click", () => $("webhook-delete-dialog").close());
    document.addEventListener(page.KEY_EVENT, () => {
      showStatus("webhooks-status", "info", "");
      hideSecret();
      closeLog();
      loadList();
    });
    loadList();
  }

  start(); // deferred, after thresholds.js: the document is parsed by now
})();
