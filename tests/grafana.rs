//! The provisioned dashboard only queries metrics the edge really exports.

use std::collections::BTreeSet;

#[test]
fn every_dashboard_query_uses_an_exported_metric() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/dashboards/edge.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(!panels.is_empty());
    let mut used = BTreeSet::new();
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{expr}: no edge_ metric");
            for name in names {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name)
                    .to_string();
                assert!(edge::metrics::ALL.contains(&base.as_str()), "{expr}: {name} is not exported by the edge");
                used.insert(base);
            }
        }
    }
    // Every SPEC §8 metric is on the dashboard.
    for name in edge::metrics::ALL {
        assert!(used.contains(*name), "{name} is exported but not on the dashboard");
    }
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("edge_") {
        let start = i + pos;
        let prev_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end =
            expr[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(expr.len(), |e| start + e);
        if prev_ok {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}
