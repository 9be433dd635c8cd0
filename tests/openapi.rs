//! The OpenAPI description and the router agree.

/// `api/openapi.json` and the route table list the same routes (path template and method).
#[test]
fn openapi_lists_every_route_and_only_those() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    let mut routed: Vec<(String, String)> = edge::routes::DATA
        .iter()
        .chain(edge::routes::ADMIN.iter())
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    routed.dedup();
    routed.sort();
    routed.dedup();
    documented.sort();
    assert_eq!(documented, routed);
}
