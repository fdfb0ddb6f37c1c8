//! Medic's Grafana dashboards (dashboards/*.json) show real data: the checked-in JSON is what the
//! generator (dashboards/gen) writes, it type-checks against @grafana/schema, it is well formed
//! (datasource variable, units, descriptions, layout, variables defined), and EVERY panel query —
//! with its template variables resolved through their own queries — returns data from a real
//! Prometheus scraping a live controller and a live agent watching a live ClickHouse. Queries that
//! can only have data during a fault or once a future feature lands are listed, with the reason, in
//! dashboards/expected-empty.json (generated from the same source), and that list is honoured.

use anyhow::{Context, Result, bail};
use medic_tests::*;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const DASHBOARDS: [&str; 5] = [
    "fleet-overview.json",
    "node-detail.json",
    "clickhouse.json",
    "anomalies-forecasts.json",
    "remediation-actions.json",
];

/// Grafana's built-in variables and what the test puts in their place.
const BUILTINS: [(&str, &str); 3] = [("__rate_interval", "30s"), ("__range", "1m"), ("__interval", "15s")];

/// Metrics that exist only once their feature has something to say (an anomaly scored, a
/// forecast made, an action taken, rules configured); queries over them must be listed as
/// "future" until the live fleet of this test produces them.
const FUTURE_METRICS: [&str; 4] = [
    "medic_anomaly_score",
    "medic_forecast_exhaustion_seconds",
    "medic_actions_total",
    "medic_rules_last_reload_success",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn load(file: &str) -> Result<Value> {
    let p = dir().join(file);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
}

fn node_script(args: &[&str]) -> Result<String> {
    let out = Command::new("node")
        .args(args)
        .current_dir(dir())
        .output()
        .context("running node (tests/run installs Node's packages with npm ci --prefix dashboards)")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("node {}: {}\n{text}", args.join(" "), out.status);
    }
    Ok(text)
}

/// One panel target.
#[derive(Clone, Debug)]
struct Target {
    dashboard: String,
    panel: String,
    ref_id: String,
    expr: String,
}

/// Panels, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

fn targets(d: &Value) -> Vec<Target> {
    let uid = d["uid"].as_str().unwrap_or_default();
    panels(d)
        .into_iter()
        .flat_map(|p| {
            p["targets"].as_array().into_iter().flatten().map(move |t| Target {
                dashboard: uid.to_string(),
                panel: p["title"].as_str().unwrap_or_default().to_string(),
                ref_id: t["refId"].as_str().unwrap_or_default().to_string(),
                expr: t["expr"].as_str().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// `$name`, `${name}` and `[[name]]` references in a string.
fn var_refs(s: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let b = s.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let (start, brace) = if b.get(i + 1) == Some(&b'{') { (i + 2, true) } else { (i + 1, false) };
            let mut j = start;
            while j < b.len() && ident(b[j]) {
                j += 1;
            }
            if j > start && (!brace || b.get(j) == Some(&b'}')) {
                out.insert(s[start..j].to_string());
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// Replaces `$name` / `${name}` by their values, longest names first so `$instance` never eats
/// part of a longer name.
fn substitute(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = s.to_string();
    for n in names {
        out = out.replace(&format!("${{{n}}}"), &vars[n]).replace(&format!("${n}"), &vars[n]);
    }
    out
}

struct ExpectedEmpty {
    kind: String,
    reason: String,
}

/// expected-empty.json as (dashboard, panel, refId) and (dashboard, variable) → entry, after checking
/// each entry names a query that exists with the same expression.
type EmptyPanels = HashMap<(String, String, String), ExpectedEmpty>;
type EmptyVars = HashMap<(String, String), ExpectedEmpty>;

fn expected_empty(dashboards: &[Value]) -> Result<(EmptyPanels, EmptyVars)> {
    let list = load("expected-empty.json")?;
    let kinds = list["kinds"].as_object().context("expected-empty.json: no kinds")?;
    let all: Vec<Target> = dashboards.iter().flat_map(targets).collect();
    let mut panels_out = HashMap::new();
    let mut vars_out = HashMap::new();
    for e in list["queries"].as_array().context("expected-empty.json: no queries")? {
        let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
        let entry = ExpectedEmpty { kind: s("kind"), reason: s("reason") };
        if !kinds.contains_key(&entry.kind) || entry.reason.len() < 10 {
            bail!("expected-empty.json: {e}: needs a known kind ({:?}) and a reason", kinds.keys().collect::<Vec<_>>());
        }
        if let Some(var) = e["variable"].as_str() {
            let d = dashboards
                .iter()
                .find(|d| d["uid"] == e["dashboard"])
                .with_context(|| format!("no dashboard for {e}"))?;
            let v = d["templating"]["list"].as_array().into_iter().flatten().find(|v| v["name"] == var);
            if v.is_none_or(|v| v["query"]["query"] != e["query"]) {
                bail!("expected-empty.json names a variable that does not exist (or changed): {e}");
            }
            vars_out.insert((s("dashboard"), var.to_string()), entry);
            continue;
        }
        if !all.iter().any(|t| {
            t.dashboard == s("dashboard") && t.panel == s("panel") && t.ref_id == s("refId") && t.expr == s("expr")
        }) {
            bail!("expected-empty.json names a query no panel has (or one that changed): {e}");
        }
        if entry.kind == "future" && !FUTURE_METRICS.iter().any(|m| s("expr").contains(m)) {
            bail!("expected-empty.json: a \"future\" query that uses none of the future metrics: {e}");
        }
        panels_out.insert((s("dashboard"), s("panel"), s("refId")), entry);
    }
    Ok((panels_out, vars_out))
}

fn all_dashboards() -> Result<Vec<Value>> {
    DASHBOARDS.iter().map(|f| load(f)).collect()
}

#[test]
fn checked_in_dashboards_are_the_generators_output() -> Result<()> {
    node_script(&["gen/generate.mjs", "--check"])?;
    Ok(())
}

#[test]
fn dashboards_type_check_against_grafana_schema() -> Result<()> {
    if !dir().join("node_modules/@grafana/schema").exists() {
        bail!("dashboards/node_modules is missing: run `npm ci --prefix dashboards` (tests/run does)");
    }
    let out = node_script(&["gen/typecheck.mjs"])?;
    println!("{out}");
    Ok(())
}

#[test]
fn dashboards_are_well_formed() -> Result<()> {
    // The schema version the installed @grafana/schema (pinned in package-lock.json) defaults to.
    let types = dir().join("node_modules/@grafana/schema/dist/esm/raw/dashboard/x/types.gen.mjs");
    let types = std::fs::read_to_string(&types)
        .with_context(|| format!("{}: run `npm ci --prefix dashboards` (tests/run does)", types.display()))?;
    let current: u64 = types
        .split("schemaVersion:")
        .nth(1)
        .and_then(|s| s.trim_start().split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .context("no schemaVersion in @grafana/schema's dashboard types")?;

    let dashboards = all_dashboards()?;
    let mut uids = HashSet::new();
    let mut problems = Vec::new();
    for (file, d) in DASHBOARDS.iter().zip(&dashboards) {
        let mut bad = |m: String| problems.push(format!("{file}: {m}"));
        if d["schemaVersion"].as_u64() != Some(current) {
            bad(format!("schemaVersion {} is not the current {current}", d["schemaVersion"]));
        }
        let uid = d["uid"].as_str().unwrap_or_default();
        if uid.is_empty() || uid.len() > 40 || !uids.insert(uid.to_string()) {
            bad(format!("uid {uid:?} missing, too long or not unique"));
        }
        for k in ["title", "description"] {
            if d[k].as_str().is_none_or(str::is_empty) {
                bad(format!("no {k}"));
            }
        }
        let vars = d["templating"]["list"].as_array().cloned().unwrap_or_default();
        let ds = vars.iter().find(|v| v["name"] == "datasource");
        if ds.is_none_or(|v| v["type"] != "datasource" || v["query"] != "prometheus") {
            bad("no `datasource` variable of type datasource for prometheus".into());
        }
        let mut defined: HashSet<String> = BUILTINS.iter().map(|(n, _)| n.to_string()).collect();
        for v in &vars {
            let name = v["name"].as_str().unwrap_or_default();
            if v["type"] == "query" {
                if v["datasource"]["uid"] != "${datasource}" {
                    bad(format!("variable {name} does not use ${{datasource}}"));
                }
                let q = v["query"]["query"].as_str().unwrap_or_default();
                if !q.starts_with("label_values(") {
                    bad(format!("variable {name}: {q:?} is not label_values(…)"));
                }
                // A variable may only use variables defined before it.
                for r in var_refs(q) {
                    if !defined.contains(&r) {
                        bad(format!("variable {name} uses ${r}, not defined before it"));
                    }
                }
            }
            if v["description"].as_str().is_none_or(str::is_empty) {
                bad(format!("variable {name} has no description"));
            }
            defined.insert(name.to_string());
        }
        let mut ids = HashSet::new();
        let mut cells: HashSet<(i64, i64)> = HashSet::new();
        for p in panels(d) {
            let title = p["title"].as_str().unwrap_or_default();
            if !ids.insert(p["id"].as_i64().unwrap_or(-1)) {
                bad(format!("panel {title:?}: id {} not unique", p["id"]));
            }
            let g = &p["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_i64().unwrap_or(-1),
                g["y"].as_i64().unwrap_or(-1),
                g["w"].as_i64().unwrap_or(0),
                g["h"].as_i64().unwrap_or(0),
            );
            if x < 0 || y < 0 || w < 1 || h < 1 || x + w > 24 {
                bad(format!("panel {title:?}: gridPos {g} off the 24-column grid"));
            }
            for cx in x..x + w {
                for cy in y..y + h {
                    if !cells.insert((cx, cy)) {
                        bad(format!("panel {title:?} overlaps another at ({cx},{cy})"));
                    }
                }
            }
            let kind = p["type"].as_str().unwrap_or_default();
            if kind == "row" {
                continue;
            }
            if !["timeseries", "stat", "table", "bargauge"].contains(&kind) {
                bad(format!("panel {title:?}: type {kind:?}"));
            }
            if title.is_empty() || p["description"].as_str().is_none_or(|s| s.len() < 10) {
                bad(format!("panel {title:?}: no title or description"));
            }
            if p["datasource"]["uid"] != "${datasource}" {
                bad(format!("panel {title:?}: datasource is not ${{datasource}}"));
            }
            if p["fieldConfig"]["defaults"]["unit"].as_str().is_none_or(str::is_empty) {
                bad(format!("panel {title:?}: no unit"));
            }
            if matches!(kind, "stat" | "bargauge")
                && !p["fieldConfig"]["overrides"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|o| o["properties"].as_array().into_iter().flatten())
                    .any(|prop| prop["id"] == "thresholds")
            {
                bad(format!("panel {title:?}: a {kind} without thresholds"));
            }
            let ts = p["targets"].as_array().cloned().unwrap_or_default();
            if ts.is_empty() {
                bad(format!("panel {title:?}: no targets"));
            }
            let mut refs = HashSet::new();
            for t in &ts {
                let expr = t["expr"].as_str().unwrap_or_default();
                if expr.is_empty() || t["datasource"]["uid"] != "${datasource}" || !refs.insert(t["refId"].to_string())
                {
                    bad(format!("panel {title:?}: target {t} lacks an expr, the ${{datasource}} or a unique refId"));
                }
                for r in var_refs(expr) {
                    if !defined.contains(&r) {
                        bad(format!("panel {title:?}: ${r} is not a variable of this dashboard"));
                    }
                }
                // Future metrics are all listed in expected-empty.json unless the query has a fallback.
                if FUTURE_METRICS.iter().any(|m| expr.contains(m)) && !expr.contains("or vector(0)") {
                    let list = std::fs::read_to_string(dir().join("expected-empty.json"))?;
                    if !list.contains(&serde_json::to_string(expr)?) {
                        bad(format!("panel {title:?}: {expr} uses a future metric but is not in expected-empty.json"));
                    }
                }
            }
        }
    }
    expected_empty(&dashboards)?;
    let prov = std::fs::read_to_string(dir().join("provisioning/dashboards.yaml"))?;
    if !prov.contains("apiVersion: 1") || !prov.contains("type: file") {
        problems.push("provisioning/dashboards.yaml is not a file provider".into());
    }
    if !problems.is_empty() {
        bail!("{} problems:\n{}", problems.len(), problems.join("\n"));
    }
    Ok(())
}

/// An instant query; Err for anything Prometheus refuses (a PromQL error fails the test even if
/// the query is expected to be empty).
async fn instant(prom: &PrometheusProc, promql: &str) -> Result<usize> {
    let resp = client().post(prom.url("/api/v1/query")).form(&[("query", promql)]).send().await?;
    let v: Value = resp.json().await?;
    if v["status"] != "success" {
        bail!("{}: {}", v["errorType"], v["error"]);
    }
    Ok(match v["data"]["resultType"].as_str() {
        Some("vector") | Some("matrix") => v["data"]["result"].as_array().map_or(0, Vec::len),
        _ => 1, // scalar or string
    })
}

/// Values of a `label_values(selector, label)` variable.
async fn label_values(prom: &PrometheusProc, query: &str) -> Result<Vec<String>> {
    let inner = query.strip_prefix("label_values(").and_then(|s| s.strip_suffix(')')).context("not label_values(…)")?;
    let (selector, label) = inner.rsplit_once(',').context("label_values without a label")?;
    let resp = client()
        .get(prom.url(&format!("/api/v1/label/{}/values", label.trim())))
        .query(&[("match[]", selector.trim())])
        .send()
        .await?;
    let v: Value = resp.json().await?;
    if v["status"] != "success" {
        bail!("{query}: {v}");
    }
    Ok(v["data"].as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_data_from_a_live_fleet() -> Result<()> {
    let started = Instant::now();
    let dashboards = all_dashboards()?;
    let (empty_panels, empty_vars) = expected_empty(&dashboards)?;

    let dir = tempfile::tempdir()?;
    let ch = ClickHouseProc::start(&dir.path().join("ch")).await?;
    // A user table with data and some queries, as any real ClickHouse has.
    ch.query(
        "CREATE TABLE default.events (ts DateTime, v UInt64) ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY ts",
    )
    .await?;
    for i in 0..3 {
        ch.query(&format!("INSERT INTO default.events SELECT now() - number, number + {i} FROM numbers(1000)")).await?;
    }
    ch.query("SELECT count(), sum(v) FROM default.events").await?;
    ch.query("ALTER TABLE default.events DELETE WHERE v = 1").await?;
    let controller = ControllerProc::start(&dir.path().join("c"), free_port(), free_port(), &[]).await?;
    let agent = AgentProc::start(
        &controller.grpc_url(),
        "dash-1",
        &dir.path().join("spool"),
        free_port(),
        &["--interval", "1s", "--clickhouse-url", &ch.url(), "--clickhouse-timeout", "1s", "--process", "agentd"],
    )
    .await?;
    let prom =
        PrometheusProc::start(&dir.path().join("prom"), &fleet_scrape_config(agent.http, controller.http)).await?;
    let instance = format!("127.0.0.1:{}", agent.http);

    // Keep ClickHouse busy enough that its query counters move, as in any live system.
    let ch_url = ch.url();
    let load = tokio::spawn(async move {
        loop {
            let _ = client().post(&ch_url).body("SELECT count() FROM default.events WHERE v > 10").send().await;
            let _ = client()
                .post(&ch_url)
                .body("INSERT INTO default.events SELECT now(), number FROM numbers(10)")
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });

    // Resolve every dashboard's variables through their own queries, in order, then run every
    // target; repeat until everything that must have data has it (rates need a few scrapes).
    struct Outcome {
        target: Target,
        query: String,
        series: usize,
    }
    let result = eventually(Duration::from_secs(45), || async {
        let mut outcomes = Vec::new();
        let mut missing = Vec::new();
        for d in &dashboards {
            let uid = d["uid"].as_str().unwrap_or_default().to_string();
            let mut vars: BTreeMap<String, String> =
                BUILTINS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            vars.insert("datasource".into(), "prometheus".into());
            for v in d["templating"]["list"].as_array().into_iter().flatten().filter(|v| v["type"] == "query") {
                let name = v["name"].as_str().unwrap_or_default().to_string();
                let q = substitute(v["query"]["query"].as_str().unwrap_or_default(), &vars);
                let values = label_values(&prom, &q).await?;
                let value = if let Some(first) = values.iter().find(|x| **x == instance).or(values.first()) {
                    first.clone()
                } else if empty_vars.contains_key(&(uid.clone(), name.clone())) {
                    // A future variable: the Medic node name is what it will hold.
                    if name == "node" { agent.node.clone() } else { ".*".into() }
                } else {
                    missing.push(format!("{uid}: variable {name}: {q} has no values"));
                    continue;
                };
                vars.insert(name, value);
            }
            for t in targets(d) {
                let query = substitute(&t.expr, &vars);
                let series = instant(&prom, &query)
                    .await
                    .with_context(|| format!("{uid} / {} / {}: {query}", t.panel, t.ref_id))?;
                let listed = empty_panels.contains_key(&(t.dashboard.clone(), t.panel.clone(), t.ref_id.clone()));
                if series == 0 && !listed {
                    missing.push(format!("{uid} / {} / {}: {query}", t.panel, t.ref_id));
                }
                outcomes.push(Outcome { target: t, query, series });
            }
        }
        if missing.is_empty() {
            Ok(Some(outcomes))
        } else {
            bail!("{} queries without data:\n{}", missing.len(), missing.join("\n"))
        }
    })
    .await;
    load.abort();
    let outcomes = result?;

    // The expected-empty list is honoured: a "future" query must still be empty (when the feature
    // lands, drop its mark in dashboards/gen/dashboards.mjs so the query gets checked); the others
    // may or may not have data on a healthy fleet.
    let mut report = Vec::new();
    let mut stale = Vec::new();
    for o in &outcomes {
        let key = (o.target.dashboard.clone(), o.target.panel.clone(), o.target.ref_id.clone());
        if let Some(e) = empty_panels.get(&key) {
            report.push(format!(
                "  [{}] {} / {} / {}: {} — {} ({} series now)",
                e.kind, key.0, key.1, key.2, o.target.expr, e.reason, o.series
            ));
            if e.kind == "future" && o.series > 0 {
                stale.push(format!("{} / {} / {}: {}", key.0, key.1, key.2, o.query));
            }
        }
    }
    for ((d, v), e) in &empty_vars {
        report.push(format!("  [{}] {d}: variable ${v} — {}", e.kind, e.reason));
    }
    let checked = outcomes.iter().filter(|o| o.series > 0).count();
    println!(
        "{} panel queries over {} dashboards: {checked} returned data; expected empty ({}):\n{}\n(took {:.1?})",
        outcomes.len(),
        dashboards.len(),
        report.len(),
        report.join("\n"),
        started.elapsed()
    );
    if !stale.is_empty() {
        bail!(
            "\"future\" queries now return data; remove their `empty` mark in dashboards/gen/dashboards.mjs:\n{}",
            stale.join("\n")
        );
    }
    Ok(())
}
