//! `deploy/grafana/turnpike.json` against what the real daemon exports at `/metrics`: every
//! series the dashboard queries exists, every exported metric is on the dashboard, counters
//! are only read through `rate`/`increase` and gauges never are. turnpike-specific.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::http;
use crate::harness::{against_coturn, Server};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/turnpike.json");

/// Sample names from the `# TYPE` lines, with whether each is a counter (read through
/// `rate`). A histogram's `_bucket`, `_sum` and `_count` are counters.
fn exported(metrics: &str) -> BTreeMap<String, bool> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .flat_map(|rest| {
            let (name, kind) = rest.split_once(' ').expect("# TYPE NAME KIND");
            match kind {
                "counter" => vec![(format!("{name}_total"), true)],
                "histogram" => ["bucket", "sum", "count"]
                    .map(|part| (format!("{name}_{part}"), true))
                    .to_vec(),
                _ => vec![(name.to_owned(), false)],
            }
        })
        .collect()
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Each `turnpike_...` name in `expr`, with the text before it.
fn metric_uses(expr: &str) -> Vec<(&str, &str)> {
    let mut uses = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("turnpike_") {
        let start = expr.len() - rest.len() + at;
        let len = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(expr.len() - start);
        uses.push((&expr[..start], &expr[start..start + len]));
        rest = &expr[start + len..];
    }
    uses
}

#[test]
fn grafana_dashboard_queries_exactly_the_exported_metrics() {
    if against_coturn() {
        eprintln!("grafana dashboard: skipped, it is for turnpike's /metrics");
        return;
    }
    let server = Server::start(&[]);
    let reply = http(server.api.unwrap(), "GET", "/metrics", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let exported = exported(&reply.body);
    assert!(exported.contains_key("turnpike_draining"), "{}", reply.body);

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(!all.is_empty());
    let mut used = BTreeSet::new();
    for expr in &all {
        let opens = |c| expr.matches(c).count();
        assert_eq!(opens('('), opens(')'), "unbalanced parentheses: {expr}");
        assert_eq!(opens('{'), opens('}'), "unbalanced braces: {expr}");
        for (before, name) in metric_uses(expr) {
            let counter = *exported
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not exported by /metrics: {expr}"));
            let in_rate = before.ends_with("rate(") || before.ends_with("increase(");
            assert_eq!(
                counter, in_rate,
                "{name}: counters go through rate(), gauges do not: {expr}"
            );
            used.insert(name.to_owned());
        }
    }
    // A histogram is on the dashboard when its buckets are.
    let optional = |n: &str| n.ends_with("_sum") || n.ends_with("_count");
    let missing: Vec<_> = exported
        .keys()
        .filter(|n| !used.contains(*n) && !optional(n))
        .collect();
    assert!(
        missing.is_empty(),
        "exported but not on the dashboard: {missing:?}"
    );

    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id"
        );
        assert!(panel["gridPos"]["w"].as_u64().unwrap() <= 24);
    }
}
