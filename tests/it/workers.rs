//! Background workers on the real binary: the upload sweeper expires an abandoned
//! upload, and `GET /admin/workers` shows what it did.

use std::time::Duration;

use berth_testkit::BerthNode;
use berth_testkit::NodeOptions;
use serde_json::Value;

use crate::berth_binary;

async fn workers(base: &str) -> Vec<Value> {
    let resp = reqwest::get(format!("{base}/admin/workers"))
        .await
        .expect("GET /admin/workers");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    body["workers"].as_array().cloned().expect("a list of workers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_sweeper_expires_an_abandoned_upload_and_reports_it() {
    let opts =
        NodeOptions::new(berth_binary()).extra_toml("[uploads]\nexpire_after = \"1s\"\nsweep_interval = \"200ms\"\n");
    let node = BerthNode::start_with(opts).await.expect("start berth");
    let base = node.base_url();
    let http = reqwest::Client::new();

    let started = http
        .post(format!("{base}/v2/team/sweep/blobs/uploads/"))
        .send()
        .await
        .expect("POST upload");
    assert_eq!(started.status(), 202);
    let location = started.headers()["location"].to_str().expect("location").to_string();
    let upload = format!("{base}{location}");
    let chunk = http
        .patch(&upload)
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 1000])
        .send()
        .await
        .expect("PATCH");
    assert_eq!(chunk.status(), 202);

    let listed = workers(&base).await;
    let sweeper = listed
        .iter()
        .find(|w| w["name"] == "upload_sweeper")
        .unwrap_or_else(|| panic!("no upload_sweeper in {listed:?}"));
    assert_eq!(sweeper["leader_only"], false);

    // Abandoned: after the expiry the next sweep removes it.
    let mut status = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let w = workers(&base).await;
        let s = w.into_iter().find(|w| w["name"] == "upload_sweeper").expect("listed");
        if s["progress"]["expired_sessions"].as_u64() == Some(1) {
            status = Some(s);
            break;
        }
    }
    let status = status.expect("the sweeper reported one expired session within 10 s");
    assert!(status["steps"].as_u64().unwrap_or(0) >= 1, "{status}");
    assert!(status["last_step_at"].as_u64().is_some(), "{status}");
    assert_eq!(status["last_error"], Value::Null, "{status}");
    assert!(
        ["idle", "running"].contains(&status["state"].as_str().unwrap_or("")),
        "{status}"
    );

    let gone = http.get(&upload).send().await.expect("GET upload");
    assert_eq!(gone.status(), 404);
    let body: Value = gone.json().await.expect("error body");
    assert_eq!(body["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN");
}
