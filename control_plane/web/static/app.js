// flyte-fleet dashboard: read-only views of the control plane's JSON API (/api/...).
// Plain JavaScript, no build step. Everything from the server is inserted as text
// (textContent), never as HTML. The API key lives in sessionStorage (this tab only) and
// travels in the Authorization header, never in a URL.
"use strict";

(() => {
  const KEY = "fleet.apiKey";
  const REFRESH_MS = 4000;
  const PHASES = ["queued", "scheduled", "running", "succeeded", "failed", "cancelled"];
  const TIERS = ["reserved", "on_demand", "spot"];
  const LIVE = new Set(["queued", "scheduled", "running"]);

  let refreshTimer = null;
  let generation = 0; // bumped on every route change: late answers of an old view are dropped

  class SignedOut extends Error {}

  // -- small DOM helpers ---------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name === "data") Object.assign(node.dataset, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const $ = (id) => document.getElementById(id);
  const badge = (word) => el("span", { class: `badge ${word}`, text: word.replace("_", " ") });
  const tier = (word) => el("span", { class: `tier ${word}`, text: word.replace("_", "-") });
  const jobLink = (id) => el("a", { href: `#/jobs/${encodeURIComponent(id)}`, class: "mono", text: id });

  function table(columns, rows, empty, rowProps) {
    const head = el("tr", null, columns.map((c) => el("th", { class: c.class, text: c.title })));
    const body = rows.length
      ? rows.map((row) => el("tr", rowProps ? rowProps(row) : null,
          columns.map((c) => el("td", { class: c.class }, c.cell(row)))))
      : [el("tr", null, el("td", { class: "empty", colspan: columns.length, text: empty }))];
    return el("div", { class: "table-wrap" }, el("table", null, el("thead", null, head), el("tbody", null, body)));
  }

  function when(iso) {
    if (!iso) return el("span", { class: "muted", text: "—" });
    const date = new Date(iso);
    return el("span", { title: iso, text: `${date.toLocaleString()} (${ago((Date.now() - date) / 1000)})` });
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    const s = Math.max(0, seconds);
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    if (s < 172800) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function bar(used, total, kind) {
    const fill = el("span");
    fill.style.width = `${total ? Math.round((100 * used) / total) : 0}%`; // CSSOM: allowed by the CSP
    return el("div", { class: `bar ${kind}`, role: "img", "aria-label": `${used} of ${total} GPUs in use` }, fill);
  }

  // -- the API -------------------------------------------------------------------------------

  async function api(path) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY);
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(path, { headers, cache: "no-store", credentials: "omit" });
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    const message = (body && body.error) || `${response.status} ${response.statusText}`;
    if (response.status === 401) {
      showLogin(key ? message : "");
      throw new SignedOut(message);
    }
    if (!response.ok) {
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // -- sign in -------------------------------------------------------------------------------

  function showLogin(problem) {
    stopRefresh();
    $("login").hidden = false;
    $("nav").hidden = true;
    $("view").replaceChildren();
    $("banner").hidden = true;
    $("who").textContent = "";
    $("sign-out").hidden = true;
    $("login-error").textContent = problem || "";
    $("api-key").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    $("api-key").value = "";
    await start();
  }

  function signOut() {
    sessionStorage.removeItem(KEY);
    showLogin("");
  }

  async function start() {
    let me;
    try {
      me = await api("/api/whoami");
    } catch (error) {
      if (!(error instanceof SignedOut)) showBanner(error.message);
      return;
    }
    $("login").hidden = true;
    $("nav").hidden = false;
    $("sign-out").hidden = !me.auth;
    $("who").textContent = me.auth
      ? `${me.name} · ${me.role} · ${me.projects.join(", ")}`
      : "auth off (local)";
    route();
  }

  function showBanner(message) {
    $("banner").textContent = message;
    $("banner").hidden = !message;
  }

  // -- routing -------------------------------------------------------------------------------

  function stopRefresh() {
    if (refreshTimer !== null) clearInterval(refreshTimer);
    refreshTimer = null;
    generation += 1;
  }

  function route() {
    if (!$("login").hidden) return;
    const hash = location.hash.replace(/^#\/?/, "");
    const [path, query] = hash.split("?");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    const params = new URLSearchParams(query || "");
    let view;
    if (parts[0] === "jobs" && parts[1]) view = jobView(parts[1]);
    else if (parts[0] === "jobs") view = jobsView(params);
    else if (parts[0] === "policy") view = policyView(parts[1]);
    else view = dataplanesView();
    for (const link of document.querySelectorAll("#nav a")) {
      link.classList.toggle("active", link.dataset.view === (parts[0] || "dataplanes"));
    }
    mount(view);
  }

  // A view: { title, root (an element), refresh: async () => ..., live: refresh periodically }
  function mount(view) {
    stopRefresh();
    const mine = generation;
    document.title = `${view.title} · flyte-fleet`;
    $("view").replaceChildren(view.root);
    showBanner("");
    let busy = false;
    const run = async () => {
      if (busy || mine !== generation) return;
      busy = true;
      try {
        await view.refresh(() => mine === generation);
        if (mine === generation) {
          showBanner("");
          $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
        }
      } catch (error) {
        if (!(error instanceof SignedOut) && mine === generation) showBanner(error.message);
      } finally {
        busy = false;
      }
    };
    run();
    if (view.live) refreshTimer = setInterval(run, REFRESH_MS);
  }

  // -- dataplanes ----------------------------------------------------------------------------

  function dataplanesView() {
    const summary = el("div", { class: "summary" });
    const regions = el("div", { id: "regions" });
    const root = el("div", null, el("h1", { text: "Dataplanes" }), summary, regions);
    return {
      title: "Dataplanes",
      root,
      live: true,
      async refresh(current) {
        const data = await api("/api/dataplanes");
        if (!current()) return;
        summary.replaceChildren(...fleetSummary(data.dataplanes));
        const byRegion = new Map();
        for (const dp of data.dataplanes) {
          if (!byRegion.has(dp.region)) byRegion.set(dp.region, []);
          byRegion.get(dp.region).push(dp);
        }
        const sections = [...byRegion.keys()].sort().map((region) => {
          const dps = byRegion.get(region);
          const clouds = [...new Set(dps.map((d) => d.cloud))].join(", ");
          return el("section", { class: "region", data: { region } },
            el("div", { class: "region-head" },
              el("h2", { text: region }),
              el("span", { class: "muted", text: `${clouds} · ${dps.length} dataplane${dps.length === 1 ? "" : "s"}` })),
            el("div", { class: "grid" }, dps.map(dataplaneCard)));
        });
        regions.replaceChildren(...(sections.length ? sections
          : [el("div", { class: "panel empty", text: "No dataplane has registered yet." })]));
      },
    };
  }

  function fleetSummary(dataplanes) {
    const totals = new Map(TIERS.map((t) => [t, { total: 0, free: 0 }]));
    for (const dp of dataplanes) {
      for (const pool of dp.pools) {
        const sum = totals.get(pool.tier) || { total: 0, free: 0 };
        sum.total += pool.gpu_total;
        sum.free += pool.gpu_free;
        totals.set(pool.tier, sum);
      }
    }
    const health = (word) => dataplanes.filter((d) => d.health === word).length;
    const cards = [el("div", { class: "panel stat" },
      el("div", { class: "label", text: "Dataplanes" }),
      el("div", { class: "value", text: String(dataplanes.length) }),
      el("div", { class: "muted" },
        `${health("healthy")} healthy · ${health("stale")} stale · ${health("lost")} lost`))];
    for (const [word, sum] of totals) {
      if (!sum.total) continue;
      cards.push(el("div", { class: "panel stat", data: { tier: word } },
        el("div", { class: "label" }, tier(word), " GPUs"),
        el("div", { class: "value", text: `${sum.free} / ${sum.total} free` }),
        bar(sum.total - sum.free, sum.total, word)));
    }
    return cards;
  }

  function dataplaneCard(dp) {
    const heartbeat = dp.heartbeat_age_s === null ? "no heartbeat yet" : `heartbeat ${ago(dp.heartbeat_age_s)}`;
    const meta = [dp.cloud, heartbeat, dp.connected ? "connected" : "not connected",
      `${dp.active_attempts} running`];
    if (dp.agent_version) meta.push(`agent ${dp.agent_version}`);
    const pools = dp.pools.map((pool) => el("div", { class: "pool", data: { pool: pool.name } },
      el("div", { class: "pool-line" },
        el("span", null, el("strong", { text: pool.name }), " ", tier(pool.tier), " ",
          el("span", { class: "muted", text: `${pool.gpu_model} ${pool.gpu_memory_gb} GB${pool.interconnect ? " · " + pool.interconnect : ""}` })),
        el("span", { class: "free", text: `${pool.gpu_free} / ${pool.gpu_total} free` })),
      bar(pool.gpu_total - pool.gpu_free, pool.gpu_total, pool.tier)));
    return el("article", { class: `panel dp ${dp.health}`, data: { dataplane: dp.name } },
      el("div", { class: "dp-head" },
        el("h3", { text: dp.name }), badge(dp.health), dp.state !== "active" ? badge(dp.state) : null),
      el("div", { class: "dp-meta", text: meta.join(" · ") }),
      dp.unavailable_because ? el("div", { class: "dp-why", text: dp.unavailable_because }) : null,
      pools.length ? pools : el("div", { class: "muted", text: "No pools reported." }));
  }

  // -- the job list --------------------------------------------------------------------------

  function jobsView(params) {
    const filters = { project: params.get("project") || "", phase: params.get("phase") || "",
      dataplane: params.get("dataplane") || "" };
    const tokens = [""]; // the page tokens from the newest page to the one shown
    const setFilter = (name, value) => {
      const next = new URLSearchParams({ ...filters, [name]: value });
      for (const [k, v] of [...next]) if (!v) next.delete(k);
      const query = next.toString();
      location.hash = `#/jobs${query ? "?" + query : ""}`;
    };
    const project = el("input", { id: "filter-project", value: filters.project, placeholder: "any",
      spellcheck: "false", onchange: (e) => setFilter("project", e.target.value.trim()) });
    const phase = el("select", { id: "filter-phase", onchange: (e) => setFilter("phase", e.target.value) },
      el("option", { value: "", text: "any" }),
      PHASES.map((p) => el("option", { value: p, text: p, selected: p === filters.phase })));
    const dataplane = el("select", { id: "filter-dataplane", onchange: (e) => setFilter("dataplane", e.target.value) },
      el("option", { value: "", text: "any" }),
      filters.dataplane ? el("option", { value: filters.dataplane, text: filters.dataplane, selected: true }) : null);
    const list = el("div", { id: "job-list" });
    const newer = el("button", { type: "button", disabled: true, text: "← Newer" });
    const older = el("button", { type: "button", disabled: true, text: "Older →" });
    const position = el("span", { class: "muted" });
    let nextToken = "";
    let view;
    newer.addEventListener("click", () => { if (tokens.length > 1) { tokens.pop(); view.reload(); } });
    older.addEventListener("click", () => { if (nextToken) { tokens.push(nextToken); view.reload(); } });
    const root = el("div", null,
      el("h1", { text: "Jobs" }),
      el("div", { class: "filters" },
        el("label", null, "Project", project),
        el("label", null, "Phase", phase),
        el("label", null, "Dataplane", dataplane),
        el("button", { type: "button", text: "Clear", onclick: () => { location.hash = "#/jobs"; } })),
      list,
      el("div", { class: "pager" }, position, newer, older));
    // The dataplane filter offers the registered dataplanes (once per visit).
    api("/api/dataplanes").then((data) => {
      for (const dp of data.dataplanes) {
        if (dp.name !== filters.dataplane) dataplane.append(el("option", { value: dp.name, text: dp.name }));
      }
    }).catch(() => {});
    view = {
      title: "Jobs",
      root,
      live: true,
      reload: () => mountRefresh(),
      async refresh(current) {
        const query = new URLSearchParams({ page_size: "50" });
        for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
        const token = tokens[tokens.length - 1];
        if (token) query.set("page_token", token);
        const data = await api(`/api/jobs?${query}`);
        if (!current()) return;
        nextToken = data.next_page_token;
        older.disabled = !nextToken;
        newer.disabled = tokens.length <= 1;
        position.textContent = `page ${tokens.length}`;
        list.replaceChildren(table([
          { title: "Job", cell: (j) => jobLink(j.id) },
          { title: "Project", cell: (j) => j.project },
          { title: "Name", cell: (j) => j.name || el("span", { class: "muted", text: "—" }) },
          { title: "Phase", cell: (j) => badge(j.phase) },
          { title: "Dataplane", class: "dataplane", cell: (j) => j.dataplane || el("span", { class: "muted", text: "—" }) },
          { title: "Pool", cell: (j) => j.pool },
          { title: "GPUs", class: "num", cell: (j) => `${j.gpus}${j.gpu_model ? " × " + j.gpu_model : ""}` },
          { title: "Submitted", cell: (j) => when(j.created_at) },
          { title: "Message", class: "msg", cell: (j) => j.message },
        ], data.jobs, "No jobs match these filters.", (j) => ({ data: { jobId: j.id } })));
      },
    };
    const mountRefresh = () => view.refresh(() => true).catch((e) => showBanner(e.message));
    return view;
  }

  // -- one job -------------------------------------------------------------------------------

  function jobView(jobId) {
    const head = el("div");
    const facts = el("div");
    const attempts = el("div", { id: "attempts" });
    const explanation = el("div", { id: "explanation" });
    const events = el("div", { id: "events" });
    const logText = el("pre", { id: "log", text: "…" });
    const logInfo = el("span", { class: "muted" });
    let phase = "";
    let logBusy = false;
    const loadLog = async () => {
      if (logBusy) return;
      logBusy = true;
      try {
        const data = await api(`/api/jobs/${encodeURIComponent(jobId)}/log`);
        const atBottom = logText.scrollTop + logText.clientHeight >= logText.scrollHeight - 4;
        logText.textContent = data.text || "(empty so far)";
        logInfo.textContent = `attempt ${data.attempt_id} on ${data.dataplane}, last 64 KiB`;
        if (atBottom) logText.scrollTop = logText.scrollHeight;
      } catch (error) {
        if (!(error instanceof SignedOut)) logText.textContent = error.message;
      } finally {
        logBusy = false;
      }
    };
    const root = el("div", null,
      el("p", null, el("a", { href: "#/jobs", text: "← Jobs" })),
      head, facts,
      el("div", { class: "section-head" }, el("h2", { text: "Attempts" })), attempts,
      el("div", { class: "section-head" }, el("h2", { text: "Routing" })), explanation,
      el("div", { class: "section-head" }, el("h2", { text: "Log tail" }), logInfo,
        el("button", { type: "button", text: "Reload", onclick: loadLog })),
      logText,
      el("div", { class: "section-head" }, el("h2", { text: "Events" })), events);
    let first = true;
    return {
      title: jobId,
      root,
      live: true,
      async refresh(current) {
        const data = await api(`/api/jobs/${encodeURIComponent(jobId)}`);
        if (!current()) return;
        const job = data.job;
        const wasLive = LIVE.has(phase) || first;
        phase = job.phase;
        renderJob(job, head, facts);
        attempts.replaceChildren(attemptTable(job.attempts));
        explanation.replaceChildren(...explanationParts(data.explanation));
        events.replaceChildren(eventTable(data.events, data.events_cut));
        // The log comes from the agent on request: while the job lives, and once after.
        if (job.attempts.length && (wasLive || LIVE.has(job.phase))) loadLog();
        else if (!job.attempts.length) logText.textContent = "No attempt yet: the log appears once the job is placed.";
        first = false;
      },
    };
  }

  function renderJob(job, head, facts) {
    head.replaceChildren(el("div", { class: "job-head" },
      el("h1", { text: job.id }), badge(job.phase),
      el("span", { class: "muted", text: `${job.project} / ${job.domain}${job.name ? " / " + job.name : ""}` })));
    const spec = job.spec;
    const item = (label, value) => el("div", null,
      el("dt", { text: label }), el("dd", null, value === "" || value === null ? "—" : value));
    const resources = `${spec.gpus} GPU${spec.gpus === 1 ? "" : "s"}${spec.gpu_model ? " × " + spec.gpu_model : ""}` +
      (spec.min_gpu_memory_gb ? `, ≥ ${spec.min_gpu_memory_gb} GB` : "");
    facts.replaceChildren(
      el("div", { class: "panel" },
        job.message ? el("p", { class: "explain-summary", text: job.message }) : null,
        el("dl", { class: "facts" },
          item("Dataplane / pool", job.dataplane ? `${job.dataplane} / ${job.pool}` : ""),
          item("Resources", resources),
          item("Retries", `${job.retries_used} of ${job.retry_budget} used`),
          item("Priority", String(job.priority)),
          item("Submitted", when(job.created_at)),
          item("Started", when(job.started_at)),
          item("Finished", when(job.finished_at)),
          item("Submitted by", job.submitted_by),
          item("Origin region", spec.origin_region),
          item("Spot", spec.allow_spot === null ? "policy decides" : spec.allow_spot ? "allowed" : "not allowed"),
          item("Pinned to", spec.pin_dataplane),
          item("Image", spec.image),
          item("Labels", Object.entries(spec.labels).map(([k, v]) => `${k}=${v}`).join(", ")),
          item("Environment", spec.env_names.join(", ")),
          item("Timeout", spec.timeout)),
        el("dl", { class: "facts wide" },
          item("Command", el("pre", { class: "doc command", text: spec.command.map(shellQuoted).join(" ") })))));
  }

  // An argument as a shell would need it, so the command reads as it was given.
  function shellQuoted(arg) {
    return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'"'"'`)}'`;
  }

  function attemptTable(attempts) {
    return table([
      { title: "Attempt", cell: (a) => el("span", { class: "mono", text: a.id }) },
      { title: "Epoch", class: "num", cell: (a) => String(a.epoch) },
      { title: "Dataplane", cell: (a) => a.dataplane },
      { title: "Pool", cell: (a) => a.pool },
      { title: "GPUs", class: "num", cell: (a) => String(a.gpus) },
      { title: "Phase", cell: (a) => badge(a.phase) },
      { title: "Reason", cell: (a) => a.reason },
      { title: "Exit", class: "num", cell: (a) => (a.exit_code === null ? "" : String(a.exit_code)) },
      { title: "Started", cell: (a) => when(a.started_at || a.created_at) },
      { title: "Finished", cell: (a) => when(a.finished_at) },
      { title: "Message", class: "msg", cell: (a) => a.message },
    ], [...attempts].reverse(), "No attempt yet.", (a) => ({ data: { attemptId: a.id } }));
  }

  function explanationParts(explanation) {
    return [
      el("p", { class: "explain-summary" },
        el("strong", { text: explanation.summary }),
        el("span", { class: "muted", text: ` · rule ${explanation.rule} (priority ${explanation.priority}), policy version ${explanation.policy_version || "built-in default"}` })),
      table([
        { title: "", cell: (c) => (c.chosen ? badge("chosen") : "") },
        { title: "Dataplane", cell: (c) => c.dataplane },
        { title: "Pool", cell: (c) => c.pool },
        { title: "Region", cell: (c) => c.region },
        { title: "Tier", cell: (c) => (c.tier ? tier(c.tier) : "") },
        { title: "Reason", class: "msg", cell: (c) => c.reason },
      ], explanation.candidates, "No pool is registered.",
      (c) => ({ class: c.chosen ? "chosen" : null, data: { candidate: `${c.dataplane}/${c.pool}` } })),
    ];
  }

  function eventTable(events, cut) {
    const shown = table([
      { title: "#", class: "num", cell: (e) => String(e.seq) },
      { title: "At", cell: (e) => when(e.at) },
      { title: "Phase", cell: (e) => badge(e.phase) },
      { title: "Event", cell: (e) => e.kind },
      { title: "Attempt", cell: (e) => el("span", { class: "mono", text: e.attempt_id }) },
      { title: "Message", class: "msg", cell: (e) => e.message },
    ], [...events].reverse(), "No events.");
    return cut ? el("div", null, el("p", { class: "muted", text: "The first 500 events:" }), shown) : shown;
  }

  // -- policy --------------------------------------------------------------------------------

  function policyView(version) {
    const shown = el("div", { id: "policy-current" });
    const history = el("div", { id: "policy-history" });
    const root = el("div", null, el("h1", { text: "Routing policy" }), shown,
      el("div", { class: "section-head" }, el("h2", { text: "History" })), history);
    let shownKey = "";
    return {
      title: "Policy",
      root,
      live: true,
      async refresh(current) {
        const data = await api("/api/policy");
        const chosen = version ? await api(`/api/policy/versions/${encodeURIComponent(version)}`) : data.current;
        // Drawn again only when a version was applied: a reader keeps their place.
        const key = JSON.stringify([data.history.map((v) => v.version), chosen && chosen.version]);
        if (!current() || key === shownKey) return;
        shownKey = key;
        const currentVersion = data.current ? data.current.version : 0;
        if (!chosen) {
          shown.replaceChildren(el("div", { class: "panel" },
            el("p", { text: "No policy applied yet: the built-in default routes every job to any tier (reserved, then on-demand, then spot)." })));
        } else {
          shown.replaceChildren(el("div", { class: "panel" },
            el("div", { class: "job-head" },
              el("h2", { text: `Version ${chosen.version}` }),
              chosen.version === currentVersion ? badge("active") : el("a", { href: "#/policy", text: `current is version ${currentVersion}` })),
            el("p", { class: "muted", text: `${chosen.author || "unknown"} · ${new Date(chosen.created_at).toLocaleString()}${chosen.comment ? " · " + chosen.comment : ""}` }),
            el("pre", { class: "doc", id: "policy-document", text: chosen.document })));
        }
        history.replaceChildren(table([
          { title: "Version", cell: (v) => el("a", { href: `#/policy/${v.version}`, text: String(v.version) }) },
          { title: "", cell: (v) => (v.version === currentVersion ? badge("active") : "") },
          { title: "Applied", cell: (v) => when(v.created_at) },
          { title: "By", cell: (v) => v.author },
          { title: "Comment", class: "msg", cell: (v) => v.comment },
        ], data.history, "No versions yet.", (v) => ({ data: { version: String(v.version) } })));
      },
    };
  }

  // -- start ---------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    window.addEventListener("hashchange", route);
    start();
  });
})();
