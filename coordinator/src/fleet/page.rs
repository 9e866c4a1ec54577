//! The status page at `GET /`: one self-contained HTML document (no external scripts, styles or
//! fonts) that reads `GET /api/status` every five seconds and shows the pipelines with their
//! schedule, last run and freshness; the runs with their progress, rows by outcome and failures
//! with reasons; the queues' backlog and dead letters; and the backfills in progress.

pub const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tributary coordinator</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #1c2430; background: #f7f8fa; }
  h1 { font-size: 1.3rem; margin: 0 0 .2rem; }
  h2 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; }
  .meta { color: #5b6573; font-size: .85rem; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
  th { background: #eef1f5; font-weight: 600; }
  .num { text-align: right; font-variant-numeric: tabular-nums; }
  .status { font-weight: 600; }
  .completed { color: #17803d; } .running { color: #1d5fbf; }
  .failed { color: #b42318; } .cancelled { color: #8a5a00; }
  .bar { background: #e3e6ea; border-radius: 3px; height: .55rem; width: 8rem; display: inline-block; }
  .bar > span { display: block; height: 100%; background: #1d5fbf; border-radius: 3px; }
  .why { color: #b42318; font-size: .85rem; }
  .empty { color: #5b6573; font-style: italic; }
  .cards { display: flex; gap: 1rem; flex-wrap: wrap; }
  .card { background: #fff; border: 1px solid #e3e6ea; border-radius: 6px; padding: .6rem .9rem; min-width: 9rem; }
  .card b { display: block; font-size: 1.4rem; }
</style>
</head>
<body>
<h1>Tributary coordinator</h1>
<div class="meta">Updated <span id="updated">never</span> · refreshes every 5 s · <a href="/api/status">JSON</a> · <a href="/metrics">metrics</a></div>
<div id="error" class="why"></div>

<h2>Queues</h2>
<div class="cards" id="queues"></div>

<h2>Pipelines</h2>
<table id="pipelines" data-testid="pipelines">
<thead><tr><th>Pipeline</th><th>Table</th><th>Schedule</th><th>Next run</th><th>Last run</th><th>Freshness</th></tr></thead>
<tbody></tbody></table>

<h2>Runs</h2>
<table id="runs" data-testid="runs">
<thead><tr><th>Run</th><th>Pipeline</th><th>Status</th><th>Progress</th><th class="num">Rows in</th><th class="num">Out</th>
<th class="num">Rejected</th><th class="num">Filtered</th><th class="num">Malformed</th><th class="num">Duplicates</th><th>Failures</th></tr></thead>
<tbody></tbody></table>

<h2>Backfills</h2>
<table id="backfills" data-testid="backfills">
<thead><tr><th>Backfill</th><th>Pipeline</th><th>Status</th><th>Windows</th><th>Current run</th><th class="num">Max in flight</th></tr></thead>
<tbody></tbody></table>

<h2>Dead letters</h2>
<table id="dead" data-testid="dead-letters">
<thead><tr><th>Message</th><th>Run</th><th>Shard</th><th class="num">Receives</th><th>Reason</th></tr></thead>
<tbody></tbody></table>

<script>
"use strict";
const text = (v) => (v === null || v === undefined) ? "" : String(v);
function cell(row, value, cls) {
  const td = document.createElement("td");
  if (value instanceof Node) td.appendChild(value); else td.textContent = text(value);
  if (cls) td.className = cls;
  row.appendChild(td);
}
function fill(id, items, render, empty) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  if (!items.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = document.querySelectorAll("#" + id + " th").length;
    td.className = "empty"; td.textContent = empty;
    tr.appendChild(td); body.appendChild(tr); return;
  }
  for (const item of items) { const tr = document.createElement("tr"); render(tr, item); body.appendChild(tr); }
}
function status(s) { const b = document.createElement("span"); b.className = "status " + s; b.textContent = s; return b; }
function age(secs) {
  if (secs === null || secs === undefined) return "never loaded";
  if (secs < 120) return secs + " s ago";
  if (secs < 7200) return Math.round(secs / 60) + " min ago";
  if (secs < 172800) return Math.round(secs / 3600) + " h ago";
  return Math.round(secs / 86400) + " days ago";
}
function progress(r) {
  const wrap = document.createElement("span");
  const bar = document.createElement("span"); bar.className = "bar";
  const fillBar = document.createElement("span");
  fillBar.style.width = (r.shards ? Math.round(100 * r.shards_done / r.shards) : 100) + "%";
  bar.appendChild(fillBar); wrap.appendChild(bar);
  wrap.appendChild(document.createTextNode(" " + r.shards_done + "/" + r.shards + " shards"));
  return wrap;
}
function failures(r) {
  const d = document.createElement("div");
  for (const f of r.failed_shards) {
    const p = document.createElement("div"); p.className = "why";
    p.textContent = f.shard + ": " + f.reason; d.appendChild(p);
  }
  if (r.last_error) { const p = document.createElement("div"); p.className = "why"; p.textContent = r.last_error; d.appendChild(p); }
  if (r.backfill_window) { const p = document.createElement("div"); p.className = "meta"; p.textContent = "backfill " + r.backfill_window; d.appendChild(p); }
  return d;
}
function render(s) {
  document.getElementById("updated").textContent = s.generated_at;
  const q = document.getElementById("queues"); q.replaceChildren();
  for (const [name, d] of Object.entries(s.queues)) {
    const c = document.createElement("div"); c.className = "card"; c.dataset.queue = name;
    c.innerHTML = "<span></span><b></b><span class='meta'></span>";
    c.children[0].textContent = name + " backlog";
    c.children[1].textContent = d.visible + d.in_flight;
    c.children[2].textContent = d.visible + " waiting, " + d.in_flight + " in flight, " + d.dead + " dead";
    q.appendChild(c);
  }
  if (!Object.keys(s.queues).length) q.textContent = "not polled yet";
  fill("pipelines", s.pipelines, (tr, p) => {
    cell(tr, p.name); cell(tr, p.table); cell(tr, p.cron || "on demand"); cell(tr, p.next_run);
    cell(tr, p.last_run ? status(p.last_run.status) : "no run yet");
    cell(tr, age(p.freshness_secs));
  }, "no pipelines configured");
  fill("runs", s.runs, (tr, r) => {
    tr.dataset.run = r.run_id;
    cell(tr, r.run_id); cell(tr, r.pipeline); cell(tr, status(r.status)); cell(tr, progress(r));
    cell(tr, r.rows.in, "num"); cell(tr, r.rows.out, "num"); cell(tr, r.rows.rejected, "num");
    cell(tr, r.rows.filtered, "num"); cell(tr, r.rows.malformed, "num"); cell(tr, r.rows.duplicates, "num");
    cell(tr, failures(r));
  }, "no runs yet");
  fill("backfills", s.backfills, (tr, b) => {
    cell(tr, b.backfill_id); cell(tr, b.pipeline); cell(tr, b.status);
    cell(tr, b.windows_done + "/" + b.windows); cell(tr, b.current_run); cell(tr, b.max_in_flight, "num");
  }, "no backfill in progress");
  fill("dead", s.dead_letters, (tr, d) => {
    cell(tr, d.message_id); cell(tr, d.task && d.task.run_id); cell(tr, d.task && d.task.shard);
    cell(tr, d.receive_count, "num"); cell(tr, d.reason, "why");
  }, "no dead letters");
  document.body.dataset.loaded = "true";
}
async function refresh() {
  try {
    const r = await fetch("/api/status", { cache: "no-store" });
    if (!r.ok) throw new Error("GET /api/status answered " + r.status);
    render(await r.json());
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "cannot read the coordinator: " + e.message;
  }
}
refresh();
setInterval(refresh, 5000);
</script>
</body>
</html>
"##;
