//! Multi-process clusters of the real binary on loopback, sharing one SeaweedFS
//! bucket: writes and reads through any node, and chunked uploads whose requests
//! land on different nodes, also after the session's owner was killed.

use std::path::Path;
use std::time::Duration;

use berth_testkit::BerthNode;
use berth_testkit::NodeOptions;
use berth_testkit::Registry;
use berth_testkit::SeaweedFs;
use berth_testkit::node::free_port;
use berth_testkit::proxy::Partitions;
use berth_testkit::random_bytes;
use berth_testkit::sha256_digest;
use reqwest::StatusCode;

use crate::berth_binary;
use crate::s3_toml;
use crate::start_cluster;
use crate::start_cluster_with;

struct Cluster {
    nodes: Vec<BerthNode>,
    s3: SeaweedFs,
}

impl Cluster {
    /// `n` nodes bootstrapped together, all ready (a leader is known everywhere).
    async fn start(n: u64) -> Cluster {
        let (nodes, s3) = start_cluster(n, "").await;
        Cluster { nodes, s3 }
    }

    fn reg(&self, i: usize) -> Registry {
        Registry::new(self.nodes[i].base_url())
    }
}

/// The path of an absolute URL (what a load balancer would send to any node).
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.find('/')
        .map_or_else(|| "/".to_string(), |i| rest[i..].to_string())
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// PUT an OCI image manifest at `url` (`…/manifests/<tag>`).
async fn put_manifest(http: &reqwest::Client, url: String, manifest: &[u8]) -> reqwest::Response {
    http.put(url)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_vec())
        .send()
        .await
        .expect("PUT manifest")
}

/// GET an OCI image manifest at `url` (`…/manifests/<reference>`).
async fn get_manifest(http: &reqwest::Client, url: String) -> reqwest::Response {
    http.get(url)
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("GET manifest")
}

/// An OCI image manifest whose config is the blob `digest` of `size` bytes, no layers.
pub(crate) fn config_only_manifest(digest: &str, size: usize) -> Vec<u8> {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": size},
        "layers": []
    });
    serde_json::to_vec(&manifest).expect("json")
}

fn range_end(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_through_each_node_are_pulled_through_every_other() {
    let cluster = Cluster::start(3).await;
    for writer in 0..3 {
        let repo = format!("team/written-by-{writer}");
        let data = random_bytes(256 * 1024 + writer, writer as u64 + 40);
        let digest = cluster.reg(writer).push_blob(&repo, &data).await.expect("push blob");
        let bytes = config_only_manifest(&digest, data.len());
        let put = put_manifest(
            &http(),
            format!("{}/v2/{repo}/manifests/v1", cluster.nodes[writer].base_url()),
            &bytes,
        )
        .await;
        assert_eq!(put.status(), StatusCode::CREATED);
        for reader in (0..3).filter(|r| *r != writer) {
            // Tag reads are linearizable: the push is visible at once on every node.
            let got = get_manifest(
                &http(),
                format!("{}/v2/{repo}/manifests/v1", cluster.nodes[reader].base_url()),
            )
            .await;
            assert_eq!(
                got.status(),
                StatusCode::OK,
                "node {reader} reading node {writer}'s push"
            );
            assert_eq!(got.bytes().await.expect("body").as_ref(), bytes.as_slice());
            assert_eq!(
                cluster.reg(reader).get_blob(&repo, &digest).await.expect("pull blob"),
                data
            );
        }
    }

    // `berth cluster status` through a follower shows every member's role, health
    // and progress, with the leader's commit index.
    let leader = current_leader(&cluster.nodes);
    let follower = (leader + 1) % 3;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = berth_cluster(&cluster.nodes[follower], &["status"]);
        let settled = status["members"]
            .as_object()
            .is_some_and(|m| m.values().all(|m| m["lag"] == 0));
        if settled || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["state"], "Follower", "{status}");
    let committed = status["committed_index"].as_u64().expect("committed index");
    assert!(committed >= status["applied_index"].as_u64().unwrap_or(0), "{status}");
    let members = status["members"].as_object().expect("members");
    assert_eq!(members.len(), 3, "{status}");
    for (id, m) in members {
        assert_eq!(m["role"], "voter", "{id}: {m}");
        assert_eq!(m["reachable"], true, "{id}: {m}");
        assert_eq!(m["lag"], 0, "{id}: {m}");
        assert_eq!(m["term"], status["term"], "{id}: {m}");
        let expected_state = if id.parse::<usize>().ok() == Some(leader + 1) {
            "Leader"
        } else {
            "Follower"
        };
        assert_eq!(m["state"], expected_state, "{id}: {m}");
    }
}

/// With `follower_lease` on, followers that serve reads take leases and then answer
/// tag reads alone; a tag moved through any node is still seen at once through
/// every other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_moves_are_seen_at_once_through_followers_reading_under_leases() {
    let (nodes, s3, _) = start_cluster_with(3, "", "follower_lease = \"250ms\"", false).await;
    let cluster = Cluster { nodes, s3 };
    let repo = "team/moving";
    let http = http();
    // Two manifests the tag moves between.
    let mut manifests = Vec::new();
    for seed in 0..2u64 {
        let config = random_bytes(512, 70 + seed);
        let digest = cluster.reg(0).push_blob(repo, &config).await.expect("push config");
        let bytes = config_only_manifest(&digest, config.len());
        manifests.push((sha256_digest(&bytes), bytes));
    }
    let url = |node: usize| format!("{}/v2/{repo}/manifests/latest", cluster.nodes[node].base_url());
    let put = put_manifest(&http, url(0), &manifests[0].1).await;
    assert_eq!(put.status(), StatusCode::CREATED);

    // Reads through every node until both followers hold a lease.
    let leased = |status: &serde_json::Value| {
        status["members"]
            .as_object()
            .map_or(0, |m| m.values().filter(|m| m["follower_lease"] == true).count())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        for node in 0..3 {
            assert_eq!(get_manifest(&http, url(node)).await.status(), StatusCode::OK);
        }
        if leased(&berth_cluster(&cluster.nodes[0], &["status"])) == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the followers got no lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for round in 0..60 {
        let writer = round % 3;
        let (digest, bytes) = &manifests[(round + 1) % 2];
        let put = put_manifest(&http, url(writer), bytes).await;
        assert_eq!(put.status(), StatusCode::CREATED, "round {round}");
        for reader in (0..3).filter(|r| *r != writer) {
            let got = get_manifest(&http, url(reader)).await;
            assert_eq!(got.status(), StatusCode::OK, "round {round}");
            let served = got
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            assert_eq!(
                &served, digest,
                "round {round}: tag moved through node {writer}, node {reader} served the old manifest"
            );
        }
    }
    let status = berth_cluster(&cluster.nodes[0], &["status"]);
    assert_eq!(
        leased(&status),
        2,
        "followers lost their leases while reading: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_may_hit_a_different_node_every_time() {
    let cluster = Cluster::start(3).await;
    let repo = "team/round-robin";
    let data = random_bytes(13 * 1024 * 1024 + 3, 41);
    let chunk = 3 * 1024 * 1024;
    let location = path_of(&cluster.reg(0).start_upload(repo).await.expect("POST"));
    let mut offset = 0;
    let mut node = 1;
    while offset < data.len() {
        let end = (offset + chunk).min(data.len());
        let resp = http()
            .patch(cluster.reg(node).url(&location))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("{offset}-{}", end - 1))
            .body(data[offset..end].to_vec())
            .send()
            .await
            .expect("PATCH");
        assert_eq!(
            resp.status(),
            StatusCode::ACCEPTED,
            "PATCH {offset}-{} on node {node}",
            end - 1
        );
        assert_eq!(range_end(&resp), format!("0-{}", end - 1));
        offset = end;
        node = (node + 1) % 3;
        // Every node reports the exact progress.
        let status = http()
            .get(cluster.reg(node).url(&location))
            .send()
            .await
            .expect("GET status");
        assert_eq!(status.status(), StatusCode::NO_CONTENT);
        assert_eq!(range_end(&status), format!("0-{}", end - 1), "status on node {node}");
    }
    let digest = finish_upload(&cluster.reg(node), &location, &data).await;
    for i in 0..3 {
        assert_eq!(
            cluster.reg(i).get_blob(repo, &digest).await.expect("pull"),
            data,
            "node {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_survives_the_death_of_its_owner() {
    let mut cluster = Cluster::start(3).await;
    let repo = "team/orphaned-upload";
    let part = 8 * 1024 * 1024;
    let data = random_bytes(2 * part + 1234, 42);
    // Node 2 (index 1) owns the session: it received the POST.
    let location = path_of(&cluster.reg(1).start_upload(repo).await.expect("POST"));
    let first = 2 * part;
    let resp = http()
        .patch(cluster.reg(1).url(&location))
        .header("Content-Type", "application/octet-stream")
        .body(data[..first].to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    cluster.nodes[1].kill9();

    // Another node takes the session over; the client resumes where it reports.
    let survivor = cluster.reg(2);
    let offset = resume_offset(&survivor, &location).await;
    assert!(
        offset <= first,
        "the new owner reports {offset} bytes, more than were sent"
    );
    let resp = http()
        .patch(survivor.url(&location))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("{offset}-{}", data.len() - 1))
        .body(data[offset..].to_vec())
        .send()
        .await
        .expect("PATCH on the survivor");
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let digest = finish_upload(&cluster.reg(0), &location, &data).await;
    assert_eq!(cluster.reg(0).get_blob(repo, &digest).await.expect("pull"), data);
}

/// Finish the upload at `location` through `via` as the blob of `data`; its digest.
async fn finish_upload(via: &Registry, location: &str, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let put = http()
        .put(format!("{}?digest={digest}", via.url(location)))
        .send()
        .await
        .expect("PUT");
    assert_eq!(
        put.status(),
        StatusCode::CREATED,
        "{}",
        put.text().await.unwrap_or_default()
    );
    digest
}

/// The offset an upload continues at, as `via` reports it once it answers (which,
/// after the session's owner went away, takes the session over).
async fn resume_offset(via: &Registry, location: &str) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = http().get(via.url(location)).send().await.expect("GET status");
        if status.status() == StatusCode::NO_CONTENT {
            let range = range_end(&status);
            let end: usize = range.trim_start_matches("0-").parse().expect("Range");
            return if range == "0-0" { 0 } else { end + 1 };
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status stayed {}",
            status.status()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Bytes in the spool file of an S3 upload's `part` (`spool/uploads/<id>/spool-NNNNN`
/// under the data dir): the owner has received that much of the part's bytes.
fn spooled(data_dir: &Path, upload_id: &str, part: u32) -> u64 {
    let file = data_dir
        .join("spool/uploads")
        .join(upload_id)
        .join(format!("spool-{part:05}"));
    std::fs::metadata(file).map_or(0, |m| m.len())
}

/// What a graceful shutdown logs, in this order.
const SHUTDOWN_STAGES: [&str; 7] = [
    "shutdown requested",
    "shutdown: requests drained",
    "shutdown: background workers stopped",
    "shutdown: gRPC server stopped",
    "shutdown: telemetry flushed",
    "shutdown: Raft and the metadata store closed",
    "berth stopped",
];

/// A rolling restart reaches the owner of an upload session while another node is
/// streaming a PATCH of it over to the owner. The owner drains: it keeps serving gRPC
/// (hand-overs, and the Raft traffic its answer waits for) until the PATCH is done,
/// and it is acknowledged. The survivors then take the session over from the stored
/// parts, with every acknowledged byte, and the blob is pushed and pulled whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_of_an_upload_owner_lets_a_hand_over_in_flight_finish() {
    let mut cluster = Cluster::start(3).await;
    let repo = "team/owner-shutting-down";
    let part = 8 * 1024 * 1024;
    let data = random_bytes(2 * part + 1234, 43);
    // The owner is a follower: before answering, it waits to apply its progress
    // write, which the leader sends to its gRPC port.
    let leader = current_leader(&cluster.nodes);
    let (owner, relay, third) = ((leader + 1) % 3, (leader + 2) % 3, leader);
    let location = path_of(&cluster.reg(owner).start_upload(repo).await.expect("POST"));
    let upload_id = location.rsplit('/').next().expect("upload id").to_string();
    let relay_url = cluster.reg(relay).url(&location);
    let patch = |from: usize, to: usize| {
        http()
            .patch(&relay_url)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("{from}-{}", to - 1))
    };
    let resp = patch(0, part).body(data[..part].to_vec()).send().await.expect("PATCH");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    // The second part through the relay, held after 4 MiB until the owner got SIGTERM.
    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
    let (resume_tx, resume_rx) = tokio::sync::oneshot::channel::<()>();
    let second = bytes::Bytes::copy_from_slice(&data[part..2 * part]);
    let in_flight = tokio::spawn(
        patch(part, 2 * part)
            .body(crate::persistence::gated_body(second, 4 << 20, reached_tx, resume_rx))
            .send(),
    );
    tokio::time::timeout(Duration::from_secs(60), reached_rx)
        .await
        .expect("the PATCH body did not reach 4 MiB")
        .expect("PATCH body stream dropped");
    let owner_dir = cluster.nodes[owner].data_dir().to_path_buf();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while spooled(&owner_dir, &upload_id, 2) < 1 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the owner received none of the handed-over part"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let owner_log = cluster.nodes[owner].log_path().to_path_buf();
    let resume = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !berth_testkit::node::tail_of_file(&owner_log, 50).contains("shutdown requested") {
            assert!(std::time::Instant::now() < deadline, "the owner logged no shutdown");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the signal's effects on the servers take hold before the rest comes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = resume_tx.send(());
    };
    // `stop` sends SIGTERM and fails unless the node exits 0 within its timeout.
    let (stopped, ()) = tokio::join!(cluster.nodes[owner].stop(), resume);
    let resp = in_flight.await.expect("PATCH task").expect("PATCH");
    let status = resp.status();
    let range = range_end(&resp);
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "the PATCH in flight to the owner: {}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(range, format!("0-{}", 2 * part - 1));
    if let Err(e) = stopped {
        panic!("the owner's graceful shutdown: {e:#}");
    }

    let log = String::from_utf8_lossy(&std::fs::read(&owner_log).expect("owner log")).into_owned();
    let this_run = &log[log.rfind("=== berth-testkit: start #").unwrap_or(0)..];
    let mut at = 0;
    for stage in SHUTDOWN_STAGES {
        match this_run[at..].find(stage) {
            Some(i) => at += i + stage.len(),
            None => panic!("{stage:?} missing, or out of order, in the owner's log:\n{this_run}"),
        }
    }
    assert!(!this_run.contains("grace period"), "{this_run}");

    // Nothing acknowledged is lost: the survivors continue after the second part.
    assert_eq!(resume_offset(&cluster.reg(third), &location).await, 2 * part);
    let resp = patch(2 * part, data.len())
        .body(data[2 * part..].to_vec())
        .send()
        .await
        .expect("last PATCH");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let digest = finish_upload(&cluster.reg(relay), &location, &data).await;
    let manifest = config_only_manifest(&digest, data.len());
    let url = |node: usize| format!("{}/v2/{repo}/manifests/v1", cluster.nodes[node].base_url());
    assert_eq!(
        put_manifest(&http(), url(relay), &manifest).await.status(),
        StatusCode::CREATED
    );
    let got = get_manifest(&http(), url(third)).await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.expect("manifest").as_ref(), manifest.as_slice());
    let pulled = cluster.reg(third).get_blob(repo, &digest).await.expect("pull");
    assert_eq!(sha256_digest(&pulled), digest);
    assert!(pulled == data, "the pulled blob differs from the pushed bytes");
}

/// Run `berth cluster …` against a node and return its JSON answer.
pub(crate) fn berth_cluster(node: &BerthNode, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(berth_binary())
        .arg("cluster")
        .args(args)
        .args(["--node", &node.base_url()])
        .output()
        .expect("running berth cluster");
    assert!(
        out.status.success(),
        "berth cluster {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from berth cluster")
}

async fn push_and_check(cluster: &Cluster, writer: usize, repo: &str, seed: u64) -> String {
    let data = random_bytes(64 * 1024, seed);
    let digest = cluster.reg(writer).push_blob(repo, &data).await.expect("push");
    for reader in 0..cluster.nodes.len() {
        assert_eq!(
            cluster.reg(reader).get_blob(repo, &digest).await.expect("pull"),
            data,
            "node index {reader}"
        );
    }
    digest
}

/// Start node `id` with an empty data dir and no initial members, wait until it
/// answers, and add it through the CLI on `via`; returns it once it is ready.
async fn join_new_node(cluster: &Cluster, id: u64, via: usize) -> BerthNode {
    let grpc = free_port().expect("port");
    let toml = format!(
        "{}[cluster]\nnode_id = {id}\ngrpc_listen = \"127.0.0.1:{grpc}\"\nheartbeat_interval = \"100ms\"\nelection_timeout = \"500ms\"\n",
        s3_toml(&cluster.s3, "proxy")
    );
    let http_port = free_port().expect("port");
    let opts = NodeOptions {
        binary: berth_binary().into(),
        extra_toml: toml,
        port: Some(http_port),
        // Ready only once it is a member.
        ready_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let starting = tokio::spawn(BerthNode::start_with(opts));
    let health = format!("http://127.0.0.1:{http_port}/healthz");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !http().get(&health).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(
            std::time::Instant::now() < deadline,
            "node {id} never answered /healthz"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let added = berth_cluster(
        &cluster.nodes[via],
        &["add-node", &id.to_string(), &format!("127.0.0.1:{grpc}")],
    );
    assert!(added["members"].get(id.to_string()).is_some(), "{added}");
    starting
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("node {id}: {e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_and_removed_while_serving() {
    let mut cluster = Cluster::start(3).await;
    let mut pushed = vec![push_and_check(&cluster, 0, "team/membership", 60).await];

    // A fourth node starts without initial members and is added through the CLI.
    let fourth = join_new_node(&cluster, 4, 0).await;
    cluster.nodes.push(fourth);
    let status = berth_cluster(&cluster.nodes[3], &["status"]);
    assert_eq!(status["members"].as_object().map(|m| m.len()), Some(4), "{status}");
    pushed.push(push_and_check(&cluster, 3, "team/membership", 61).await);

    // Remove node 2 through node 3; the others keep serving.
    let status = berth_cluster(&cluster.nodes[2], &["remove-node", "2"]);
    assert!(status["members"].get("2").is_none(), "{status}");
    let removed = cluster.nodes.remove(1);
    // Dropping it stops it and deletes its data: node 2 is wiped.
    drop(removed);
    pushed.push(push_and_check(&cluster, 0, "team/membership", 62).await);
    pushed.push(push_and_check(&cluster, 2, "team/membership", 63).await);

    // The wiped node 2 rejoins (at a new address) and serves everything pushed so far.
    let rejoined = join_new_node(&cluster, 2, 2).await;
    cluster.nodes.push(rejoined);
    let status = berth_cluster(&cluster.nodes[3], &["status"]);
    assert_eq!(status["members"].as_object().map(|m| m.len()), Some(4), "{status}");
    push_and_check(&cluster, 3, "team/membership", 64).await;
    let rejoined = cluster.reg(3);
    for (seed, digest) in (60..).zip(&pushed) {
        let blob = rejoined.get_blob("team/membership", digest).await.expect("pull");
        assert_eq!(blob, random_bytes(64 * 1024, seed), "{digest} on the rejoined node");
    }
}

/// One push that was acknowledged: its manifest PUT answered 201.
struct Acked {
    repo: String,
    tag: String,
    manifest: Vec<u8>,
    layer_digest: String,
    layer: Vec<u8>,
}

/// Push a one-layer image through `base`; an error when any step failed (the push
/// is then not acknowledged and may or may not be visible).
async fn try_push(http: &reqwest::Client, base: &str, repo: &str, tag: &str, seed: u64) -> Result<Acked, String> {
    let layer = random_bytes(32 * 1024, seed);
    let layer_digest = sha256_digest(&layer);
    let config = format!("{{\"seed\":{seed}}}").into_bytes();
    let config_digest = sha256_digest(&config);
    for (digest, bytes) in [(&layer_digest, &layer), (&config_digest, &config)] {
        let url = format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}");
        let resp = http
            .post(url)
            .body(bytes.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != StatusCode::CREATED {
            return Err(format!(
                "blob: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            ));
        }
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
    }))
    .map_err(|e| e.to_string())?;
    let resp = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::CREATED {
        return Err(format!(
            "manifest: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        ));
    }
    Ok(Acked {
        repo: repo.to_string(),
        tag: tag.to_string(),
        manifest,
        layer_digest,
        layer,
    })
}

fn leader_index(status: &serde_json::Value) -> Option<usize> {
    status["leader"].as_u64().map(|id| id as usize - 1)
}

/// The index of the node that leads now, as the first node's status says.
fn current_leader(nodes: &[BerthNode]) -> usize {
    leader_index(&berth_cluster(&nodes[0], &["status"])).expect("a leader")
}

/// PUT the manifest of `pushed` again, under `tag` in its repository, through `base`.
async fn put_again(http: &reqwest::Client, base: &str, pushed: &Acked, tag: &str) -> reqwest::Response {
    let url = format!("{base}/v2/{}/manifests/{tag}", pushed.repo);
    put_manifest(http, url, &pushed.manifest).await
}

type Pushers = Vec<tokio::task::JoinHandle<(Vec<Acked>, Vec<String>)>>;

/// `pushers` clients each pushing `per_pusher` images to `load/pusher-N`, spread
/// round-robin over `bases` and over a few seconds.
fn start_pushers(bases: &[String], pushers: usize, per_pusher: usize) -> Pushers {
    (0..pushers)
        .map(|p| {
            let bases = bases.to_vec();
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .expect("client");
                let mut acked = Vec::new();
                let mut failed = Vec::new();
                for i in 0..per_pusher {
                    let base = &bases[(p + i) % bases.len()];
                    let seed = (p * 1000 + i) as u64;
                    match try_push(&http, base, &format!("load/pusher-{p}"), &format!("v{i}"), seed).await {
                        Ok(a) => acked.push(a),
                        Err(e) => failed.push(format!("{base}: {e}")),
                    }
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                (acked, failed)
            })
        })
        .collect()
}

/// Wait for the pushers; most pushes must have been acknowledged.
async fn finish_pushers(handles: Pushers, expected: usize) -> Vec<Acked> {
    let mut acked = Vec::new();
    let mut failed = Vec::new();
    for h in handles {
        let (a, f) = h.await.expect("pusher");
        acked.extend(a);
        failed.extend(f);
    }
    eprintln!(
        "{} pushes acknowledged, {} failed: {:?}",
        acked.len(),
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        acked.len() > expected / 2,
        "only {} pushes were acknowledged; failures: {failed:#?}",
        acked.len()
    );
    acked
}

/// Every node converges on the same applied state, serves every acknowledged push
/// byte for byte, and no listed tag points to a missing manifest.
async fn assert_converged(nodes: &[BerthNode], acked: &[Acked], pushers: usize) {
    let bases: Vec<String> = nodes.iter().map(|n| n.base_url()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let applied: Vec<u64> = nodes
            .iter()
            .map(|n| berth_cluster(n, &["status"])["applied_index"].as_u64().unwrap_or(0))
            .collect();
        if applied.iter().all(|a| *a == applied[0]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "applied indexes differ: {applied:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let http = http();
    for a in acked {
        for base in &bases {
            let got = get_manifest(&http, format!("{base}/v2/{}/manifests/{}", a.repo, a.tag)).await;
            assert_eq!(got.status(), StatusCode::OK, "{base} {}:{}", a.repo, a.tag);
            assert_eq!(got.bytes().await.expect("body").as_ref(), a.manifest.as_slice());
            let blob = http
                .get(format!("{base}/v2/{}/blobs/{}", a.repo, a.layer_digest))
                .send()
                .await
                .expect("GET blob");
            assert_eq!(blob.status(), StatusCode::OK);
            assert_eq!(blob.bytes().await.expect("body").as_ref(), a.layer.as_slice());
        }
    }
    // No tag points to a missing manifest (and, by the apply-time check, no manifest
    // to a missing blob): every listed tag resolves on every node.
    for p in 0..pushers {
        let repo = format!("load/pusher-{p}");
        let tags: serde_json::Value = http
            .get(format!("{}/v2/{repo}/tags/list", bases[0]))
            .send()
            .await
            .expect("tags")
            .json()
            .await
            .expect("tags json");
        for tag in tags["tags"].as_array().into_iter().flatten() {
            let tag = tag.as_str().expect("tag");
            for base in &bases {
                let resp = http
                    .head(format!("{base}/v2/{repo}/manifests/{tag}"))
                    .header("Accept", "application/vnd.oci.image.manifest.v1+json")
                    .send()
                    .await
                    .expect("HEAD");
                assert_eq!(resp.status(), StatusCode::OK, "{base} {repo}:{tag}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_push_is_lost_when_the_leader_is_killed() {
    let mut cluster = Cluster::start(3).await;
    let bases: Vec<String> = cluster.nodes.iter().map(|n| n.base_url()).collect();
    let (pushers, per_pusher) = (4, 30);
    let handles = start_pushers(&bases, pushers, per_pusher);
    // Kill the leader while the pushes run, then bring it back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = berth_cluster(&cluster.nodes[0], &["status"]);
    let leader = leader_index(&status).expect("a leader");
    cluster.nodes[leader].kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.nodes[leader]
        .restart()
        .await
        .expect("restarting the old leader");

    let acked = finish_pushers(handles, pushers * per_pusher).await;
    assert_converged(&cluster.nodes, &acked, pushers).await;
}

/// Three nodes whose links run through fault proxies, and one image pushed through
/// the first node before any fault.
struct PartitionableCluster {
    nodes: Vec<BerthNode>,
    /// Bound by name where the struct is taken apart: dropping it stops S3.
    _s3: SeaweedFs,
    partitions: Partitions,
    bases: Vec<String>,
    http: reqwest::Client,
    before: Acked,
}

impl PartitionableCluster {
    async fn start(repo: &str, seed: u64) -> PartitionableCluster {
        let (nodes, s3, partitions) = start_cluster_with(3, "", "", true).await;
        let bases: Vec<String> = nodes.iter().map(|n| n.base_url()).collect();
        let http = http();
        let before = try_push(&http, &bases[0], repo, "v1", seed)
            .await
            .expect("push before any fault");
        PartitionableCluster {
            nodes,
            _s3: s3,
            partitions: partitions.expect("fault proxies"),
            bases,
            http,
            before,
        }
    }
}

/// A write sent to a follower just as the leader goes silent (its links hold every
/// byte, nothing is refused) is answered soon after the two others elect a new
/// leader, not when the 10 s request timeout runs out; pushes through that follower
/// then go to the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_follower_is_answered_soon_when_the_leader_goes_silent() {
    let c = PartitionableCluster::start("silent/before", 11).await;
    let leader = current_leader(&c.nodes);
    let follower = (leader + 1) % c.nodes.len();
    c.partitions.isolate(leader as u64 + 1);

    let asked = std::time::Instant::now();
    let resp = put_again(&c.http, &c.bases[follower], &c.before, "during").await;
    let took = asked.elapsed();
    // The forward's outcome is unknown once the leader changed: 503, for the client
    // to retry (201 if the new leader was elected before the write arrived).
    assert!(
        resp.status() == StatusCode::SERVICE_UNAVAILABLE || resp.status() == StatusCode::CREATED,
        "{}",
        resp.status()
    );
    assert!(
        took < Duration::from_secs(8),
        "the follower took {took:?} to answer a write forwarded into the silence"
    );
    let mut pushed = Err(String::new());
    for attempt in 0..10 {
        pushed = try_push(&c.http, &c.bases[follower], "silent/after", "v1", 12 + attempt).await;
        if pushed.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pushed.expect("a push through the follower once another node leads");
    c.partitions.heal();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_push_is_lost_when_a_follower_is_partitioned() {
    let PartitionableCluster {
        nodes,
        partitions,
        bases,
        http,
        before,
        _s3,
    } = PartitionableCluster::start("cut/before", 7).await;

    let (pushers, per_pusher) = (4, 30);
    let handles = start_pushers(&bases, pushers, per_pusher);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = current_leader(&nodes);
    let cut = (leader + 1) % nodes.len();
    partitions.isolate(cut as u64 + 1);
    let cut_at = std::time::Instant::now();

    // The node in the minority refuses writes with 503 + Retry-After...
    let resp = put_again(&http, &bases[cut], &before, "during").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"), "{:?}", resp.headers());
    let body: serde_json::Value = resp.json().await.expect("error body");
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
    // Once it has known no leader for a while, it says so at once instead of waiting
    // for the request timeout (10 s).
    let asked = std::time::Instant::now();
    let resp = put_again(&http, &bases[cut], &before, "during2").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "a cut-off node took {:?} to refuse a write",
        asked.elapsed()
    );
    // ...and tag reads it cannot confirm, but still serves content by digest.
    let digest = sha256_digest(&before.manifest);
    let got = get_manifest(&http, format!("{}/v2/cut/before/manifests/{digest}", bases[cut])).await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.expect("body").as_ref(), before.manifest.as_slice());
    let blob = http
        .get(format!("{}/v2/cut/before/blobs/{}", bases[cut], before.layer_digest))
        .send()
        .await
        .expect("GET blob");
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(blob.bytes().await.expect("body").as_ref(), before.layer.as_slice());
    let tag = get_manifest(&http, format!("{}/v2/cut/before/manifests/v1", bases[cut])).await;
    assert_eq!(tag.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The status seen from the leader names the cut node unreachable.
    let status = berth_cluster(&nodes[leader], &["status"]);
    assert_eq!(status["members"][(cut + 1).to_string()]["reachable"], false, "{status}");
    assert_eq!(
        status["members"][(leader + 1).to_string()]["reachable"],
        true,
        "{status}"
    );
    // The majority keeps taking writes meanwhile.
    try_push(&http, &bases[leader], "cut/majority", "v1", 8)
        .await
        .expect("a push through the majority");

    // Heal after a few seconds of partition; the cut node rejoins by itself.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(cut_at.elapsed())).await;
    partitions.heal();
    let acked = finish_pushers(handles, pushers * per_pusher).await;
    assert_converged(&nodes, &acked, pushers).await;
    let pulled = get_manifest(&http, format!("{}/v2/cut/majority/manifests/v1", bases[cut])).await;
    assert_eq!(pulled.status(), StatusCode::OK);
    let status: Vec<serde_json::Value> = nodes.iter().map(|n| berth_cluster(n, &["status"])).collect();
    let leaders: Vec<&serde_json::Value> = status.iter().map(|s| &s["leader"]).collect();
    assert!(leaders.iter().all(|l| *l == leaders[0] && !l.is_null()), "{leaders:?}");
}

/// An error answered by the node that ran a request reaches the client unchanged
/// when another node passed the request on: out-of-order chunks and wrong digests of
/// a handed-over upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_their_code_across_a_hop_between_nodes() {
    let cluster = Cluster::start(3).await;
    let repo = "team/hop-errors";
    let location = path_of(&cluster.reg(0).start_upload(repo).await.expect("POST"));
    let error_code = |body: &serde_json::Value| body["errors"][0]["code"].as_str().unwrap_or("").to_string();
    let owner_is_0 = cluster.reg(1).url(&location);

    // A chunk that does not start at the upload's end, sent through node 1.
    let resp = http()
        .patch(&owner_is_0)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", "5-9")
        .body(vec![1u8; 5])
        .send()
        .await
        .expect("PATCH");
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(range_end(&resp), "0-0");
    let body: serde_json::Value = resp.json().await.expect("error body");
    assert_eq!(error_code(&body), "BLOB_UPLOAD_INVALID", "{body}");

    // The right chunk, then a finish with a digest the bytes do not have.
    let resp = http()
        .patch(&owner_is_0)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", "0-4")
        .body(vec![1u8; 5])
        .send()
        .await
        .expect("PATCH");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let wrong = sha256_digest(b"something else");
    let resp = http()
        .put(format!("{owner_is_0}?digest={wrong}"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await.expect("error body");
    assert_eq!(error_code(&body), "DIGEST_INVALID", "{body}");
    assert!(
        body["errors"][0]["message"].as_str().unwrap_or("").contains(&wrong),
        "the owner's message names the digest: {body}"
    );

    // The mismatch ended the session on its owner: unknown through every node.
    for i in 0..3 {
        let resp = http()
            .get(cluster.reg(i).url(&location))
            .send()
            .await
            .expect("GET status");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "node {i}");
        let body: serde_json::Value = resp.json().await.expect("error body");
        assert_eq!(error_code(&body), "BLOB_UPLOAD_UNKNOWN", "node {i}: {body}");
    }
}
