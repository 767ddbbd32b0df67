// The controller's dashboard: renders GET /api/events (server-sent events: `status` with the
// whole Status, `audit` with each new AuditRecord) and sends Propose, Approve and Reject with
// the admin token. Plain DOM, no framework and no build step, so the file is embedded as is. Every
// value from the server is set as text (never as HTML). Elements carry stable data
// attributes (data-region, data-replica, data-plan, data-plan-state, data-action, ...) that
// the browser tests select on.
"use strict";

const TOKEN_KEY = "meridian.controller.adminToken";
const MAX_EVENTS = 200;
const RECONNECT_MAX_MS = 10000;

const state = {
  status: null,
  events: new Map(), // seq -> AuditRecord (seq 0: unsaved, keyed by position)
  unsaved: 0,
  messages: new Map(), // plan id -> { text, error }
  busy: new Set(), // plan ids with a command in flight
  ackLoss: new Set(), // plan ids whose loss checkbox is ticked
  eventsVersion: 0, // counts changes to `events`, so the timeline is redrawn only on news
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function time(micros) {
  if (micros === null || micros === undefined) return "-";
  const date = new Date(Math.floor(micros / 1000));
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function actor(a) {
  if (!a) return "-";
  return a.kind === "controller" ? "the controller" : a.name;
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function describe(action) {
  const names = (items) => (items || []).join(", ");
  switch (action.action) {
    case "fence-region":
      return `fence ${action.region}: stop ${names(action.replicas)}`;
    case "wait-for-catch-up":
      return `wait until ${names(action.servers)} replayed everything`;
    case "promote-databases":
      return action.servers.length === 0
        ? "promote databases: none (SQLite)"
        : `promote ${names(action.servers)}`;
    case "start-replicas":
      return `start the ${action.kind} replicas ${names(action.replicas)}`;
    case "wait-ready":
      return `wait until ready: ${names(action.replicas)}`;
    case "move-load-balancer":
      return `move the load balancer to ${action.region}`;
    default:
      return action.action;
  }
}

function stepState(step) {
  if (step.state.state !== "finished") return step.state.state;
  return step.state.outcome.outcome;
}

// ---- the map ----------------------------------------------------------------------------

function renderReplica(r) {
  const reason = r.reason || (r.ready ? "ready" : "not ready");
  return el(
    "div",
    {
      class: `replica role-${r.role}`,
      "data-replica": r.name,
      "data-node": r.node,
      "data-role": r.role,
      "data-ready": r.ready ? "true" : "false",
      title: `${r.name} (${r.node}, ${r.kind}, ${r.temperature}): ${r.role}; ${reason}` +
        (r.restarts ? `; ${r.restarts} restarts` : "") + (r.pid ? `; pid ${r.pid}` : ""),
    },
    el("span", { class: "name", text: r.name }),
    el("span", { class: "role", text: r.role }),
    el("span", { class: "ready", text: r.ready ? "ready" : "not ready" }),
  );
}

function renderServer(s) {
  const role = s.role || (s.reachable ? "?" : "unreachable");
  return el(
    "div",
    {
      class: `server db-${role}`,
      "data-server": s.name,
      "data-db-role": role,
      title: `${s.name} in ${s.cluster}: placed as ${s.placed_as}, now ${role}` +
        (s.reachable ? "" : " (unreachable)"),
    },
    el("span", { class: "name", text: `${s.name}` }),
    el("span", { class: "role", text: role }),
    el("span", { class: "lag", text: `lag ${bytes(s.lag_bytes)}` }),
  );
}

function renderRegions(status) {
  const root = document.getElementById("regions");
  const regions = status.regions.map((region) =>
    el(
      "section",
      {
        class: "region" + (region.failed_since ? " failed" : ""),
        "data-region": region.name,
        "data-failed": region.failed_since ? "true" : "false",
      },
      el("h3", {
        text: region.name + (region.failed_since ? ` — failed since ${time(region.failed_since)}` : ""),
      }),
      el(
        "div",
        { class: "zones" },
        ...region.zones.map((zone) =>
          el(
            "div",
            { class: "zone", "data-zone": zone.name },
            el("h4", { text: zone.name }),
            el("div", { class: "replicas" }, ...zone.replicas.map(renderReplica)),
            zone.servers.length
              ? el("div", { class: "servers" }, ...zone.servers.map(renderServer))
              : null,
          ),
        ),
      ),
    ),
  );
  root.replaceChildren(...(regions.length ? regions : [el("p", { class: "empty", text: "no regions yet" })]));
}

// ---- plans ------------------------------------------------------------------------------

function token() {
  return document.getElementById("token").value.trim();
}

// POSTs `body` to `path` with the token: `{ ok, answer, text }`, where `text` is the
// server's own message on a refusal (every refusal is JSON `{error, message}`).
async function post(path, body) {
  const headers = { "Content-Type": "application/json" };
  const t = token();
  if (t) headers["Authorization"] = `Bearer ${t}`;
  try {
    const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
    let answer = null;
    try {
      answer = await response.json();
    } catch (_) {
      answer = null;
    }
    const text = response.ok
      ? null
      : (answer && answer.message) || `${response.status} ${response.statusText}`;
    return { ok: response.ok, answer, text };
  } catch (error) {
    return { ok: false, answer: null, text: `request failed: ${error}` };
  }
}

async function send(planId, verb) {
  const body = verb === "approve" ? { acknowledge_loss: state.ackLoss.has(planId) } : {};
  state.busy.add(planId);
  state.messages.set(planId, { text: `${verb} sent…`, error: false });
  render();
  const { ok, answer, text } = await post(`/api/plans/${encodeURIComponent(planId)}/${verb}`, body);
  if (ok) {
    state.messages.set(planId, { text: verb === "approve" ? "approved" : "rejected", error: false });
    if (answer && answer.plan) mergePlan(answer.plan);
  } else {
    state.messages.set(planId, { text, error: true });
  }
  state.busy.delete(planId);
  render();
}

function proposeMessage(text, error) {
  const node = document.getElementById("propose-message");
  node.textContent = text || "";
  node.hidden = !text;
  node.classList.toggle("error", Boolean(error));
}

// The Propose form: a switchover to the chosen region, of the components typed (comma or
// space separated; every node when empty). The controller checks everything (an unknown
// region or component, a plan already open, the cooldown) and its refusal is shown as is.
async function propose(event) {
  event.preventDefault();
  const button = document.getElementById("propose-button");
  if (button.disabled) return;
  const to = document.getElementById("propose-to").value;
  const components = document
    .getElementById("propose-components")
    .value.split(/[\s,]+/)
    .filter(Boolean);
  button.disabled = true;
  proposeMessage("proposal sent…", false);
  const { ok, answer, text } = await post("/api/plans", { to, components });
  if (ok && answer && answer.plan) {
    // Drawn first, so that the message is about the plans with the new one among them.
    mergePlan(answer.plan);
    render();
    proposeMessage(`proposed ${answer.plan.id}: approve or reject it below`, false);
  } else {
    proposeMessage(text || "the controller answered without a plan", true);
  }
  button.disabled = false;
}

// The region choices, rebuilt only when the deployment's regions change (keeping the choice).
function renderProposeRegions(status) {
  const select = document.getElementById("propose-to");
  const chosen = select.value;
  select.replaceChildren(
    ...status.regions.map((region) => el("option", { value: region.name, text: region.name })),
  );
  if (status.regions.some((region) => region.name === chosen)) {
    select.value = chosen;
  } else {
    // First offer a region where nothing is active: the one a switchover would go to.
    const idle = status.regions.find((region) =>
      region.zones.every((zone) => zone.replicas.every((r) => r.role !== "active")),
    );
    if (idle) select.value = idle.name;
  }
}

// A command's answer may come before the next status event: show it at once.
function mergePlan(plan) {
  if (!state.status) return;
  const plans = state.status.plans.filter((p) => p.id !== plan.id);
  state.status.plans = [plan, ...plans];
}

function renderPlan(plan) {
  const name = plan.state.state;
  const open = name === "awaiting-approval";
  const steps = el(
    "ol",
    { class: "steps" },
    ...plan.steps.map((step, i) => {
      const s = stepState(step);
      const detail = step.state.state === "finished" ? step.state.outcome.detail : null;
      return el(
        "li",
        { class: `step step-${s}`, "data-step": i, "data-step-state": s, title: detail || s },
        el("span", { class: "step-state", text: s }),
        " ",
        describe(step.action),
        detail ? el("span", { class: "detail", text: ` — ${detail}` }) : null,
      );
    }),
  );
  const finished = plan.steps.filter((s) => s.state.state === "finished").length;
  const meta = [
    `${plan.kind} ${plan.from_region} → ${plan.to_region}`,
    `components: ${plan.components.length ? plan.components.join(", ") : "all"}`,
    `proposed by ${actor(plan.proposed_by)} at ${time(plan.created_at)}`,
  ];
  if (open) meta.push(`expires ${time(plan.expires_at)}`);
  if (plan.state.approved) meta.push(`approved by ${actor(plan.state.approved.by)} at ${time(plan.state.approved.at)}`);
  if (plan.state.rejected) meta.push(`rejected by ${actor(plan.state.rejected.by)}`);
  if (plan.state.error) meta.push(`error: ${plan.state.error}`);

  let loss = null;
  if (plan.data_loss) {
    const lags = plan.data_loss.lag_bytes.map(([cluster, n]) => `${cluster}: ${bytes(n)}`).join(", ");
    const ack = open
      ? el(
          "label",
          { class: "ack" },
          el("input", {
            type: "checkbox",
            "data-ack-loss": plan.id,
            checked: state.ackLoss.has(plan.id),
            onchange: (e) => {
              if (e.target.checked) state.ackLoss.add(plan.id);
              else state.ackLoss.delete(plan.id);
            },
          }),
          " I accept losing this data",
        )
      : null;
    loss = el("div", { class: "loss" }, el("strong", { text: "Data loss: " }), lags || "none measured", " ", ack);
  }

  const busy = state.busy.has(plan.id);
  const actions = open
    ? el(
        "div",
        { class: "actions" },
        el("button", {
          type: "button",
          class: "approve",
          "data-action": "approve",
          "data-plan": plan.id,
          disabled: busy,
          text: "Approve",
          onclick: () => send(plan.id, "approve"),
        }),
        el("button", {
          type: "button",
          class: "reject",
          "data-action": "reject",
          "data-plan": plan.id,
          disabled: busy,
          text: "Reject",
          onclick: () => send(plan.id, "reject"),
        }),
      )
    : null;
  const message = state.messages.get(plan.id);
  return el(
    "article",
    { class: `plan plan-${name}`, "data-plan": plan.id, "data-plan-state": name },
    el(
      "h3",
      {},
      el("span", { class: "plan-id", text: plan.id }),
      " ",
      el("span", { class: "plan-state", text: name }),
      el("span", { class: "progress", text: ` ${finished}/${plan.steps.length} steps` }),
    ),
    el("p", { class: "meta", text: meta.join(" · ") }),
    loss,
    steps,
    actions,
    message
      ? el("p", { class: "plan-message" + (message.error ? " error" : ""), "data-plan-message": plan.id, text: message.text })
      : null,
  );
}

function renderPlans(status) {
  const root = document.getElementById("plans");
  root.replaceChildren(
    ...(status.plans.length ? status.plans.map(renderPlan) : [el("p", { class: "empty", text: "no plans" })]),
  );
}

// ---- events -----------------------------------------------------------------------------

// Keys sort oldest first: saved records by their sequence number.
function savedKey(seq) {
  return `s${String(seq).padStart(20, "0")}`;
}

function addEvent(record) {
  state.eventsVersion += 1;
  if (record.seq > 0) {
    state.events.set(savedKey(record.seq), record);
  } else {
    state.unsaved += 1;
    state.events.set(`u${String(state.unsaved).padStart(20, "0")}`, record);
  }
  while (state.events.size > MAX_EVENTS) {
    const oldest = [...state.events.keys()].sort()[0];
    state.events.delete(oldest);
  }
}

function renderEvents() {
  const root = document.getElementById("events");
  const records = [...state.events.entries()].sort(([a], [b]) => (a < b ? 1 : -1)).map(([, r]) => r);
  root.replaceChildren(
    ...records.map((r) =>
      el(
        "li",
        { class: `event kind-${r.kind}`, "data-seq": r.seq, "data-kind": r.kind, "data-event-plan": r.plan },
        el("time", { text: time(r.at) }),
        " ",
        el("span", { class: "kind", text: r.kind }),
        " ",
        el("span", { class: "who", text: actor(r.actor) }),
        " ",
        [r.plan, r.step !== null && r.step !== undefined ? `step ${r.step + 1}` : null, r.replica, r.region]
          .filter(Boolean)
          .join(" "),
        r.detail ? el("span", { class: "detail", text: ` — ${r.detail}` }) : null,
      ),
    ),
  );
}

// ---- the page ---------------------------------------------------------------------------

function renderHeader(status) {
  const c = status.controller;
  const node = document.getElementById("controller");
  node.dataset.active = c.active ? "true" : "false";
  node.textContent = c.active
    ? `${c.replica} (active)`
    : `${c.replica} (passive${c.active_replica ? `; active: ${c.active_replica}` : ""}) — commands go to the active one`;
  const policy = [];
  if (status.cooldown_until) policy.push(`cooldown until ${time(status.cooldown_until)}`);
  policy.push(`automatic actions in the last hour: ${status.automatic_actions_last_hour}`);
  document.getElementById("policy").textContent = policy.join(" · ");
}

// What each section was last drawn from. A section is rebuilt only when its data changed:
// rebuilding replaces the nodes under the pointer, and a click whose mousedown and mouseup
// land on different (replaced) buttons is lost; a ticked checkbox or a text selection would
// flicker too.
const drawn = {
  header: null,
  regions: null,
  "region-names": null,
  plans: null,
  events: null,
  "open-plans": null,
};

function changed(section, data) {
  const key = JSON.stringify(data);
  if (drawn[section] === key) return false;
  drawn[section] = key;
  return true;
}

function render() {
  if (!state.status) return;
  const s = state.status;
  if (changed("header", [s.controller, s.cooldown_until, s.automatic_actions_last_hour])) {
    renderHeader(s);
  }
  // The form's answer is about the open plans of the moment ("proposed plan-2", "plan-2 is
  // still awaiting approval"): once they change it is stale, and it goes.
  const open = s.plans
    .filter((p) => ["awaiting-approval", "running"].includes(p.state.state))
    .map((p) => [p.id, p.state.state]);
  if (changed("open-plans", open)) proposeMessage("", false);
  if (changed("regions", s.regions)) renderRegions(s);
  if (changed("region-names", s.regions.map((region) => region.name))) renderProposeRegions(s);
  // Not the ticked loss checkboxes: the box shows its own tick, and a redraw then would only
  // replace the Approve button the operator is about to click.
  const plans = [s.plans, [...state.busy], [...state.messages]];
  if (changed("plans", plans)) renderPlans(s);
  if (changed("events", state.eventsVersion)) renderEvents();
}

function notice(text) {
  const node = document.getElementById("notice");
  node.textContent = text || "";
  node.hidden = !text;
}

function connection(name) {
  const node = document.getElementById("connection");
  node.dataset.state = name;
  node.textContent = name;
}

let source = null;
let retryMs = 500;

function connect() {
  if (source) source.close();
  connection("connecting");
  source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    retryMs = 500;
    connection("live");
    notice("");
  });
  source.addEventListener("status", (e) => {
    state.status = JSON.parse(e.data);
    // Every status repeats the recent records; only new ones change the timeline.
    for (const record of state.status.events) {
      if (!(record.seq > 0 && state.events.has(savedKey(record.seq)))) {
        addEvent(record);
      }
    }
    render();
  });
  source.addEventListener("audit", (e) => {
    addEvent(JSON.parse(e.data));
    if (changed("events", state.eventsVersion)) renderEvents();
  });
  source.addEventListener("error", () => {
    // The browser retries by itself while the stream is merely interrupted; once it gives
    // up (CLOSED: e.g. the server answered an error), retry here with a growing pause.
    connection("reconnecting");
    if (source.readyState === EventSource.CLOSED) {
      notice("lost the controller's event stream; reconnecting…");
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, RECONNECT_MAX_MS);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("token");
  input.value = sessionStorage.getItem(TOKEN_KEY) || "";
  input.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, input.value.trim()));
  document.getElementById("propose").addEventListener("submit", propose);
  connect();
});
