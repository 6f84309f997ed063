// splitmesh explorer: a read-only view of the coordinator's JSON API (no framework, no build step).
//
// Routes (hash): #/jobs[?status=&client=&node=&model=&offset=], #/jobs/ID, #/nodes[?offset=], #/nodes/ADDRESS.
// Every string from the API reaches the DOM through textContent or setAttribute, never innerHTML.
// Wei amounts arrive as decimal strings and are formatted with BigInt (they exceed 2**53).
"use strict";

(() => {
  const POLL_MS = 2000; // live refresh of the current page
  const STATUS_POLL_MS = 4000; // the header's status pill
  const JOB_PAGE = 25; // jobs per page
  const NODE_PAGE = 100; // nodes per page
  const JOB_STATUSES = ["open", "committed", "disputed", "finalized", "cancelled"];
  const ADDRESS_RE = /^0x[0-9a-fA-F]{40}$/;

  const view = document.getElementById("view");
  const banner = document.getElementById("banner");
  const statusPill = document.getElementById("status");

  // ------------------------------------------------------------------ DOM helpers

  // h("a", {class: "x", href: "#", data: {jobId: 3}}, "text", child, ...): children are nodes or text.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "data") for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (value === true) el.setAttribute(key, "");
      else el.setAttribute(key, String(value));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  // ------------------------------------------------------------------ formatting

  function groupDigits(digits) {
    return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  // value / 10**decimals with at most maxFrac fraction digits (truncated), and whether digits were cut.
  function units(value, decimals, maxFrac) {
    const negative = value < 0n;
    const abs = negative ? -value : value;
    const base = 10n ** BigInt(decimals);
    const whole = groupDigits((abs / base).toString());
    const fullFrac = decimals ? (abs % base).toString().padStart(decimals, "0") : "";
    const frac = fullFrac.slice(0, maxFrac).replace(/0+$/, "");
    const cut = /[1-9]/.test(fullFrac.slice(maxFrac));
    return { text: (negative ? "-" : "") + whole + (frac ? "." + frac : ""), cut };
  }

  // "1.8 ETH", "640 gwei", "12 wei": the unit that keeps the number readable; exact wei on hover.
  function formatWei(raw) {
    let value;
    try {
      value = BigInt(raw);
    } catch (_) {
      return { text: String(raw), approx: false };
    }
    if (value === 0n) return { text: "0", approx: false };
    const abs = value < 0n ? -value : value;
    let out;
    if (abs >= 10n ** 15n) out = { ...units(value, 18, 6), unit: "ETH" };
    else if (abs >= 10n ** 6n) out = { ...units(value, 9, 3), unit: "gwei" };
    else out = { ...units(value, 0, 0), unit: "wei" };
    return { text: out.text + " " + out.unit, approx: out.cut };
  }

  function formatWeiText(raw) {
    return formatWei(raw).text;
  }

  // An amount: readable text, the exact wei in data-wei and on hover; dotted underline if rounded.
  function money(raw, extraClass) {
    const missing = raw === null || raw === undefined;
    const f = missing ? { text: "—", approx: false } : formatWei(raw);
    const cls = ["wei", extraClass, String(raw ?? "0") === "0" ? "zero" : null, f.approx ? "approx" : null];
    return h(
      "span",
      {
        class: cls.filter(Boolean).join(" "),
        data: { wei: raw ?? "0" },
        title: groupDigits(String(raw ?? "0")) + " wei",
      },
      f.text,
    );
  }

  // "hops 1, 3" from a bit mask over route positions.
  function hopsOf(mask, count) {
    const hops = [];
    for (let i = 0; i < count; i++) if ((mask >> i) & 1) hops.push(i + 1);
    return hops.length ? (hops.length > 1 ? "hops " : "hop ") + hops.join(", ") : "none";
  }

  function shortHex(value, head = 6, tail = 4) {
    const s = String(value);
    return s.length > head + tail + 1 ? s.slice(0, head) + "…" + s.slice(-tail) : s;
  }

  // A node address links to its page; other addresses (clients, verifiers that are not nodes) are text.
  function addr(address, { link = true } = {}) {
    if (!address) return h("span", { class: "muted" }, "—");
    const attrs = { class: "mono addr", title: address };
    if (!link) return h("span", attrs, shortHex(address));
    return h("a", { ...attrs, href: "#/nodes/" + encodeURIComponent(address) }, shortHex(address));
  }

  // A short hash with the full one on hover; extra attributes also go on the "—" of a missing hash.
  function hash(value, extra) {
    if (!value) return h("span", { ...(extra || {}), class: ((extra && extra.class) || "") + " muted" }, "—");
    return h("span", { class: "mono hash", title: value, ...(extra || {}) }, shortHex(value, 6, 4));
  }

  function fmtTime(unixSeconds) {
    if (unixSeconds === null || unixSeconds === undefined) return "—";
    const d = new Date(Number(unixSeconds) * 1000);
    if (Number.isNaN(d.getTime())) return String(unixSeconds);
    return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function fmtNumber(n) {
    return n === null || n === undefined ? "—" : groupDigits(String(n));
  }

  function fmtParam(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "number" && value !== 0 && Math.abs(value) < 1e-3) return value.toExponential();
    return String(value);
  }

  function badge(status, kind) {
    return h("span", { class: `badge badge-${kind || status}` }, status);
  }

  function dl(rows) {
    return h(
      "dl",
      { class: "facts" },
      rows.filter(Boolean).map(([term, value, attrs]) => [h("dt", {}, term), h("dd", attrs || {}, value)]),
    );
  }

  function card(title, body, attrs) {
    return h("section", { class: "card", ...(attrs || {}) }, title ? h("h2", { class: "card-title" }, title) : null, body);
  }

  // ------------------------------------------------------------------ API and errors

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path) {
    let response;
    try {
      response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
    } catch (_) {
      throw new ApiError(0, `the coordinator does not answer (${path}); is it running?`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      // a proxy's HTML error page, an empty body...
    }
    if (!response.ok) {
      const message = body && typeof body.error === "string" ? body.error : response.statusText;
      throw new ApiError((body && body.status) || response.status, `${response.status}: ${message}`);
    }
    if (body === null) throw new ApiError(response.status, `${path} did not return JSON`);
    return body;
  }

  const errors = new Map(); // source -> message

  function setError(source, message) {
    if (message) errors.set(source, message);
    else errors.delete(source);
    clear(banner);
    banner.hidden = errors.size === 0;
    for (const [key, text] of errors) {
      banner.appendChild(
        h(
          "div",
          { class: "banner-row" },
          h("span", { class: "banner-icon", "aria-hidden": "true" }, "!"),
          h("span", { class: "banner-text" }, text),
          h("button", { class: "banner-close", type: "button", title: "Dismiss", onclick: () => setError(key, null) }, "×"),
        ),
      );
    }
  }

  // Calls fn now and then every ms until stopped; only the latest call's result is applied.
  function poller(fn, ms) {
    let timer = null;
    let stopped = false;
    let seq = 0;
    const run = async () => {
      clearTimeout(timer);
      const mine = ++seq;
      try {
        await fn(() => !stopped && mine === seq);
      } finally {
        if (!stopped && mine === seq) timer = setTimeout(run, ms);
      }
    };
    run();
    return {
      now: run,
      stop() {
        stopped = true;
        clearTimeout(timer);
      },
    };
  }

  // ------------------------------------------------------------------ status pill

  function renderStatus(s) {
    const follower = s.follower || {};
    const parts = [`chain ${s.chain_id}`, s.synced_block === null ? "not synced" : `block ${fmtNumber(s.synced_block)}`];
    if (follower.head !== null && follower.head !== undefined && s.synced_block !== null && follower.head > s.synced_block) {
      parts.push(`${follower.head - s.synced_block} behind`);
    }
    let kind = "ok";
    if (follower.last_error) {
      kind = "error";
      parts.push("sync error: " + follower.last_error);
    }
    statusPill.className = "pill pill-" + kind;
    statusPill.querySelector(".pill-text").textContent = parts.join(" · ");
    const title = [
      `JobMarket ${s.market || s.market_address || "?"}`,
      `${s.jobs} jobs, ${s.nodes} nodes, ${s.events} events indexed`,
      s.keeper ? `keeper ${s.keeper}` : "keeper off",
      follower.last_error ? `last error: ${follower.last_error}` : null,
    ].filter(Boolean);
    statusPill.title = title.join("\n");
    statusPill.dataset.syncedBlock = String(s.synced_block);
  }

  poller(async () => {
    try {
      renderStatus(await api("/api/status"));
      setError("status", null);
    } catch (err) {
      statusPill.className = "pill pill-error";
      statusPill.querySelector(".pill-text").textContent = "offline";
      setError("status", err.message);
    }
  }, STATUS_POLL_MS);

  // ------------------------------------------------------------------ shared pieces

  function pager(id) {
    const info = h("span", { class: "pager-info" });
    const prev = h("button", { class: "btn", type: "button", "data-pager": "prev" }, "← Newer");
    const next = h("button", { class: "btn", type: "button", "data-pager": "next" }, "Older →");
    const el = h("div", { class: "pager", id }, info, h("div", { class: "pager-buttons" }, prev, next));
    return {
      el,
      prev,
      next,
      update(page, noun) {
        const first = page.total === 0 ? 0 : page.offset + 1;
        const last = page.offset + page.items.length;
        info.textContent = page.total === 0 ? `no ${noun}` : `${first}–${last} of ${fmtNumber(page.total)} ${noun}`;
        prev.disabled = page.offset === 0;
        next.disabled = page.next_offset === null || page.next_offset === undefined;
        el.dataset.total = String(page.total);
      },
    };
  }

  function routeCell(route) {
    const out = h("span", { class: "route-inline" });
    route.forEach((node, i) => {
      if (i) out.appendChild(h("span", { class: "arrow", "aria-hidden": "true" }, "→"));
      out.appendChild(addr(node));
    });
    return out;
  }

  function jobRow(job) {
    const statusCell = h("td", { class: "status-cell" }, badge(job.status));
    if (job.dispute) statusCell.appendChild(h("span", { class: "tag tag-dispute", title: "dispute reason" }, job.dispute));
    if (job.fraud_mask) statusCell.appendChild(h("span", { class: "tag tag-fraud", title: `fraud mask ${job.fraud_mask}` }, "fraud"));
    const tr = h(
      "tr",
      { class: "clickable", data: { jobId: job.job_id } },
      h("td", {}, h("a", { class: "job-link mono", href: `#/jobs/${job.job_id}`, data: { jobId: job.job_id } }, `#${job.job_id}`)),
      statusCell,
      h("td", {}, addr(job.client, { link: false })),
      h("td", {}, routeCell(job.route)),
      h("td", { class: "num" }, h("span", { title: "billed / max tokens" }, `${fmtNumber(job.billed_tokens)} / ${fmtNumber(job.max_tokens)}`)),
      h("td", { class: "num" }, money(job.paid_wei)),
      h("td", { class: "num" }, money(job.refund_wei)),
      h("td", { class: "num" }, fmtParam(job.epsilon)),
      h("td", { class: "num", title: fmtTime(job.submitted_time) }, fmtNumber(job.submitted_block)),
    );
    tr.addEventListener("click", (ev) => {
      if (ev.target.closest("a, button")) return;
      location.hash = `#/jobs/${job.job_id}`;
    });
    return tr;
  }

  function jobsTable(id) {
    const head = ["Job", "Status", "Client", "Route", "Tokens", "Paid", "Refund", "ε", "Block"];
    const numeric = new Set(["Tokens", "Paid", "Refund", "ε", "Block"]);
    const tbody = h("tbody");
    const table = h(
      "table",
      { class: "table", id },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", { class: numeric.has(t) ? "num" : null }, t)))),
      tbody,
    );
    return { table, tbody };
  }

  // Updates tbody to show items in order, reusing unchanged rows; rows that appear later are highlighted.
  function syncRows(tbody, items, key, build, state, emptyText, columns) {
    const fresh = new Map();
    let anchor = null;
    for (const item of items) {
      const k = String(key(item));
      const sig = JSON.stringify(item);
      let row = state.rows.get(k);
      if (!row || row.sig !== sig) {
        const el = build(item);
        if (state.rendered) el.classList.add(row ? "row-changed" : "row-new");
        if (row) row.el.replaceWith(el);
        row = { el, sig };
      }
      fresh.set(k, row);
      const want = anchor ? anchor.nextSibling : tbody.firstChild;
      if (want !== row.el) tbody.insertBefore(row.el, want);
      anchor = row.el;
    }
    for (const [k, row] of state.rows) if (!fresh.has(k)) row.el.remove();
    const empty = tbody.querySelector("tr.empty");
    if (empty) empty.remove();
    if (!items.length) tbody.appendChild(h("tr", { class: "empty" }, h("td", { colspan: columns }, emptyText)));
    state.rows = fresh;
    state.rendered = true;
  }

  function liveDot() {
    return h("span", { class: "live", title: `refreshes every ${POLL_MS / 1000} s` }, h("span", { class: "live-dot" }), "live");
  }

  function loading() {
    return h("div", { class: "loading" }, "Loading…");
  }

  // ------------------------------------------------------------------ jobs list

  function jobsView(query) {
    const filter = {
      status: query.get("status") || "",
      client: query.get("client") || "",
      node: query.get("node") || "",
      model: query.get("model") || "",
      offset: Math.max(0, parseInt(query.get("offset") || "0", 10) || 0),
    };

    const statusSelect = h("select", { id: "f-status", name: "status" }, h("option", { value: "" }, "All statuses"), JOB_STATUSES.map((s) => h("option", { value: s }, s)));
    statusSelect.value = filter.status;
    const clientInput = h("input", { id: "f-client", name: "client", type: "text", placeholder: "0x… client", spellcheck: "false", autocomplete: "off" });
    clientInput.value = filter.client;
    const nodeInput = h("input", { id: "f-node", name: "node", type: "text", placeholder: "0x… node on the route", spellcheck: "false", autocomplete: "off" });
    nodeInput.value = filter.node;
    const modelSelect = h("select", { id: "f-model", name: "model" }, h("option", { value: "" }, "All models"));
    if (filter.model) modelSelect.appendChild(h("option", { value: filter.model }, `model ${filter.model}`));
    modelSelect.value = filter.model;
    const reset = h("button", { class: "btn btn-ghost", type: "button", id: "f-clear" }, "Clear");

    const count = h("span", { class: "count", id: "jobs-count" });
    const { table, tbody } = jobsTable("jobs-table");
    const pages = pager("pager");
    const rowState = { rows: new Map(), rendered: false };

    append(view, [
      h("div", { class: "page-head" }, h("h1", {}, "Jobs"), count, liveDot()),
      h(
        "form",
        { class: "filters", id: "job-filters", onsubmit: (ev) => ev.preventDefault() },
        h("label", {}, h("span", {}, "Status"), statusSelect),
        h("label", { class: "grow" }, h("span", {}, "Client"), clientInput),
        h("label", { class: "grow" }, h("span", {}, "Node"), nodeInput),
        h("label", {}, h("span", {}, "Model"), modelSelect),
        reset,
      ),
      h("div", { class: "card card-flush" }, h("div", { class: "table-wrap" }, table), pages.el),
    ]);

    api("/api/models")
      .then((models) => {
        clear(modelSelect);
        modelSelect.appendChild(h("option", { value: "" }, "All models"));
        for (const m of models.items) modelSelect.appendChild(h("option", { value: m.model_id }, `${m.model_id} · ${m.name}`));
        modelSelect.value = filter.model;
      })
      .catch((err) => setError("models", err.message));

    function writeHash() {
      const qs = new URLSearchParams();
      for (const k of ["status", "client", "node", "model"]) if (filter[k]) qs.set(k, filter[k]);
      if (filter.offset) qs.set("offset", String(filter.offset));
      const text = qs.toString();
      history.replaceState(null, "", "#/jobs" + (text ? "?" + text : ""));
    }

    function apply(changes) {
      Object.assign(filter, changes);
      writeHash();
      poll.now();
    }

    statusSelect.addEventListener("change", () => apply({ status: statusSelect.value, offset: 0 }));
    modelSelect.addEventListener("change", () => apply({ model: modelSelect.value, offset: 0 }));
    for (const [input, name] of [[clientInput, "client"], [nodeInput, "node"]]) {
      // While typing, only a complete address (or nothing) queries; Enter or leaving the field sends
      // whatever is there, and the API's error says what is wrong with it.
      input.addEventListener("input", () => {
        const value = input.value.trim();
        const ok = value === "" || ADDRESS_RE.test(value);
        input.classList.toggle("invalid", !ok);
        if (ok && value !== filter[name]) apply({ [name]: value, offset: 0 });
      });
      input.addEventListener("change", () => {
        const value = input.value.trim();
        if (value !== filter[name]) apply({ [name]: value, offset: 0 });
      });
    }
    reset.addEventListener("click", () => {
      statusSelect.value = modelSelect.value = clientInput.value = nodeInput.value = "";
      clientInput.classList.remove("invalid");
      nodeInput.classList.remove("invalid");
      apply({ status: "", client: "", node: "", model: "", offset: 0 });
    });
    pages.prev.addEventListener("click", () => apply({ offset: Math.max(0, filter.offset - JOB_PAGE) }));
    pages.next.addEventListener("click", () => apply({ offset: filter.offset + JOB_PAGE }));

    const apiPath = () => {
      const qs = new URLSearchParams({ limit: String(JOB_PAGE), offset: String(filter.offset) });
      for (const k of ["status", "client", "node", "model"]) if (filter[k]) qs.set(k, filter[k]);
      return "/api/jobs?" + qs.toString();
    };
    const rows = (page) =>
      syncRows(tbody, page.items, (j) => j.job_id, jobRow, rowState, "No jobs match these filters.", 9);
    const poll = listPoller(apiPath, rows, { pages, table, count, noun: "jobs" });
    return poll;
  }

  // A paginated list page: poll its API query, update the rows, the pager and the counters.
  function listPoller(apiPath, rows, { pages, table, count, noun }) {
    return poller(async (current) => {
      try {
        const page = await api(apiPath());
        if (!current()) return;
        setError("view", null);
        rows(page);
        pages.update(page, noun);
        table.dataset.total = String(page.total);
        count.textContent = `${fmtNumber(page.total)} total`;
      } catch (err) {
        if (current()) setError("view", err.message);
      }
    }, POLL_MS);
  }

  // ------------------------------------------------------------------ one job

  function linkMark(link) {
    if (link === true) return h("span", { class: "link link-ok", title: "output commitment equals the next input commitment" }, "✓ linked");
    if (link === false) return h("span", { class: "link link-bad", title: "output commitment differs from the next input commitment" }, "✗ mismatch");
    return h("span", { class: "link link-pending", title: "not both committed yet" }, "… pending");
  }

  function connector(label, link, isLink) {
    return h(
      "div",
      { class: "connector" + (isLink ? " connector-link" : ""), data: isLink ? { link: String(link) } : {} },
      h("div", { class: "connector-line" + (link === false ? " bad" : "") }),
      h("div", { class: "connector-label" }, isLink ? linkMark(link) : label),
    );
  }

  function endpoint(label, client, sub) {
    return h(
      "div",
      { class: "endpoint" },
      h("div", { class: "endpoint-label" }, label),
      addr(client, { link: false }),
      h("div", { class: "endpoint-sub" }, sub),
    );
  }

  function verdictChip(verdict) {
    return h("span", { class: `chip chip-${verdict}` }, verdict);
  }

  function hopBox(job, hop, panel) {
    const committed = hop.committed;
    const commitments = h(
      "div",
      { class: "hop-section" },
      h("div", { class: "kv" }, h("span", { class: "k" }, "in"), hash(hop.input_commitment, { class: "mono hash commit-in", "data-hash": hop.input_commitment || "" })),
      h("div", { class: "kv" }, h("span", { class: "k" }, "out"), hash(hop.output_commitment, { class: "mono hash commit-out", "data-hash": hop.output_commitment || "" })),
      committed ? null : h("div", { class: "note" }, "not committed"),
    );
    const payments = h(
      "div",
      { class: "hop-section" },
      h("div", { class: "kv" }, h("span", { class: "k" }, "paid"), money(hop.paid_wei, "paid")),
      h("div", { class: "kv" }, h("span", { class: "k" }, "slashed"), money(hop.slashed_wei, "slashed" + (hop.slashed_wei !== "0" ? " neg" : ""))),
    );
    let audit = null;
    if (panel) {
      const votes = h(
        "ul",
        { class: "votes" },
        panel.votes.map((v) =>
          h(
            "li",
            { class: "vote", data: { verifier: v.verifier, vote: v.vote } },
            addr(v.verifier),
            h("span", { class: `chip chip-${v.vote}` }, v.vote),
            v.reward_wei !== "0" ? money(v.reward_wei, "reward") : null,
          ),
        ),
      );
      audit = h(
        "div",
        { class: "hop-section audit", data: { verdict: panel.verdict || "pending" } },
        h(
          "div",
          { class: "kv" },
          h("span", { class: "k" }, "audit"),
          h("span", { class: "verdict" }, panel.verdict ? verdictChip(panel.verdict) : h("span", { class: "muted" }, "voting")),
        ),
        panel.verdict
          ? h("div", { class: "kv small" }, h("span", { class: "k" }, "votes"), h("span", {}, `${panel.honest_votes} honest · ${panel.fraud_votes} fraud`))
          : null,
        panel.forfeited_wei !== "0" ? h("div", { class: "kv small" }, h("span", { class: "k" }, "forfeited"), money(panel.forfeited_wei)) : null,
        votes,
      );
    }
    const flags = [];
    if (hop.fraud === true) flags.push(verdictChip("fraud"));
    else if (hop.fraud === false) flags.push(verdictChip("honest"));
    if (job.missing_mask >> hop.position & 1) flags.push(h("span", { class: "chip chip-fraud" }, "missed"));
    return h(
      "div",
      {
        class: "hop" + (hop.fraud ? " hop-fraud" : "") + (committed ? "" : " hop-uncommitted"),
        data: { node: hop.node, position: hop.position },
      },
      h("div", { class: "hop-head" }, h("span", { class: "hop-title" }, `Hop ${hop.position + 1}`), h("span", { class: "hop-shard" }, `shard ${hop.shard}`), flags),
      h("div", { class: "hop-node" }, addr(hop.node)),
      h("div", { class: "hop-price" }, money(hop.price_wei, "price"), h("span", { class: "muted" }, " / token")),
      commitments,
      payments,
      audit,
    );
  }

  function routeDiagram(job) {
    const panels = new Map(((job.audit && job.audit.panels) || []).map((p) => [p.position, p]));
    const route = h("div", { class: "route", id: "route" });
    const local = job.first_shard > 1 ? `shards 0–${job.first_shard - 1}` : "shard 0";
    route.appendChild(endpoint("Client", job.client, `${local} local`));
    route.appendChild(connector("activations", null, false));
    job.hops.forEach((hop, i) => {
      if (i) route.appendChild(connector(null, job.links[i - 1], true));
      route.appendChild(hopBox(job, hop, panels.get(hop.position)));
    });
    route.appendChild(connector("hidden states", null, false));
    route.appendChild(endpoint("Client", job.client, "head + sampling"));
    return route;
  }

  function privacyCard(job) {
    const d = job.declared;
    if (!d) {
      return card("Declared privacy", h("p", { class: "muted" }, "The client declared no JSON parameters (metadata is opaque)."));
    }
    const known = ["epsilon", "delta", "clip", "split"];
    const rows = known.map((k) => [k === "epsilon" ? "epsilon (ε)" : k === "delta" ? "delta (δ)" : k, fmtParam(d[k]), { data: { param: k } }]);
    for (const [k, v] of Object.entries(d)) if (!known.includes(k)) rows.push([k, typeof v === "object" ? JSON.stringify(v) : fmtParam(v)]);
    const leak = job.leakage || {};
    const measured = leak.source === "measured"
      ? h("p", { "data-leakage": "measured" }, `Measured at this setting (epsilon ${leak.measured_at_epsilon}, split ${leak.split}): the best known attack (${leak.best_attack}) recovered ${Math.round(leak.prompt_recovery * 100)}% of prompt tokens; the last node reads ${Math.round(leak.output_recovery_greedy * 100)}% of greedy answer tokens; next-token agreement with the noiseless model ${Math.round(leak.next_token_agreement * 100)}%.`)
      : h("p", { class: "muted", "data-leakage": "not-measured" }, `Leakage not measured: ${leak.why || "no table"}.`);
    return card("Declared privacy", [dl(rows), measured, h("p", { class: "note" }, "Declared by the client in the job's metadata; not enforced on chain. Leakage from the shipped table (splitmesh privacy).")]);
  }

  function stats(items) {
    return h(
      "div",
      { class: "stats" },
      items.filter(Boolean).map(([label, value]) => h("div", { class: "stat" }, h("div", { class: "stat-label" }, label), h("div", { class: "stat-value" }, value))),
    );
  }

  function auditCard(job) {
    const audit = job.audit;
    if (!audit) return null;
    const resolved = audit.status === "resolved";
    return card(
      "Audit",
      [
        stats([
          ["status", badge(audit.status, resolved ? "finalized" : "disputed")],
          ["convicted", resolved ? hopsOf(audit.fraud_mask, job.hops.length) : "—"],
          ["slashed", money(audit.slashed_wei, "neg")],
          ["to verifiers", money(audit.rewarded_wei)],
          ["to client", money(audit.to_client_wei)],
          ["opened in", hash(audit.opened_tx)],
          ["resolved in", hash(audit.resolved_tx)],
        ]),
        audit.settled_before_verdict ? h("p", { class: "note" }, "The job was settled before the verdict; the verdict still slashed and rewarded.") : null,
      ],
      { id: "audit" },
    );
  }

  function txTable(transactions) {
    const tbody = h(
      "tbody",
      {},
      transactions.map((t) =>
        h(
          "tr",
          { data: { event: t.event } },
          h("td", {}, h("span", { class: "event" }, t.event)),
          h("td", { class: "muted" }, t.contract),
          h("td", { class: "num" }, fmtNumber(t.block)),
          h("td", { class: "nowrap" }, fmtTime(t.time)),
          h("td", {}, hash(t.tx_hash)),
        ),
      ),
    );
    return h(
      "table",
      { class: "table", id: "tx-table" },
      h("thead", {}, h("tr", {}, ["Event", "Contract", "Block", "Time", "Transaction"].map((t) => h("th", { class: t === "Block" ? "num" : null }, t)))),
      tbody,
    );
  }

  function renderJob(root, job) {
    const openDetails = root.querySelector("details[open]") !== null;
    clear(root);
    const head = h(
      "div",
      { class: "page-head" },
      h("a", { class: "back", href: "#/jobs" }, "← Jobs"),
      h("h1", {}, `Job #${job.job_id}`),
      badge(job.status),
      job.dispute ? h("span", { class: "tag tag-dispute" }, `dispute: ${job.dispute}`) : null,
      liveDot(),
    );
    const summary = card(
      "Summary",
      dl([
        ["status", badge(job.status)],
        ["client", h("span", { class: "mono addr-full", title: job.client }, job.client)],
        ["model", `${job.model_id}, from shard ${job.first_shard}`],
        ["tokens", `${fmtNumber(job.billed_tokens)} billed of ${fmtNumber(job.max_tokens)} max`],
        ["dispute", job.dispute || "none"],
        job.fraud_mask ? ["judged fraud", h("span", { class: "neg-text" }, hopsOf(job.fraud_mask, job.hops.length))] : null,
        job.missing_mask ? ["never committed", h("span", { class: "neg-text" }, hopsOf(job.missing_mask, job.hops.length))] : null,
        ["submitted", `block ${fmtNumber(job.submitted_block)} · ${fmtTime(job.submitted_time)}`],
        ["last change", `block ${fmtNumber(job.updated_block)}`],
      ]),
      { id: "summary" },
    );
    const payments = card(
      "Payments",
      dl([
        ["escrow", money(job.escrow_wei, "escrow")],
        ["paid to nodes", money(job.paid_wei, "paid")],
        ["refund to client", money(job.refund_wei, "refund")],
        ["slashed", money(job.slashed_wei, "slashed" + (job.slashed_wei !== "0" ? " neg" : ""))],
      ]),
      { id: "payments" },
    );
    const raw = h(
      "details",
      { class: "raw", open: openDetails },
      h("summary", {}, "Raw terms and metadata"),
      dl([
        ["terms", h("code", { class: "mono wrap" }, job.terms)],
        ["metadata", h("code", { class: "mono wrap" }, job.metadata)],
      ]),
    );
    append(root, [
      head,
      h("div", { class: "grid grid-3" }, summary, payments, privacyCard(job)),
      card("Route", [h("div", { class: "route-scroll" }, routeDiagram(job)), raw], { id: "route-card" }),
      auditCard(job),
      card("Transactions", h("div", { class: "table-wrap" }, txTable(job.transactions)), { class: "card card-flush-body" }),
    ]);
  }

  // A detail page (one job, one node): poll its API path, re-render only when the data changed.
  function detailView(pageClass, path, render, title, backHref, backText) {
    const root = h("div", { class: pageClass }, loading());
    view.appendChild(root);
    let last = null;
    return poller(async (current) => {
      try {
        const data = await api(path);
        if (!current()) return;
        setError("view", null);
        const sig = JSON.stringify(data);
        if (sig !== last) {
          last = sig;
          render(root, data);
        }
      } catch (err) {
        if (!current()) return;
        setError("view", err.message);
        if (last === null) {
          clear(root).appendChild(h("div", { class: "empty-state" }, h("h1", {}, title), h("p", {}, err.message), h("a", { href: backHref }, backText)));
        }
      }
    }, POLL_MS);
  }

  function jobView(jobId) {
    const path = `/api/jobs/${encodeURIComponent(jobId)}`;
    return detailView("job-page", path, renderJob, `Job ${jobId}`, "#/jobs", "← back to jobs");
  }

  // ------------------------------------------------------------------ nodes

  function nodeRow(n) {
    const tr = h(
      "tr",
      { class: "clickable", data: { address: n.address } },
      h("td", {}, addr(n.address)),
      h("td", { class: "num" }, n.model_id ?? "—"),
      h("td", { class: "num" }, n.shard ?? "—"),
      h("td", {}, badge(n.status, "node-" + n.status)),
      h("td", {}, n.pooled ? h("span", { class: "chip chip-yes" }, "pooled") : h("span", { class: "muted" }, "no")),
      h("td", {}, n.endpoint ? h("span", { class: "mono small endpoint-url", title: n.endpoint }, n.endpoint) : h("span", { class: "muted" }, "—")),
      h("td", { class: "num" }, money(n.stake_wei)),
      h("td", { class: "num" }, money(n.price_wei)),
      h("td", { class: "num" }, fmtNumber(n.jobs_served)),
      h("td", { class: "num", title: `earned ${formatWeiText(n.earned_wei)}, withdrawn ${formatWeiText(n.withdrawn_wei)}` }, money(n.earnings_wei)),
      h("td", { class: "num" }, money(n.slashed_wei, n.slashed_wei !== "0" ? "neg" : ""), n.slashes ? h("span", { class: "muted small" }, ` ×${n.slashes}`) : null),
    );
    tr.addEventListener("click", (ev) => {
      if (ev.target.closest("a, button")) return;
      location.hash = "#/nodes/" + encodeURIComponent(n.address);
    });
    return tr;
  }

  function nodesView(query) {
    let offset = Math.max(0, parseInt(query.get("offset") || "0", 10) || 0);
    const head = ["Address", "Model", "Shard", "Status", "Pool", "Endpoint", "Stake", "Price / token", "Jobs", "Earnings", "Slashed"];
    const numeric = new Set(["Model", "Shard", "Stake", "Price / token", "Jobs", "Earnings", "Slashed"]);
    const tbody = h("tbody");
    const table = h("table", { class: "table", id: "nodes-table" }, h("thead", {}, h("tr", {}, head.map((t) => h("th", { class: numeric.has(t) ? "num" : null }, t)))), tbody);
    const pages = pager("nodes-pager");
    const count = h("span", { class: "count", id: "nodes-count" });
    const rowState = { rows: new Map(), rendered: false };
    append(view, [
      h("div", { class: "page-head" }, h("h1", {}, "Nodes"), count, liveDot()),
      h("div", { class: "card card-flush" }, h("div", { class: "table-wrap" }, table), pages.el),
      h("p", { class: "note" }, "Earnings: credited by settled jobs and not yet withdrawn. Stake excludes what is unbonding."),
    ]);
    const go = (to) => {
      offset = Math.max(0, to);
      history.replaceState(null, "", "#/nodes" + (offset ? `?offset=${offset}` : ""));
      poll.now();
    };
    pages.prev.addEventListener("click", () => go(offset - NODE_PAGE));
    pages.next.addEventListener("click", () => go(offset + NODE_PAGE));
    const rows = (page) =>
      syncRows(tbody, page.items, (n) => n.address, nodeRow, rowState, "No nodes yet.", head.length);
    const apiPath = () => `/api/nodes?limit=${NODE_PAGE}&offset=${offset}`;
    const poll = listPoller(apiPath, rows, { pages, table, count, noun: "nodes" });
    return poll;
  }

  function renderNode(root, n) {
    clear(root);
    const jobs = jobsTable("node-jobs-table");
    syncRows(jobs.tbody, n.recent_jobs, (j) => j.job_id, jobRow, { rows: new Map(), rendered: false }, "This node has served no job yet.", 9);
    append(root, [
      h(
        "div",
        { class: "page-head" },
        h("a", { class: "back", href: "#/nodes" }, "← Nodes"),
        h("h1", {}, "Node"),
        h("span", { class: "mono title-addr", id: "node-address" }, n.address),
        badge(n.status, "node-" + n.status),
        n.pooled ? h("span", { class: "chip chip-yes" }, "pooled") : null,
        liveDot(),
      ),
      h(
        "div",
        { class: "grid grid-3" },
        card(
          "Service",
          dl([
            ["model", n.model_id ?? "—"],
            ["shard", n.shard ?? "—"],
            ["endpoint", n.endpoint ? h("span", { class: "mono wrap" }, n.endpoint) : "—"],
            ["price", [money(n.price_wei), h("span", { class: "muted" }, " / token")]],
            ["jobs served", fmtNumber(n.jobs_served)],
          ]),
        ),
        card(
          "Stake",
          dl([
            ["stake", money(n.stake_wei)],
            ["unbonding", money(n.unbonding_wei)],
            ["unlocks", n.unlock_at ? fmtTime(n.unlock_at) : "—"],
            ["slashed", [money(n.slashed_wei, n.slashed_wei !== "0" ? "neg" : ""), n.slashes ? ` in ${n.slashes} slash${n.slashes > 1 ? "es" : ""}` : ""]],
            ["judged fraud", `${n.frauds} time${n.frauds === 1 ? "" : "s"}`],
          ]),
        ),
        card(
          "Earnings",
          dl([
            ["earned", money(n.earned_wei)],
            ["withdrawn", money(n.withdrawn_wei)],
            ["balance", money(n.earnings_wei)],
          ]),
        ),
      ),
      card(`Recent jobs (${n.recent_jobs.length})`, h("div", { class: "table-wrap" }, jobs.table), { class: "card card-flush-body" }),
    ]);
  }

  function nodeView(address) {
    const path = `/api/nodes/${encodeURIComponent(address)}`;
    return detailView("node-page", path, renderNode, "Node", "#/nodes", "← back to nodes");
  }

  // ------------------------------------------------------------------ router

  let active = null;

  function router() {
    if (active) active.stop();
    active = null;
    setError("view", null);
    clear(view);
    const raw = location.hash.replace(/^#\/?/, "");
    const [path, qs] = raw.split("?");
    const parts = path.split("/").filter(Boolean).map((p) => {
      try {
        return decodeURIComponent(p);
      } catch (_) {
        return p;
      }
    });
    const query = new URLSearchParams(qs || "");
    const section = parts[0] || "jobs";
    for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === section);
    if (section === "jobs" && parts[1]) active = jobView(parts[1]);
    else if (section === "jobs") active = jobsView(query);
    else if (section === "nodes" && parts[1]) active = nodeView(parts[1]);
    else if (section === "nodes") active = nodesView(query);
    else view.appendChild(h("div", { class: "empty-state" }, h("h1", {}, "Not found"), h("p", {}, `No page at #${raw}.`), h("a", { href: "#/jobs" }, "Go to jobs")));
    document.title = `splitmesh explorer · ${parts.length > 1 ? parts.join(" ") : section}`;
    window.scrollTo(0, 0);
  }

  window.addEventListener("hashchange", router);
  router();
})();
