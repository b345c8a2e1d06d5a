//! `GET /metrics` on the real binary: requests are counted as they are answered and
//! the Raft gauges show the node's own state.

use berth_testkit::Registry;
use berth_testkit::random_bytes;
use berth_testkit::registry::header_str;

use crate::start_node;

/// The value of one series in an OpenMetrics text, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

async fn scrape(base: &str) -> String {
    let resp = reqwest::get(format!("{base}/metrics")).await.expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let kind = header_str(&resp, "content-type").unwrap_or_default();
    assert!(kind.starts_with("application/openmetrics-text"), "content type {kind}");
    resp.text().await.expect("metrics body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_show_the_raft_state() {
    let node = start_node().await;
    let base = node.base_url();
    let reg = Registry::new(base.clone());
    let data = random_bytes(3 * 1024 * 1024 + 5, 77);
    let digest = reg.push_blob("team/metrics", &data).await.expect("push");
    for _ in 0..3 {
        assert_eq!(reg.get_blob("team/metrics", &digest).await.expect("pull"), data);
    }
    let missing = reqwest::get(format!("{base}/v2/team/metrics/manifests/nope"))
        .await
        .expect("GET missing manifest");
    assert_eq!(missing.status(), 404);

    let text = scrape(&base).await;
    let blob_gets = r#"berth_http_requests_total{endpoint="blob",method="GET",status="200"}"#;
    assert_eq!(sample(&text, blob_gets), Some(3.0), "{text}");
    let not_found = r#"berth_http_requests_total{endpoint="manifest",method="GET",status="404"}"#;
    assert_eq!(sample(&text, not_found), Some(1.0), "{text}");
    let bytes = sample(&text, r#"berth_http_response_body_bytes_total{endpoint="blob"}"#).unwrap_or(0.0);
    assert!(bytes >= 3.0 * data.len() as f64, "blob bytes {bytes}");
    let timed = r#"berth_http_request_duration_seconds_count{endpoint="upload",method="PUT"}"#;
    assert!(sample(&text, timed).unwrap_or(0.0) >= 1.0, "{text}");
    // The scrape itself is in flight while it is answered.
    assert_eq!(sample(&text, "berth_http_requests_in_flight"), Some(1.0), "{text}");
    // A single node leads its own cluster and has applied what it logged.
    assert_eq!(
        sample(&text, r#"berth_raft_state{state="leader"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "berth_raft_leader_known"), Some(1.0));
    assert_eq!(sample(&text, "berth_raft_members"), Some(1.0));
    let applied = sample(&text, "berth_raft_applied_index").unwrap_or(0.0);
    assert!(applied >= 1.0, "applied index {applied}");

    // The next scrape counts the first one.
    let again = scrape(&base).await;
    let scrapes = r#"berth_http_requests_total{endpoint="metrics",method="GET",status="200"}"#;
    assert_eq!(sample(&again, scrapes), Some(1.0), "{again}");
}
