//! Membership changes that cannot stop a cluster, on the real binary: a node that
//! never catches up stays a removable learner, an address that is no `host:port`
//! is refused before anything is stored, a change that would leave no reachable
//! quorum is refused unless forced, and `/readyz` tells when a leader lost its
//! quorum.

use std::time::Duration;
use std::time::Instant;

use berth_testkit::BerthNode;
use berth_testkit::NodeOptions;
use berth_testkit::Registry;
use berth_testkit::random_bytes;
use reqwest::StatusCode;
use serde_json::Value;
use serde_json::json;

use crate::berth_binary;
use crate::cluster::berth_cluster;
use crate::start_cluster_with;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Push a blob and tag a manifest naming it through `base`, then read the tag back:
/// the cluster commits and answers linearizable reads.
async fn assert_writable(base: &str, tag: &str, seed: u64) {
    let reg = Registry::new(base.to_string());
    let repo = "team/membership-safety";
    let digest = reg
        .push_blob(repo, &random_bytes(1024, seed))
        .await
        .unwrap_or_else(|e| panic!("blob push through {base}: {e:#}"));
    let manifest = crate::cluster::config_only_manifest(&digest, 1024);
    reg.put_manifest(repo, tag, OCI_MANIFEST, &manifest)
        .await
        .unwrap_or_else(|e| panic!("manifest push through {base}: {e:#}"));
    let resp = reg.get_manifest(repo, tag, OCI_MANIFEST).await.expect("GET manifest");
    assert_eq!(resp.status(), StatusCode::OK, "tag {tag} through {base}");
}

async fn add_node(base: &str, body: Value) -> (StatusCode, Value) {
    let resp = http()
        .post(format!("{base}/admin/cluster/nodes"))
        .json(&body)
        .send()
        .await
        .expect("POST /admin/cluster/nodes");
    let status = resp.status();
    (status, resp.json().await.expect("JSON answer"))
}

async fn remove_node(base: &str, id: u64, force: bool) -> (StatusCode, Value) {
    let resp = http()
        .delete(format!("{base}/admin/cluster/nodes/{id}?force={force}"))
        .send()
        .await
        .expect("DELETE /admin/cluster/nodes/ID");
    let status = resp.status();
    (status, resp.json().await.expect("JSON answer"))
}

async fn cluster_status(base: &str) -> Value {
    http()
        .get(format!("{base}/admin/cluster"))
        .send()
        .await
        .expect("GET /admin/cluster")
        .json()
        .await
        .expect("status JSON")
}

async fn readyz(base: &str) -> StatusCode {
    http()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("GET /readyz")
        .status()
}

fn error_code(body: &Value) -> &str {
    body["errors"][0]["code"].as_str().unwrap_or("")
}

/// Add node `id` at an address nothing listens on: refused once the catch-up
/// timeout passes, leaving a learner that does not vote.
async fn add_bogus_node(base: &str, id: u64) {
    let started = Instant::now();
    let (status, body) = add_node(base, json!({"id": id, "grpc_addr": "127.0.0.1:1"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "CONFLICT", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("did not catch up") && message.contains("learner"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the add waited {:?}",
        started.elapsed()
    );
    let status = cluster_status(base).await;
    assert_eq!(status["members"][id.to_string()]["role"], "learner", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_catches_up_leaves_a_single_node_writable_and_is_removable() {
    let node =
        BerthNode::start_with(NodeOptions::new(berth_binary()).extra_toml("[cluster]\ncatch_up_timeout = \"2s\"\n"))
            .await
            .unwrap_or_else(|e| panic!("starting berth: {e:#}"));
    let base = node.base_url();

    // Addresses that are no `host:port` are refused, and nothing is stored.
    for bad in ["127.0.0.1:1\0\nx", "127.0.0.1", "nowhere:0", ""] {
        let (status, body) = add_node(&base, json!({"id": 2, "grpc_addr": bad})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert_eq!(error_code(&body), "BAD_REQUEST", "{bad:?}: {body}");
    }
    let (status, body) = add_node(
        &base,
        json!({"id": 2, "grpc_addr": "127.0.0.1:7000", "http_addr": "http://a b:1"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let status = cluster_status(&base).await;
    assert_eq!(status["members"].as_object().map(|m| m.len()), Some(1), "{status}");

    // The bogus node stays a learner: the node keeps committing and is ready.
    add_bogus_node(&base, 2).await;
    assert_writable(&base, "after-bogus-add", 1).await;
    assert_eq!(readyz(&base).await, StatusCode::OK);

    // The learner can be removed, through the CLI too.
    let status = berth_cluster(&node, &["remove-node", "2"]);
    assert!(status["members"].get("2").is_none(), "{status}");
    assert_writable(&base, "after-removal", 2).await;

    // It can be added (and refused) again, and removed over HTTP.
    add_bogus_node(&base, 2).await;
    let (status, body) = remove_node(&base, 2, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_writable(&base, "after-second-removal", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_members_and_quorum_breaking_removals_leave_three_nodes_writable() {
    let (mut nodes, _s3, _) = start_cluster_with(3, "", "catch_up_timeout = \"2s\"\n", false).await;
    let bases: Vec<String> = nodes.iter().map(BerthNode::base_url).collect();

    // Two bogus voters would have stopped the cluster: both stay learners.
    add_bogus_node(&bases[0], 7).await;
    add_bogus_node(&bases[1], 8).await;
    for (i, base) in bases.iter().enumerate() {
        assert_writable(base, &format!("bogus-{i}"), 10 + i as u64).await;
    }
    for id in [7, 8] {
        let (status, body) = remove_node(&bases[2], id, false).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // With one follower down, removing the other live follower would leave one of
    // two voters reachable: refused without force, and nothing changes.
    let leader = cluster_status(&bases[0]).await["leader"].as_u64().expect("a leader") as usize;
    let followers: Vec<usize> = (1..=3).filter(|id| *id != leader).collect();
    let (down, live) = (followers[0], followers[1]);
    nodes[down - 1].kill9();
    let (status, body) = remove_node(&bases[leader - 1], live as u64, false).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["errors"][0]["message"].as_str().unwrap_or("").contains("force"),
        "{body}"
    );
    let status = cluster_status(&bases[leader - 1]).await;
    assert_eq!(status["members"][live.to_string()]["role"], "voter", "{status}");
    assert_writable(&bases[live - 1], "one-down", 20).await;

    // Removing the dead follower keeps a reachable majority: allowed.
    let (status, body) = remove_node(&bases[live - 1], down as u64, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_writable(&bases[leader - 1], "dead-one-removed", 21).await;

    // Once the last follower dies too, the leader stays leader but has no quorum:
    // /readyz says so.
    nodes[live - 1].kill9();
    let deadline = Instant::now() + Duration::from_secs(20);
    while readyz(&bases[leader - 1]).await == StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "/readyz of a leader without a quorum stayed 200"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(readyz(&bases[leader - 1]).await, StatusCode::SERVICE_UNAVAILABLE);
}
