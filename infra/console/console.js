// The operator console: a page over the runs API (GET /ops/specs, /ops/runs, /ops/runs/{id},
// /ops/dlq, POST /ops/dlq/replay, POST /ops/{key}). No framework and no build step, so it is
// served from the package as it is. Everything from the server is written with textContent,
// never as HTML; the token lives in sessionStorage (this tab) and travels only in the
// Authorization header, never in a URL.

const TOKEN = "oprunner.token";
const REDACTED = "[REDACTED]";
const view = () => document.getElementById("view");
let stopStream = () => {};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function token() { return sessionStorage.getItem(TOKEN); }

function claims(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch { return null; }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) { signOut("Your token was refused; sign in again."); throw new Error("401"); }
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  return { status: response.status, body };
}

function json(value) { return el("pre", {}, JSON.stringify(value, null, 2)); }

function statusText(status) { return el("span", { class: `status-${status}` }, status); }

function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }

function showWho() {
  const who = document.getElementById("who");
  const c = token() ? claims(token()) : null;
  who.textContent = c ? `${c.sub}${c.tenant ? ` · tenant ${c.tenant}` : ""} · ${c.kind || "user"}` : "";
  document.getElementById("sign-out").hidden = !token();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN);
  stopStream();
  showWho();
  document.getElementById("signin").hidden = false;
  document.getElementById("signin-error").textContent = message || "";
  view().replaceChildren();
}

// -- operations ------------------------------------------------------------------------

let catalog = null;

async function specs() {
  if (catalog === null) catalog = (await api("/ops/specs")).body.specs;
  return catalog;
}

function example(schema, defs) {
  if (!schema) return null;
  if (schema.$ref) return example(defs[schema.$ref.split("/").pop()], defs);
  if (schema.examples && schema.examples.length) return schema.examples[0];
  if (schema.default !== undefined) return schema.default;
  if (schema.enum) return schema.enum[0];
  if (schema.anyOf) return example(schema.anyOf.find((s) => s.type !== "null") || schema.anyOf[0], defs);
  if (schema.type === "object" || schema.properties) {
    const out = {};
    for (const name of schema.required || []) out[name] = example(schema.properties[name], defs);
    return out;
  }
  return { string: "example", number: 1, integer: 1, boolean: false, array: [] }[schema.type] ?? null;
}

async function showSpecs(key, current) {
  const all = await specs();
  if (!current()) return;
  const list = el("ul", { class: "cards" }, all.map((s) => el("li", {},
    el("a", { href: `#/specs/${encodeURIComponent(s.key)}`, "aria-current": s.key === key ? "true" : false },
      el("strong", {}, s.key), " ", el("span", { class: "muted" }, `${s.version} · ${s.kind} · ${s.stability}`),
      el("br"), el("span", { class: "muted" }, s.description)))));
  const chosen = all.find((s) => s.key === key);
  view().replaceChildren(el("h2", {}, "Operations"), el("div", { class: "grid" },
    el("nav", { "aria-label": "Operations" }, list),
    chosen ? specPage(chosen) : el("p", { class: "muted" }, "Choose an operation to see its contract and send it.")));
}

function specPage(s) {
  const rules = s.policy.rules.map((r) => `${r.resource || "-"} ${r.action} if ${r.condition.join(" or ")}`);
  const input = el("textarea", { id: "command-input", rows: 8, spellcheck: "false", "aria-label": "Command input (JSON)" });
  input.value = JSON.stringify(example(s.input, s.input.$defs || {}), null, 2);
  const key = el("input", { id: "idempotency-key", placeholder: "optional", autocomplete: "off" });
  const out = el("div", { id: "send-result", "aria-live": "polite" });
  const send = async (event) => {
    event.preventDefault();
    let data;
    try { data = JSON.parse(input.value); } catch (e) { out.replaceChildren(el("p", { class: "error" }, `Not JSON: ${e.message}`)); return; }
    const headers = { "Content-Type": "application/json" };
    if (key.value) headers["Idempotency-Key"] = key.value;
    const { status, body } = await api(`/ops/${encodeURIComponent(s.key)}?version=${encodeURIComponent(s.version)}`,
      { method: "POST", headers, body: JSON.stringify(data) });
    out.replaceChildren(el("p", {}, `HTTP ${status} · `, body && body.status ? statusText(body.status) : "",
      body && body.commandId ? [" · ", el("a", { href: `#/runs/${encodeURIComponent(body.commandId)}` }, "open the run")] : ""),
      json(body));
  };
  return el("article", {},
    el("h3", {}, `${s.key} ${s.version}`), el("p", {}, s.description),
    el("dl", { class: "facts" },
      el("dt", {}, "kind"), el("dd", {}, s.kind), el("dt", {}, "stability"), el("dd", {}, s.stability),
      el("dt", {}, "owners"), el("dd", {}, s.owners.join(", ") || "–"),
      el("dt", {}, "goal"), el("dd", {}, s.goal || "–"),
      el("dt", {}, "auth"), el("dd", {}, s.policy.auth), el("dt", {}, "rules"), el("dd", {}, rules.join("; ") || "–"),
      el("dt", {}, "partition key"), el("dd", {}, s.partitionKey || "–"),
      el("dt", {}, "sensitive"), el("dd", {}, s.sensitive.join(", ") || "–"),
      el("dt", {}, "error codes"), el("dd", {}, Object.entries(s.errors).map(([c, d]) => `${c}: ${d}`).join("; ") || "–")),
    el("h3", {}, "Send"),
    el("form", { id: "send-form", onsubmit: send },
      el("label", { for: "command-input" }, "Input (JSON)"), input,
      el("label", { for: "idempotency-key" }, "Idempotency key"), key, " ",
      el("button", { type: "submit" }, "Send")),
    out,
    el("details", {}, el("summary", {}, "Input schema"), json(s.input)),
    el("details", {}, el("summary", {}, "Output schema"), json(s.output)));
}

// -- runs ------------------------------------------------------------------------------

const FILTERS = ["op", "status", "correlationId", "actor", "tenant"];

function runRow(r) {
  const open = () => { location.hash = `#/runs/${encodeURIComponent(r.commandId)}`; };
  return el("tr", { tabindex: 0, "data-command": r.commandId, onclick: open,
                    onkeydown: (e) => { if (e.key === "Enter") open(); } },
    el("td", {}, when(r.recordedAt)), el("td", {}, r.op || "(dead letter)"), el("td", {}, statusText(r.status)),
    el("td", { class: "wide" }, r.actorId || "–"), el("td", {}, r.error || ""),
    el("td", { class: "wide" }, r.durationMs === null ? "" : `${r.durationMs} ms`));
}

async function showRuns(query, current) {
  const all = await specs();
  if (!current()) return;
  const form = el("form", { class: "filters", id: "run-filters" },
    el("div", {}, el("label", { for: "f-op" }, "Operation"),
      el("select", { id: "f-op", name: "op" }, el("option", { value: "" }, "any"),
        all.map((s) => el("option", { value: s.key, selected: query.get("op") === s.key }, s.key)))),
    el("div", {}, el("label", { for: "f-status" }, "Status"),
      el("select", { id: "f-status", name: "status" }, el("option", { value: "" }, "any"),
        ["succeeded", "failed", "rejected", "denied"].map((v) => el("option", { value: v, selected: query.get("status") === v }, v)))),
    ["correlationId", "actor", "tenant"].map((name) => el("div", {},
      el("label", { for: `f-${name}` }, name === "correlationId" ? "Correlation id" : name[0].toUpperCase() + name.slice(1)),
      el("input", { id: `f-${name}`, name, value: query.get(name) || "", autocomplete: "off" }))),
    el("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const name of FILTERS) { const v = form.elements[name].value; if (v) q.set(name, v); }
    location.hash = `#/runs?${q}`;
  });
  const rows = el("tbody", { id: "runs-body" });
  const live = el("span", { class: "live", id: "live", "aria-live": "polite" }, "");
  const more = el("button", { type: "button", class: "secondary", hidden: true }, "Older runs");
  const params = new URLSearchParams();
  for (const name of FILTERS) if (query.get(name)) params.set(name, query.get(name));
  let cursor = null;
  const page = async () => {
    const q = new URLSearchParams(params);
    if (cursor) q.set("cursor", cursor);
    const { status, body } = await api(`/ops/runs?${q}`);
    if (status !== 200) { rows.append(el("tr", {}, el("td", { colspan: 6, class: "error" }, body ? body.error : `HTTP ${status}`))); return 0; }
    rows.append(...body.runs.map(runRow));
    cursor = body.next;
    more.hidden = cursor === null;
    return body.runs.length ? body.runs[0].id : 0;
  };
  more.addEventListener("click", page);
  view().replaceChildren(el("h2", {}, "Runs ", live), form,
    el("table", {}, el("thead", {}, el("tr", {}, ["Recorded", "Operation", "Status", "Actor", "Error", "Took"].map(
      (h, i) => el("th", { class: i === 3 || i === 5 ? "wide" : false, scope: "col" }, h)))), rows), more);
  const first = await page();
  if (!current()) return;
  // from the newest entry the first page showed (0: none matched yet), so nothing falls between
  const live_params = new URLSearchParams(params);
  live_params.set("after", String(first));
  stream(live_params, (entry) => {
    if (!rows.querySelector(`tr[data-command="${CSS.escape(entry.commandId)}"]`)) rows.prepend(runRow(entry));
  }, live);
}

function stream(params, onEntry, indicator) {
  const control = new AbortController();
  stopStream();
  stopStream = () => control.abort();
  let lastId = null;
  const connect = async () => {
    while (!control.signal.aborted) {
      try {
        const headers = { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" };
        if (lastId !== null) headers["Last-Event-ID"] = lastId;
        const response = await fetch(`/ops/runs?${params}`, { headers, signal: control.signal });
        if (response.status === 401) { signOut("Your token was refused; sign in again."); return; }
        if (response.status === 400) { indicator.textContent = "not live: the filter was refused"; return; }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        indicator.textContent = "● live";
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const fields = Object.fromEntries(block.split("\n").filter((l) => l && !l.startsWith(":"))
              .map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 2)]));
            if (fields.data) { lastId = fields.id; onEntry(JSON.parse(fields.data)); }
          }
        }
      } catch (e) {
        if (control.signal.aborted) return;
      }
      indicator.textContent = "reconnecting…";
      await new Promise((r) => setTimeout(r, 1000));
    }
  };
  connect();
}

function shownInput(value) {
  if (value && value.omitted) {
    const why = value.why ? `withheld (${value.why})` : "too large to keep";
    return el("p", { class: "redacted" }, `${why}: ${value.bytes} bytes`, value.sha256 ? `, sha256 ${value.sha256}` : "");
  }
  const text = JSON.stringify(value, null, 2) || "null";
  const pre = el("pre", {});
  for (const [i, part] of text.split(`"${REDACTED}"`).entries()) {
    if (i > 0) pre.append(el("span", { class: "redacted", title: "sensitive: not kept" }, REDACTED));
    pre.append(part);
  }
  return pre;
}

async function showRun(id, current) {
  const { status, body } = await api(`/ops/runs/${encodeURIComponent(id)}`);
  if (!current()) return;
  if (status !== 200) { view().replaceChildren(el("h2", {}, "Run"), el("p", { class: "error" }, body ? body.error : `HTTP ${status}`)); return; }
  const result = body.result || {};
  view().replaceChildren(
    el("h2", {}, `Run ${body.commandId}`),
    el("dl", { class: "facts" },
      el("dt", {}, "operation"), el("dd", {}, body.op || "–"), el("dt", {}, "status"), el("dd", {}, statusText(body.status)),
      el("dt", {}, "idempotency key"), el("dd", {}, body.idempotencyKey || "–"),
      el("dt", {}, "attempts"), el("dd", {}, body.attempts ?? "–"),
      el("dt", {}, "created"), el("dd", {}, when(body.createdAt)), el("dt", {}, "completed"), el("dd", {}, when(body.completedAt)),
      el("dt", {}, "correlation id"), el("dd", {}, body.correlationId
        ? el("a", { href: `#/runs?correlationId=${encodeURIComponent(body.correlationId)}` }, body.correlationId) : "–"),
      el("dt", {}, "trace id"), el("dd", {}, body.traceId || "–"),
      el("dt", {}, "caused by"), el("dd", {}, body.causedBy
        ? el("a", { href: `#/runs/${encodeURIComponent(body.causedBy)}` }, body.causedBy) : "–")),
    el("h3", {}, result.error ? "Error" : "Output"), json(result.error || result.output || null),
    el("h3", {}, "Audit trail"),
    ...(body.audit.length ? body.audit.map((a) => el("section", { class: "audit-entry" },
      el("p", {}, when(a.recordedAt), " · ", statusText(a.status), ` · ${a.decision || ""} · attempt ${a.attempt ?? "–"}`,
        a.replayed ? " · replayed" : "", a.reason ? ` · ${a.reason}` : ""),
      el("p", { class: "muted" }, "Input as audited"), shownInput(a.input)))
      : [el("p", { class: "muted" }, "No audit entry visible to you.")]));
}

// -- dead letters ----------------------------------------------------------------------

async function showDlq(current) {
  const { status, body } = await api("/ops/dlq");
  if (!current()) return;
  if (status !== 200) { view().replaceChildren(el("h2", {}, "Dead letters"), el("p", { class: "error" }, body ? body.error : `HTTP ${status}`)); return; }
  const out = el("p", { id: "replay-result", "aria-live": "polite" });
  const rows = body.deadLetters.map((d) => el("tr", {},
    el("td", {}, el("input", { type: "checkbox", "aria-label": `select ${d.partition}/${d.offset}`,
                               "data-partition": d.partition, "data-offset": d.offset })),
    el("td", {}, when(d.at)), el("td", {}, d.code), el("td", {}, d.reason),
    el("td", { class: "wide" }, `${d.bytes} B${d.truncated ? " (cut short)" : ""}`),
    el("td", { class: "wide" }, d.sender ? d.sender.sub : "unknown")));
  const replay = async () => {
    const entries = [...view().querySelectorAll("input[type=checkbox]:checked")].map((c) => ({
      partition: Number(c.dataset.partition), offset: Number(c.dataset.offset) }));
    if (!entries.length) { out.textContent = "Select the dead letters to replay."; return; }
    const r = await api("/ops/dlq/replay", { method: "POST", headers: { "Content-Type": "application/json" },
                                             body: JSON.stringify({ entries }) });
    out.textContent = r.status === 200 ? `Replayed ${r.body.replayed.length}; cut short ${r.body.truncated.length}; not found ${r.body.notFound.length}.`
      : (r.body ? r.body.error : `HTTP ${r.status}`);
  };
  view().replaceChildren(el("h2", {}, "Dead letters"),
    rows.length ? el("table", {}, el("thead", {}, el("tr", {}, ["", "When", "Code", "Reason", "Size", "Sender"].map(
      (h, i) => el("th", { scope: "col", class: i >= 4 ? "wide" : false }, h)))), el("tbody", {}, rows))
      : el("p", { class: "muted" }, "No dead letters."),
    el("button", { type: "button", id: "replay", onclick: replay, hidden: !rows.length }, "Replay selected"), out);
}

// -- overview --------------------------------------------------------------------------

const SAMPLES = 60; // two minutes at one scrape every two seconds
const history = [];

function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v;
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

function sample(metrics, at) {
  const sum = (name, test = () => true) => metrics.filter((m) => m.name === name && test(m.labels))
    .reduce((a, m) => a + m.value, 0);
  const byStatus = {};
  for (const m of metrics.filter((m) => m.name === "oprunner_commands_total")) {
    byStatus[m.labels.status] = (byStatus[m.labels.status] || 0) + m.value;
  }
  const buckets = {};
  for (const m of metrics.filter((m) => m.name === "oprunner_handler_seconds_bucket")) {
    buckets[m.labels.le] = (buckets[m.labels.le] || 0) + m.value;
  }
  return { at, byStatus, total: Object.values(byStatus).reduce((a, b) => a + b, 0), buckets,
           lag: sum("oprunner_consumer_lag"), backlog: sum("oprunner_outbox_backlog") };
}

function quantile(buckets, q) {
  const bounds = Object.keys(buckets).sort((a, b) => (a === "+Inf") - (b === "+Inf") || Number(a) - Number(b));
  const count = buckets["+Inf"] || 0;
  if (!count) return null;
  const bound = bounds.find((le) => buckets[le] >= q * count);
  return bound === "+Inf" ? Infinity : Number(bound);
}

function recent(first, last) { // the handler-time buckets between two samples
  const out = {};
  for (const [le, n] of Object.entries(last.buckets)) out[le] = n - ((first && first.buckets[le]) || 0);
  return out;
}

function spark(values, label) {
  const w = 240, h = 48, max = Math.max(1, ...values);
  const points = values.map((v, i) => `${(i / Math.max(1, values.length - 1)) * w},${h - (v / max) * (h - 4) - 2}`);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  for (const [k, v] of Object.entries({ viewBox: `0 0 ${w} ${h}`, width: w, height: h, role: "img", "aria-label": label })) svg.setAttribute(k, v);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#1f5fbf");
  line.setAttribute("stroke-width", "2");
  svg.append(line);
  return svg;
}

function ms(seconds) {
  if (seconds === null) return "–";
  return seconds === Infinity ? "> largest bucket" : `≤ ${Math.round(seconds * 1000 * 10) / 10} ms`;
}

async function showOverview(current) {
  const box = el("div", { id: "overview" });
  view().replaceChildren(el("h2", {}, "Overview"), el("p", { class: "muted" },
    "From this service's /metrics, every 2 s (all workers); rates over the last two minutes seen here."), box);
  const control = new AbortController();
  stopStream = () => control.abort();
  while (!control.signal.aborted && current()) {
    try {
      const response = await fetch("/metrics", { signal: control.signal });
      history.push(sample(parseMetrics(await response.text()), Date.now()));
      if (history.length > SAMPLES) history.shift();
      const last = history[history.length - 1];
      const rates = history.slice(1).map((s, i) => Math.max(0, (s.total - history[i].total) / ((s.at - history[i].at) / 1000)));
      const window = recent(history.length > 1 ? history[0] : null, last);
      const statuses = ["succeeded", "failed", "rejected", "denied"];
      const most = Math.max(1, ...statuses.map((k) => last.byStatus[k] || 0));
      box.replaceChildren(
        el("section", { class: "tile" }, el("h3", {}, "Throughput"),
          el("p", { id: "throughput" }, `${(rates[rates.length - 1] || 0).toFixed(1)} commands/s`), spark(rates, "commands per second")),
        el("section", { class: "tile" }, el("h3", {}, "Outcomes since start"),
          el("table", { id: "outcomes" }, el("tbody", {}, statuses.map((k) => el("tr", {},
            el("th", { scope: "row" }, statusText(k)), el("td", {}, String(last.byStatus[k] || 0)),
            el("td", {}, el("meter", { min: 0, max: most, value: last.byStatus[k] || 0, "aria-label": k }))))))),
        el("section", { class: "tile" }, el("h3", {}, "Handler time"),
          el("p", { id: "handler-time" }, `p50 ${ms(quantile(window, 0.5))} · p99 ${ms(quantile(window, 0.99))}`)),
        el("section", { class: "tile" }, el("h3", {}, "Consumer lag"),
          el("p", { id: "lag" }, `${last.lag} messages`), spark(history.map((s) => s.lag), "consumer lag")),
        el("section", { class: "tile" }, el("h3", {}, "Outbox backlog"),
          el("p", { id: "backlog" }, `${last.backlog} rows`), spark(history.map((s) => s.backlog), "outbox backlog")));
    } catch (e) {
      if (control.signal.aborted) return;
      box.replaceChildren(el("p", { class: "error" }, `Could not read /metrics: ${e.message}`));
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// -- routing ---------------------------------------------------------------------------

let generation = 0; // a view still loading when the route changes must not draw over the next

async function route() {
  stopStream();
  stopStream = () => {};
  const mine = ++generation;
  if (!token()) { signOut(); return; }
  document.getElementById("signin").hidden = true;
  try {
    const [path, search] = (location.hash.slice(1) || "/runs").split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    for (const a of document.querySelectorAll("nav a[data-view]")) {
      if (a.dataset.view === parts[0]) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    const current = () => mine === generation;
    if (parts[0] === "specs") await showSpecs(parts[1], current);
    else if (parts[0] === "runs" && parts.length > 1) await showRun(parts.slice(1).join("/"), current);
    else if (parts[0] === "dlq") await showDlq(current);
    else if (parts[0] === "overview") await showOverview(current);
    else await showRuns(new URLSearchParams(search || ""), current);
  } catch (e) {
    if (e.message !== "401" && mine === generation) {
      view().replaceChildren(el("p", { class: "error" }, `Could not load: ${e.message}`));
    }
  }
}

document.getElementById("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = document.getElementById("token").value.trim().replace(/^Bearer\s+/i, "");
  if (!claims(value)) { document.getElementById("signin-error").textContent = "That is not a JWT."; return; }
  sessionStorage.setItem(TOKEN, value);
  document.getElementById("token").value = "";
  showWho();
  route();
});
document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
showWho();
route();
