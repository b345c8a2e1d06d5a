//! End-to-end tests against the real `berth` binary: each test starts its own node
//! (free loopback port, private data dir) with `berth-testkit` and drives it with real
//! clients (skopeo, podman, oras-py, docker) or by hand over HTTP.
//!
//! Client tools are installed by `scripts/install-test-deps.sh`; a missing tool fails
//! the test loudly. Tests run in parallel (nextest: one process per test), so every
//! test uses its own node, temp dirs and repository names.

mod cli;
mod clients;
mod cluster;
mod membership;
mod metrics;
mod persistence;
mod s3;
mod spec;
mod telemetry;
mod workers;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use berth_testkit::BerthNode;
use berth_testkit::NodeOptions;
use berth_testkit::Partitions;
use berth_testkit::SeaweedFs;

/// Path of the binary under test.
pub fn berth_binary() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

/// A fresh node with default settings (fs backend).
pub async fn start_node() -> BerthNode {
    match BerthNode::start(berth_binary()).await {
        Ok(node) => node,
        Err(e) => panic!("starting berth: {e:#}"),
    }
}

/// Where a test node keeps its blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// The embedded default: the local disk.
    Fs,
    /// SeaweedFS (real S3), blobs streamed by the node through its cache.
    S3Proxy,
    /// SeaweedFS, blob GETs redirected to presigned URLs.
    S3Redirect,
}

/// A node and, for the S3 setups, the SeaweedFS it stores blobs in (stopped when
/// the node is dropped).
pub struct TestNode {
    pub node: BerthNode,
    pub s3: Option<SeaweedFs>,
}

impl std::ops::Deref for TestNode {
    type Target = BerthNode;
    fn deref(&self) -> &BerthNode {
        &self.node
    }
}

impl std::ops::DerefMut for TestNode {
    fn deref_mut(&mut self) -> &mut BerthNode {
        &mut self.node
    }
}

/// The `[storage]` settings of a node on `s3` with `delivery`.
pub fn s3_toml(s3: &SeaweedFs, delivery: &str) -> String {
    format!(
        "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"{}\"\nendpoint = \"{}\"\npath_style = true\n\
         access_key_id = \"{}\"\nsecret_access_key = \"{}\"\nblob_delivery = \"{delivery}\"\n",
        s3.bucket(),
        s3.endpoint(),
        s3.access_key(),
        s3.secret_key()
    )
}

/// A fresh node on `setup`.
pub async fn start_node_on(setup: Setup) -> TestNode {
    let delivery = match setup {
        Setup::Fs => {
            return TestNode {
                node: start_node().await,
                s3: None,
            };
        }
        Setup::S3Proxy => "proxy",
        Setup::S3Redirect => "redirect",
    };
    let s3 = SeaweedFs::start()
        .await
        .unwrap_or_else(|e| panic!("starting SeaweedFS: {e:#}"));
    let opts = NodeOptions {
        binary: berth_binary().into(),
        extra_toml: s3_toml(&s3, delivery),
        ..Default::default()
    };
    match BerthNode::start_with(opts).await {
        Ok(node) => TestNode { node, s3: Some(s3) },
        Err(e) => panic!("starting berth on S3 ({delivery}): {e:#}"),
    }
}

/// Runs each named `async fn(Setup)` as a test on every backend: modules `fs`,
/// `s3_proxy` and `s3_redirect` of the calling module.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $crate::on_every_backend!(@module fs, Fs, $($name),*);
        $crate::on_every_backend!(@module s3_proxy, S3Proxy, $($name),*);
        $crate::on_every_backend!(@module s3_redirect, S3Redirect, $($name),*);
    };
    (@module $module:ident, $setup:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Setup::$setup).await
                }
            )*
        }
    };
}

/// `n` nodes of a new cluster on one fresh SeaweedFS bucket, all ready (a leader is
/// known everywhere). `extra_toml` is added to every node's configuration.
pub async fn start_cluster(n: u64, extra_toml: &str) -> (Vec<BerthNode>, SeaweedFs) {
    let (nodes, s3, _) = start_cluster_with(n, extra_toml, "", false).await;
    (nodes, s3)
}

/// [`start_cluster`] with, when `partitionable`, a fault proxy in front of every
/// node's gRPC port and each node sending from its own loopback address, so tests
/// can cut links between the processes.
pub async fn start_cluster_with(
    n: u64,
    extra_toml: &str,
    cluster_toml: &str,
    partitionable: bool,
) -> (Vec<BerthNode>, SeaweedFs, Option<Partitions>) {
    let s3 = SeaweedFs::start()
        .await
        .unwrap_or_else(|e| panic!("starting SeaweedFS: {e:#}"));
    let grpc: BTreeMap<u64, SocketAddr> = (1..=n)
        .map(|id| {
            let port = berth_testkit::node::free_port().expect("free port");
            (id, SocketAddr::from(([127, 0, 0, 1], port)))
        })
        .collect();
    let partitions = if partitionable {
        Some(Partitions::start(&grpc).await.expect("starting fault proxies"))
    } else {
        None
    };
    // What peers dial: the proxy when there is one.
    let advertised = |id: u64| partitions.as_ref().and_then(|p| p.addr_of(id)).unwrap_or(grpc[&id]);
    let members: Vec<String> = (1..=n).map(|id| format!("\"{id}={}\"", advertised(id))).collect();
    let starts = (1..=n).map(|id| {
        let mut toml = format!(
            "{}{extra_toml}\n[cluster]\nnode_id = {id}\ngrpc_listen = \"{}\"\nadvertise_grpc = \"{}\"\n\
             initial_members = [{}]\nheartbeat_interval = \"100ms\"\nelection_timeout = \"500ms\"\n{cluster_toml}\n",
            s3_toml(&s3, "proxy"),
            grpc[&id],
            advertised(id),
            members.join(", ")
        );
        if partitionable {
            toml.push_str(&format!("source_address = \"{}\"\n", Partitions::source_of(id)));
        }
        BerthNode::start_with(NodeOptions {
            binary: berth_binary().into(),
            extra_toml: toml,
            ready_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        })
    });
    let nodes = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("starting a cluster node: {e:#}")))
        .collect();
    (nodes, s3, partitions)
}
