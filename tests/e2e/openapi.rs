//! `/openapi.json` documents exactly the routes the server answers, and every answer the server gives
//! to a plain call of each route has its status documented.

use std::collections::BTreeSet;

use crate::harness::*;

#[tokio::test]
async fn openapi_documents_every_route_and_the_statuses_they_answer() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let toml = base_toml(&redis)
        + &endpoint_toml("orders", &receiver.url(), "")
        + "\n[[routes]]\nsource = \"shop\"\nendpoints = [\"orders\"]\n";
    let gateway = start_gateway(&toml).await;
    let response = client().get(format!("http://{}/openapi.json", gateway.addr())).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let doc: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("gateway/openapi.json")).unwrap()).unwrap();
    assert_eq!(doc, on_disk, "the served document is the one in the repo");

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| ops.as_object().unwrap().keys().map(move |m| (m.to_uppercase(), path.clone())))
        .collect();
    let served: BTreeSet<(String, String)> =
        sluice::http::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, served, "routes and openapi.json differ");

    // The server answers each one (no "no such route"), with a documented status.
    for (method, template) in &served {
        let path = template.replace("{key}", "shop").replace("{id}", "dlv_unknown").replace("{name}", "orders");
        let response = client()
            .request(method.parse().unwrap(), format!("http://{}{path}", gateway.addr()))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(if template.starts_with("/v1/events") { "{}" } else { "" })
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(!body.contains("no such route") && status != 405, "{method} {path}: {status} {body}");
        let responses = &doc["paths"][template.as_str()][method.to_lowercase()]["responses"];
        assert!(responses.get(status.to_string()).is_some(), "{method} {template} answered {status}, undocumented");
    }
    gateway.shutdown().await;
}
