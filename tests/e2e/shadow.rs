//! Shadow runs: a candidate version of a plugin runs on live traffic beside the live one; its
//! verdicts are compared and counted, and never reach a delivery.

use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_candidate_that_differs_on_some_event_types_is_counted_and_listed_and_never_delivered() {
    let Some(live) = plugin_file("rust-filter") else { return };
    // The JavaScript filter drops the same types with the same reason, but adds `x-filtered-by: js`
    // to what it passes: the same verdict on test.* events, a different one on orders.
    let Some(candidate) = plugin_file("js-filter") else { return };
    let redis = RedisServer::start().await;
    let mut receiver = Receiver::start().await;
    let toml = base_toml(&redis)
        + &endpoint_toml("orders", &receiver.url(), "")
        + &format!(
            "\n[[plugins]]\nname = \"filter\"\npath = \"{}\"\nshadow = \"{}\"\nconfig = {{ drop_types = [\"test.*\"] }}\n",
            live.display(),
            candidate.display()
        )
        + "\n[[routes]]\nsource = \"shop\"\nplugins = [\"filter\"]\nendpoints = [\"orders\"]\n";
    let gateway = start_gateway(&toml).await;
    let addr = gateway.addr();
    let mut orders = Vec::new();
    for i in 0..5 {
        let (status, accepted) =
            post_event(addr, "shop", &format!(r#"{{"type":"order.created","order_id":{i}}}"#)).await;
        assert_eq!((status, accepted["deliveries"].as_array().map(Vec::len)), (202, Some(1)), "{accepted}");
        orders.push(accepted["id"].as_str().unwrap().to_string());
        let (status, dropped) = post_event(addr, "shop", r#"{"type":"test.ping"}"#).await;
        assert_eq!((status, dropped["deliveries"].as_array().map(Vec::len)), (202, Some(0)), "{dropped}");
    }

    // Every live call had its shadow run: 5 the same (drops), 5 different (passes).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let report = loop {
        let (status, report) = admin_get(addr, "/v1/plugins/filter/shadow").await;
        assert_eq!(status, 200, "{report}");
        let runs = ["same", "different", "failed", "skipped"].iter().map(|k| report[k].as_u64().unwrap()).sum::<u64>();
        if runs >= 10 {
            break report;
        }
        assert!(tokio::time::Instant::now() < deadline, "the shadow runs never finished: {report}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((report["same"].as_u64(), report["different"].as_u64()), (Some(5), Some(5)), "{report}");
    assert_eq!((report["failed"].as_u64(), report["skipped"].as_u64()), (Some(0), Some(0)), "{report}");
    assert_eq!(report["candidate"], candidate.display().to_string());
    let differences = report["differences"].as_array().unwrap();
    let mut listed: Vec<String> = differences.iter().map(|d| d["event_id"].as_str().unwrap().to_string()).collect();
    listed.sort();
    orders.sort();
    assert_eq!(listed, orders, "each order is a difference, newest first: {report}");
    for difference in differences {
        assert_eq!(difference["event_type"], "order.created");
        assert!(difference["live"].as_str().unwrap().starts_with("pass: type order.created"), "{difference}");
        assert!(difference["candidate"].as_str().unwrap().contains("x-filtered-by: js"), "{difference}");
    }

    // What was delivered is the live verdict only.
    for _ in 0..5 {
        let got = receiver.next().await;
        assert_eq!(got.header("x-filtered-by"), "", "the candidate's header reached a delivery");
    }
    let metrics = client().get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        r#"sluice_plugin_shadow_runs_total{plugin="filter",outcome="same"} 5"#,
        r#"sluice_plugin_shadow_runs_total{plugin="filter",outcome="different"} 5"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line}");
    }
    let (status, missing) = admin_get(addr, "/v1/plugins/nope/shadow").await;
    assert_eq!(status, 404, "{missing}");
    gateway.shutdown().await;
}
