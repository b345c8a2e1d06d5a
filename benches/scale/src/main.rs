//! berth-scale: the metadata of a big registry on one machine.
//!
//! Loads `--manifests` tagged manifests spread over `--repos` repositories into one
//! node's metadata store, by proposing commands to an in-process `ClusterNode` with
//! many proposals in flight (the Raft log and state machine are the real ones; HTTP
//! and blob storage are left out, they are not what grows here). Then it measures
//! what the size costs: building a snapshot (time, bytes, memory), reads through the
//! `MetaReader`, and, with `--berth <binary>`, a restart of the real `berth` binary
//! on that data (time until ready, RSS), manifest GET latency over HTTP, and a new
//! member catching up through the snapshot (time, RSS of both processes).
//!
//! Run: `cargo run --release -p berth-scale -- --manifests 1000000 --repos 100000 --berth target/release/berth`.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use berth_cluster::ClusterNode;
use berth_cluster::RaftOptions;
use berth_meta::Command;
use berth_meta::MetaReader;
use berth_meta::NodeInfo;
use berth_meta::TypeConfig;
use berth_oci::Digest;
use berth_oci::RepoName;
use berth_oci::Tag;
use berth_oci::media_types;
use berth_testkit::node::BerthNode;
use berth_testkit::node::NodeOptions;
use clap::Parser;
use hdrhistogram::Histogram;
use openraft::CommittedLeaderId;
use openraft::Entry;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;

#[derive(Parser, Debug, Clone)]
#[command(about = "Metadata at scale: load, snapshot, restart, new member, reads")]
struct Args {
    /// Manifests to load, each with its own tag.
    #[arg(long, default_value_t = 1_000_000)]
    manifests: u64,
    /// Repositories they are spread over.
    #[arg(long, default_value_t = 100_000)]
    repos: u64,
    /// How the manifests get in: `direct` applies them to the state machine in big
    /// batches, as if replicated (fast); `raft` proposes them to the running node,
    /// each through the Raft log (the way pushes go, ~300/s on a shared 2-core VM).
    #[arg(long, default_value = "direct")]
    load: String,
    /// Proposals in flight while loading through Raft.
    #[arg(long, default_value_t = 512)]
    in_flight: usize,
    /// Build a snapshot every this many log entries while loading, as a node does
    /// (`metadata.snapshot_after_logs`); 0: one snapshot once everything is loaded.
    #[arg(long, default_value_t = 0)]
    snapshot_every: u64,
    /// The `berth` binary: restart, HTTP reads and the new member run only with it.
    #[arg(long)]
    berth: Option<PathBuf>,
    /// Manifest reads to time (reader and HTTP each).
    #[arg(long, default_value_t = 2_000)]
    gets: u64,
    /// Work directory (kept); a temp dir removed afterwards when absent.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// What one run measured; printed as JSON at the end.
#[derive(Debug, Default)]
struct Report {
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    fn set(&mut self, key: &str, value: impl Into<serde_json::Value>) {
        let value = value.into();
        eprintln!("berth-scale: {key} = {value}");
        self.fields.insert(key.to_string(), value);
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(run(args))?;
    println!("{}", serde_json::to_string_pretty(&report.fields)?);
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.repos > 0 && args.manifests >= args.repos,
        "need manifests >= repos > 0"
    );
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("berth-scale-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let mut report = Report::default();
    report.set("manifests", args.manifests);
    report.set("repos", args.repos);
    let first = dir.join("node1");
    let http = berth_testkit::node::free_port()?;
    let grpc = berth_testkit::node::free_port()?;
    let me = NodeInfo {
        grpc_addr: format!("127.0.0.1:{grpc}"),
        http_addr: format!("127.0.0.1:{http}"),
    };
    load_and_snapshot(&args, &first.join("meta"), me, &mut report).await?;
    wait_closed(&first.join("meta")).await?;
    if let Some(binary) = &args.berth {
        over_http(&args, binary, &dir, http, grpc, &mut report).await?;
    }
    Ok(report)
}

/// Phases that need no binary: load, snapshot build, reader latency.
async fn load_and_snapshot(args: &Args, meta: &Path, me: NodeInfo, report: &mut Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(meta)?;
    let options = RaftOptions {
        snapshot_after_logs: if args.snapshot_every == 0 {
            u64::MAX / 2
        } else {
            args.snapshot_every
        },
        ..RaftOptions::default()
    };
    let node = ClusterNode::open(1, meta, options).await?;
    node.bootstrap(BTreeMap::from([(1, me)])).await?;
    node.wait_for_leader(Duration::from_secs(30)).await?;

    let started = Instant::now();
    match args.load.as_str() {
        "raft" => load_through_raft(&node, args).await?,
        "direct" => {
            // Entries continue the node's log under its own leader, as if it had
            // applied them, built a snapshot and purged its log behind it.
            let (term, last) = {
                let m = node.raft().metrics().borrow().clone();
                (m.current_term, m.last_log_index.unwrap_or(0))
            };
            node.shutdown().await;
            drop(node);
            wait_closed(meta).await?;
            return load_direct(args, meta, term, last, started, report).await;
        }
        other => anyhow::bail!("--load {other}: expected raft or direct"),
    }
    report_load(args, started, report);
    // Measure the build's own peak, not the load's.
    let reset = reset_hwm(std::process::id());
    let applied = node.status().applied_index;
    let started = Instant::now();
    node.raft().trigger().snapshot().await?;
    loop {
        if node.status().snapshot_index >= applied {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.set("snapshot_build_seconds", secs(started.elapsed()));
    report.set("snapshot_mib", mib(snapshot_bytes(meta)? / 1024));
    if reset && let Some((_, hwm)) = rss_kib(std::process::id()) {
        report.set("snapshot_build_process_hwm_mib", mib(hwm));
    }

    let reader = node.reader().clone();
    let hist = reader_latency(&reader, args)?;
    report.set("reader_get_p50_us", hist.value_at_quantile(0.5));
    report.set("reader_get_p99_us", hist.value_at_quantile(0.99));
    node.shutdown().await;
    Ok(())
}

fn report_load(args: &Args, started: Instant, report: &mut Report) {
    let load = started.elapsed();
    report.set("load_seconds", secs(load));
    report.set("load_per_second", (args.manifests as f64 / load.as_secs_f64()).round());
    let (rss, hwm) = rss_kib(std::process::id()).unwrap_or_default();
    report.set("load_process_rss_mib", mib(rss));
    report.set("load_process_hwm_mib", mib(hwm));
}

async fn load_through_raft(node: &ClusterNode, args: &Args) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.in_flight.max(1) {
        let (node, next, n, repos) = (node.clone(), next.clone(), args.manifests, args.repos);
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                node.propose(put(i, repos)?)
                    .await
                    .with_context(|| format!("manifest {i}"))?;
                if (i + 1) % (n / 10).max(1) == 0 {
                    eprintln!("berth-scale: loaded {} manifests", i + 1);
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Apply the manifests straight to the stopped node's state machine, then build
/// the snapshot and purge the log up to it: the state a node reaches by applying
/// them and compacting its log.
async fn load_direct(
    args: &Args,
    meta: &Path,
    term: u64,
    last: u64,
    started: Instant,
    report: &mut Report,
) -> anyhow::Result<()> {
    let store = berth_meta::MetaStore::open(meta)?;
    let mut sm = store.state_machine()?;
    let leader = CommittedLeaderId::new(term, 1);
    let mut batch = Vec::with_capacity(1000);
    for i in 0..args.manifests {
        batch.push(Entry::<TypeConfig> {
            log_id: LogId::new(leader, last + 1 + i),
            payload: EntryPayload::Normal(put(i, args.repos)?),
        });
        if batch.len() == 1000 || i + 1 == args.manifests {
            sm.apply(std::mem::take(&mut batch)).await?;
        }
        if (i + 1) % (args.manifests / 10).max(1) == 0 {
            eprintln!("berth-scale: loaded {} manifests", i + 1);
        }
    }
    report_load(args, started, report);
    let reset = reset_hwm(std::process::id());
    let started = Instant::now();
    let mut builder = sm.get_snapshot_builder().await;
    let snap = builder.build_snapshot().await?;
    report.set("snapshot_build_seconds", secs(started.elapsed()));
    report.set("snapshot_mib", mib(snapshot_bytes(meta)? / 1024));
    if reset && let Some((_, hwm)) = rss_kib(std::process::id()) {
        report.set("snapshot_build_process_hwm_mib", mib(hwm));
    }
    let last = snap.meta.last_log_id.context("the snapshot has no log id")?;
    let mut log = store.log_store();
    log.save_committed(Some(last)).await?;
    log.purge(last).await?;
    let hist = reader_latency(&store.reader(), args)?;
    report.set("reader_get_p50_us", hist.value_at_quantile(0.5));
    report.set("reader_get_p99_us", hist.value_at_quantile(0.99));
    Ok(())
}

/// Wait until the in-process node's tasks let go of the store: the binary opens it next.
async fn wait_closed(meta: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match berth_meta::MetaStore::open(meta) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e).context("the store stays open"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Phases with the real binary: restart on the loaded data, HTTP GETs, a new member.
async fn over_http(
    args: &Args,
    binary: &Path,
    dir: &Path,
    http: u16,
    grpc: u16,
    report: &mut Report,
) -> anyhow::Result<()> {
    let blobs = dir.join("blobs");
    let blobs = blobs.to_str().context("work dir is not UTF-8")?;
    // A joining node names itself and the node it joins; it does not bootstrap, as
    // its id is not the lowest.
    let cluster_toml = |id: u64, grpc_port: u16| {
        let mut members = vec![format!("\"1=127.0.0.1:{grpc}\"")];
        if id != 1 {
            members.push(format!("\"{id}=127.0.0.1:{grpc_port}\""));
        }
        format!(
            "[storage.fs]\npath = \"{blobs}\"\nshared = true\n\
             [cluster]\nnode_id = {id}\ngrpc_listen = \"127.0.0.1:{grpc_port}\"\ninitial_members = [{}]\n",
            members.join(", ")
        )
    };
    let started = Instant::now();
    let first = BerthNode::start_with(
        NodeOptions {
            port: Some(http),
            ready_timeout: Some(Duration::from_secs(600)),
            ..NodeOptions::new(binary)
        }
        .data_dir(dir.join("node1"))
        .extra_toml(cluster_toml(1, grpc)),
    )
    .await?;
    report.set("restart_seconds", secs(started.elapsed()));
    let (rss, _) = rss_kib(first.pid()).context("node 1 is gone")?;
    report.set("restarted_node_rss_mib", mib(rss));

    let client = reqwest::Client::builder().no_proxy().build()?;
    let hist = http_latency(&client, &first.base_url(), args).await?;
    report.set("http_get_p50_us", hist.value_at_quantile(0.5));
    report.set("http_get_p99_us", hist.value_at_quantile(0.99));
    let (rss, _) = rss_kib(first.pid()).context("node 1 is gone")?;
    report.set("node_rss_after_gets_mib", mib(rss));

    // A new member: it starts empty, is added through node 1 and answers only once
    // it caught up through a snapshot transfer (the log was compacted behind it).
    let reset = reset_hwm(first.pid());
    let (http2, grpc2) = (berth_testkit::node::free_port()?, berth_testkit::node::free_port()?);
    let second_opts = NodeOptions {
        port: Some(http2),
        ready_timeout: Some(Duration::from_secs(1200)),
        ..NodeOptions::new(binary)
    }
    .data_dir(dir.join("node2"))
    .extra_toml(cluster_toml(2, grpc2));
    let second = tokio::spawn(BerthNode::start_with(second_opts));
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", grpc2)).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "node 2 does not listen on gRPC");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let add = serde_json::json!({
        "id": 2,
        "grpc_addr": format!("127.0.0.1:{grpc2}"),
        "http_addr": format!("127.0.0.1:{http2}"),
    });
    let resp = client
        .post(format!("{}/admin/cluster/nodes", first.base_url()))
        .json(&add)
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "adding node 2: {}", resp.text().await?);
    report.set("new_member_caught_up_seconds", secs(started.elapsed()));
    let second = second.await??;
    if let Some((rss, hwm)) = rss_kib(second.pid()) {
        report.set("new_member_rss_mib", mib(rss));
        report.set("new_member_hwm_mib", mib(hwm));
    }
    if reset && let Some((_, hwm)) = rss_kib(first.pid()) {
        report.set("node1_hwm_while_sending_mib", mib(hwm));
    }
    let hist = http_latency(&client, &second.base_url(), args).await?;
    report.set("new_member_http_get_p50_us", hist.value_at_quantile(0.5));
    Ok(())
}

fn repo_name(r: u64) -> String {
    format!("scale/repo-{r:06}")
}

/// Manifest `i`, in repository `i % repos`, tagged `v{i / repos}`: a small image
/// manifest (one config, two layers), unique through its annotation.
fn manifest(i: u64) -> Vec<u8> {
    let d = |what: &str| Digest::sha256_of(format!("{what} {i}").as_bytes()).to_string();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d("config"), "size": 1469},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d("base"), "size": 3_370_706},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d("app"), "size": 41_227},
        ],
        "annotations": {"org.opencontainers.image.created": format!("2026-01-01T00:00:00Z#{i}")},
    })
    .to_string()
    .into_bytes()
}

fn tag_of(i: u64, repos: u64) -> String {
    format!("v{}", i / repos)
}

/// The command that puts manifest `i`. Its blobs are not listed: they are not
/// loaded, and the state machine only checks the blobs a command names.
fn put(i: u64, repos: u64) -> anyhow::Result<Command> {
    let bytes = manifest(i);
    Ok(Command::PutManifest {
        repo: RepoName::parse(&repo_name(i % repos))?,
        digest: Digest::sha256_of(&bytes),
        media_type: media_types::OCI_MANIFEST.to_string(),
        bytes,
        tag: Some(Tag::parse(&tag_of(i, repos))?),
        subject: None,
        referrer: None,
        blobs: vec![],
        children: vec![],
        declared_sizes: vec![],
        at: 1_767_225_600_000 + i,
    })
}

/// Manifests to read, spread over the whole key space (a fixed xorshift sequence).
fn samples(args: &Args) -> impl Iterator<Item = u64> + '_ {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..args.gets).map(move |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % args.manifests
    })
}

fn reader_latency(reader: &MetaReader, args: &Args) -> anyhow::Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new(3)?;
    for i in samples(args) {
        let repo = RepoName::parse(&repo_name(i % args.repos))?;
        let started = Instant::now();
        let tag = reader
            .tag(&repo, &Tag::parse(&tag_of(i, args.repos))?)?
            .with_context(|| format!("tag of manifest {i} is missing"))?;
        let found = reader.manifest(&repo, &tag.digest)?;
        hist.record(started.elapsed().as_micros() as u64)?;
        anyhow::ensure!(found.is_some_and(|m| m.bytes == manifest(i)), "manifest {i} differs");
    }
    Ok(hist)
}

async fn http_latency(client: &reqwest::Client, base: &str, args: &Args) -> anyhow::Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new(3)?;
    for i in samples(args) {
        let url = format!(
            "{base}/v2/{}/manifests/{}",
            repo_name(i % args.repos),
            tag_of(i, args.repos)
        );
        let started = Instant::now();
        let resp = client
            .get(&url)
            .header("accept", media_types::OCI_MANIFEST)
            .send()
            .await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        hist.record(started.elapsed().as_micros() as u64)?;
        anyhow::ensure!(
            status.is_success() && body[..] == manifest(i)[..],
            "GET {url}: {status}"
        );
    }
    Ok(hist)
}

/// Bytes of the snapshot files under `meta`.
fn snapshot_bytes(meta: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(meta.join("snapshots"))? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

/// (VmRSS, VmHWM) of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Reset the kernel's high-water mark of `pid` to its current RSS.
fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tiny_run_loads_snapshots_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let args = Args::parse_from(["berth-scale", "--manifests", "300", "--repos", "30", "--gets", "50"]);
        let mut report = Report::default();
        let me = NodeInfo {
            grpc_addr: "127.0.0.1:1".into(),
            http_addr: "127.0.0.1:2".into(),
        };
        let meta = dir.path().join("meta");
        load_and_snapshot(&args, &meta, me, &mut report).await.unwrap();
        assert!(snapshot_bytes(&meta).unwrap() > 300 * 400, "{report:?}");
        for key in ["load_seconds", "snapshot_build_seconds", "reader_get_p99_us"] {
            assert!(report.fields.contains_key(key), "{key} missing: {report:?}");
        }
        // The data is there after a restart of the store.
        let store = berth_meta::MetaStore::open(&meta).unwrap();
        assert_eq!(store.reader().catalog(None, 1000).unwrap().items.len(), 30);
        assert_eq!(
            store
                .reader()
                .tags(&RepoName::parse(&repo_name(7)).unwrap(), None, 100)
                .unwrap()
                .items
                .len(),
            10
        );
    }
}
