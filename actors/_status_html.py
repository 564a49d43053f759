"""The status page's HTML, CSS and JavaScript (served at ``/`` by the HTTP face).

Why a string constant and not a template engine or a front-end build: the page must be
self-contained (the gateway may run where only loopback reaches it: no CDN, no web fonts, no
external script), small, and served from memory. Plain HTML, one stylesheet and one script,
no framework: the script builds the DOM with ``textContent`` only (a connection or client
name can never become markup), and the server's Content-Security-Policy allows exactly
these inline blocks by hash (``actors._status_page``). Where the data comes from and how the
token is handled is explained in ``actors._status_page``.

The DOM is meant to be read by people and by tests alike: every connection card has
``data-connection="<name>"`` and every value ``data-field="<name>"``; ``#health`` holds the
overall status and ``#live`` the state of the live connection to the server.
"""

from __future__ import annotations

from typing import Final

STYLE: Final = """
:root {
  --bg: #f6f7f9; --card: #fff; --ink: #1f2328; --muted: #656d76; --line: #d8dee4;
  --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --off: #6e7781; --info: #0969da;
  --ok-bg: #dafbe1; --warn-bg: #fff8c5; --bad-bg: #ffebe9; --off-bg: #eaeef2; --info-bg: #ddf4ff;
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header { display: flex; align-items: center; gap: 12px; padding: 12px 20px;
  background: var(--card); border-bottom: 1px solid var(--line); }
h1 { font-size: 18px; margin: 0; font-weight: 600; }
h2 { font-size: 15px; margin: 0; font-weight: 600; overflow-wrap: anywhere; }
.spacer { flex: 1; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 999px; font-weight: 600;
  font-size: 12px; text-transform: uppercase; letter-spacing: .04em; white-space: nowrap; }
.big { font-size: 14px; padding: 4px 14px; }
.s-ok, .b-closed { color: var(--ok); background: var(--ok-bg); }
.s-degraded, .b-half_open { color: var(--warn); background: var(--warn-bg); }
.s-down, .b-open, .b-forced_open { color: var(--bad); background: var(--bad-bg); }
.s-unknown, .b-disabled { color: var(--off); background: var(--off-bg); }
.b-metrics_only { color: var(--info); background: var(--info-bg); }
.live { font-size: 12px; color: var(--muted); white-space: nowrap; }
.live::before { content: "\\25CF"; margin-right: 5px; }
.live.on::before { color: var(--ok); }
.live.warn::before { color: var(--warn); }
.live.off::before { color: var(--bad); }
main { padding: 16px 20px 24px; }
.stale #content { opacity: .45; }
.totals { display: grid; grid-template-columns: repeat(auto-fit, minmax(110px, 1fr)); gap: 8px;
  margin-bottom: 16px; }
.tile { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 8px 12px; }
.num { display: block; font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.label { display: block; font-size: 12px; color: var(--muted); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-left: 6px solid var(--off);
  border-radius: 8px; padding: 12px 14px; }
.card.breaker-closed { border-left-color: var(--ok); }
.card.breaker-half_open { border-left-color: var(--warn); }
.card.breaker-open, .card.breaker-forced_open { border-left-color: var(--bad); }
.card.breaker-metrics_only { border-left-color: var(--info); }
.card-head { display: flex; align-items: center; justify-content: space-between; gap: 8px; }
.sub { color: var(--muted); font-size: 12px; margin: 2px 0 10px; }
.stats { display: grid; grid-template-columns: repeat(4, 1fr); gap: 6px; margin-bottom: 10px; }
.stats .num { font-size: 20px; }
.errors.has .num { color: var(--bad); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 12px; margin: 0; }
dt { color: var(--muted); }
dd { margin: 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.kinds { color: var(--bad); }
section.clients { margin-top: 20px; }
table { border-collapse: collapse; width: 100%; background: var(--card);
  border: 1px solid var(--line); border-radius: 8px; margin-top: 8px; }
th, td { text-align: right; padding: 6px 10px; border-bottom: 1px solid var(--line);
  font-variant-numeric: tabular-nums; }
th { color: var(--muted); font-weight: 500; font-size: 12px; }
th:first-child, td:first-child { text-align: left; }
.auth { max-width: 420px; margin: 40px auto; background: var(--card); padding: 18px 20px;
  border: 1px solid var(--line); border-radius: 8px; }
.auth h2 { margin-bottom: 10px; }
.auth label { display: block; color: var(--muted); }
.auth input { width: 100%; padding: 6px 8px; margin: 6px 0 10px; font: inherit; }
.auth .error { color: var(--bad); }
.empty { color: var(--muted); }
[hidden] { display: none !important; }
"""

SCRIPT: Final = """
"use strict";
(() => {
  const KEY = "switchboard.token";
  const $ = (id) => document.getElementById(id);
  let token = null, source = null, retry = null, backoff = 1000, lastSeen = 0;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const int = (n) => Number(n || 0).toLocaleString("en-US");
  function money(c) {
    if (c === null || c === undefined) return "\\u2014";
    return "$" + (c === 0 ? "0" : c < 0.01 ? c.toFixed(4) : c.toFixed(2));
  }
  function secs(s) {
    if (s < 1) return Math.round(s * 1000) + " ms";
    return (s < 10 ? s.toFixed(2) : s.toFixed(1)) + " s";
  }
  function timing(t) {
    if (!t || !t.count) return "\\u2014";
    const q = (v) => (v === null ? "> " + secs(t.top) : "\\u2264 " + secs(v));
    return "mean " + secs(t.mean) + " \\u00b7 p50 " + q(t.p50) + " \\u00b7 p95 " + q(t.p95);
  }
  const sum = (kinds) => Object.values(kinds || {}).reduce((a, b) => a + b, 0);
  function kindsText(kinds) {
    return Object.entries(kinds || {}).sort((a, b) => b[1] - a[1])
      .map(([k, n]) => k + " " + int(n)).join(" \\u00b7 ");
  }

  function stat(parent, field, value, label, cls) {
    const box = el("div", cls || "");
    const num = el("span", "num", value);
    num.dataset.field = field;
    box.append(num, el("span", "label", label));
    parent.append(box);
    return box;
  }
  function row(dl, field, label, value, cls) {
    const dd = el("dd", cls || "", value);
    dd.dataset.field = field;
    dl.append(el("dt", "", label), dd);
  }

  function card(c) {
    const node = el("article", "card breaker-" + c.breaker);
    node.dataset.connection = c.name;
    const head = el("div", "card-head");
    const name = el("h2", "", c.name);
    name.dataset.field = "name";
    const breaker = el("span", "badge b-" + c.breaker, c.breaker.replace("_", " "));
    breaker.dataset.field = "breaker";
    breaker.dataset.state = c.breaker;
    breaker.title = "circuit breaker";
    head.append(name, breaker);
    const notes = [c.provider, c.running ? "running" : "stopped"];
    if (c.parked) {
      notes.push(c.parked_for === null ? "refusing work" : "paused " + secs(c.parked_for));
    }
    if (c.incarnation > 1) notes.push("restarted " + (c.incarnation - 1) + "\\u00d7");
    const sub = el("div", "sub", notes.join(" \\u00b7 "));
    sub.dataset.field = "provider";
    const stats = el("div", "stats");
    stat(stats, "queued", int(c.queued), "queued");
    stat(stats, "in_flight", int(c.in_flight), "in flight");
    stat(stats, "requests", int(c.requests), "requests");
    const errors = sum(c.failures);
    stat(stats, "errors", int(errors), "errors", "errors" + (errors ? " has" : ""));
    const dl = el("dl");
    row(dl, "tokens", "tokens", int(c.input_tokens) + " in \\u00b7 " +
        int(c.output_tokens) + " out");
    row(dl, "cost", "est. cost", money(c.cost));
    row(dl, "latency", "latency", timing(c.latency));
    row(dl, "first_token", "first token", timing(c.first_token));
    row(dl, "attempts", "attempts", int(c.attempts) + " (" + int(c.retries) + " retries)");
    if (errors) row(dl, "failures", "errors", kindsText(c.failures), "kinds");
    node.append(head, sub, stats, dl);
    return node;
  }

  function totals(t) {
    const box = $("totals");
    box.replaceChildren();
    const tile = (field, value, label, cls) =>
      stat(box, field, value, label, "tile" + (cls ? " " + cls : ""));
    const failed = sum(t.failures);
    tile("requests", int(t.requests), "requests");
    tile("completions", int(t.completions), "completed");
    tile("failures", int(failed), "failed", failed ? "errors has" : "");
    tile("failovers", int(t.failovers), "failovers");
    tile("queued", int(t.queued), "queued");
    tile("in_flight", int(t.in_flight), "in flight");
    tile("input_tokens", int(t.input_tokens), "tokens in");
    tile("output_tokens", int(t.output_tokens), "tokens out");
    tile("cost", money(t.cost), "est. cost");
    box.title = failed ? "failures: " + kindsText(t.failures) : "";
  }

  function clients(list) {
    $("clients-section").hidden = !list.length;
    const body = $("clients-body");
    body.replaceChildren();
    for (const c of list) {
      const tr = el("tr");
      tr.dataset.client = c.name;
      const budget = c.budget === null ? "\\u2014" :
        money(c.spend) + " of " + money(c.budget) + " (" + c.budget_period + ")";
      const cells = [c.name, int(c.requests), int(c.in_flight), int(c.completions),
        int(c.failures), int(sum(c.refused)), int(c.input_tokens) + " / " +
        int(c.output_tokens), money(c.cost), budget];
      for (const text of cells) tr.append(el("td", "", text));
      if (sum(c.refused)) tr.title = "refused: " + kindsText(c.refused);
      body.append(tr);
    }
  }

  function render(s) {
    const health = $("health");
    health.textContent = s.status;
    health.className = "badge big s-" + s.status;
    totals(s.totals);
    const grid = $("connections");
    grid.replaceChildren(...s.connections.map(card));
    if (!s.connections.length) grid.append(el("p", "empty", "no connections"));
    clients(s.clients);
    document.title = "switchboard \\u00b7 " + s.status;
  }

  function live(state, text) {
    const node = $("live");
    node.className = "live " + state;
    node.textContent = text;
    document.body.classList.toggle("stale", state !== "on");
  }
  function seen() {
    lastSeen = Date.now();
    backoff = 1000;
    live("on", "live \\u00b7 " + new Date(lastSeen).toLocaleTimeString());
  }

  function readToken() {
    const given = new URLSearchParams(location.hash.slice(1)).get("token");
    if (given) {
      try { sessionStorage.setItem(KEY, given); } catch (e) { /* storage off: this tab only */ }
      history.replaceState(null, "", location.pathname + location.search);
      return given;
    }
    try { return sessionStorage.getItem(KEY); } catch (e) { return null; }
  }

  function connect() {
    clearTimeout(retry);
    if (source) source.close();
    $("auth").hidden = true;
    $("content").hidden = false;
    const query = token ? "?token=" + encodeURIComponent(token) : "";
    const events = new EventSource("/status/events" + query);
    source = events;
    events.onmessage = (event) => { seen(); render(JSON.parse(event.data)); };
    events.addEventListener("ping", seen);
    events.onerror = () => {
      if (events !== source) return;
      if (events.readyState === EventSource.CONNECTING) {
        live("warn", "connection lost \\u00b7 reconnecting\\u2026");
        return;
      }
      events.close();
      source = null;
      diagnose();
    };
  }

  async function diagnose() {
    live("off", "disconnected");
    let status = 0;
    try {
      const headers = token ? { Authorization: "Bearer " + token } : {};
      status = (await fetch("/status", { headers, cache: "no-store" })).status;
    } catch (e) { /* the server is away: retry below */ }
    if (status === 401) { askToken(token !== null); return; }
    live("off", "disconnected \\u00b7 retrying in " + Math.round(backoff / 1000) + " s");
    retry = setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 10000);
  }

  function askToken(refused) {
    live("off", "token needed");
    $("content").hidden = true;
    $("auth").hidden = false;
    $("auth-error").hidden = !refused;
    $("token").focus();
  }

  $("auth").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("token");
    token = input.value.trim() || null;
    input.value = "";
    try {
      if (token) sessionStorage.setItem(KEY, token); else sessionStorage.removeItem(KEY);
    } catch (e) { /* storage off: this tab only */ }
    connect();
  });

  setInterval(() => {
    if (source && source.readyState === EventSource.OPEN && lastSeen &&
        Date.now() - lastSeen > 15000) {
      live("warn", "no news for " + Math.round((Date.now() - lastSeen) / 1000) +
           " s \\u00b7 reconnecting\\u2026");
      connect();
    }
  }, 1000);

  token = readToken();
  connect();
})();
"""

BODY: Final = """
<header>
  <h1>switchboard</h1>
  <span id="health" class="badge big s-unknown" title="overall health">&hellip;</span>
  <span class="spacer"></span>
  <span id="live" class="live warn">connecting&hellip;</span>
</header>
<main>
  <form id="auth" class="auth" hidden>
    <h2>This gateway needs a token</h2>
    <p class="error" id="auth-error" hidden>That token was refused.</p>
    <label for="token">Gateway token (one of <code>[gateway] tokens</code> or a client's)</label>
    <input id="token" type="password" autocomplete="off" spellcheck="false">
    <button type="submit">Show status</button>
  </form>
  <div id="content">
    <div id="totals" class="totals"></div>
    <div id="connections" class="grid"></div>
    <section id="clients-section" class="clients" hidden>
      <h2>Clients</h2>
      <table>
        <thead><tr><th>client</th><th>requests</th><th>in flight</th><th>completed</th>
          <th>failed</th><th>refused</th><th>tokens in / out</th><th>est. cost</th>
          <th>budget</th></tr></thead>
        <tbody id="clients-body"></tbody>
      </table>
    </section>
  </div>
</main>
"""


def page(style: str = STYLE, script: str = SCRIPT, body: str = BODY) -> str:
    """The whole HTML document with *style* and *script* inline (the CSP hashes exactly
    these strings)."""
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>switchboard</title>\n<style>{style}</style>\n</head>\n<body>{body}"
        f"<script>{script}</script>\n</body>\n</html>\n"
    )
