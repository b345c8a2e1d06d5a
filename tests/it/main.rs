//! End-to-end tests against the real `berth` binary: each test starts its own node
//! (free loopback port, private data dir) with `berth-testkit` and drives it with real
//! clients (skopeo, podman, oras-py, docker) or by hand over HTTP.
//!
//! Client tools are installed by `scripts/install-test-deps.sh`; a missing tool fails
//! the test loudly. Tests run in parallel (nextest: one process per test), so every
//! test uses its own node, temp dirs and repository names.

mod clients;
mod cluster;
mod persistence;
mod s3;
mod spec;

use berth_testkit::BerthNode;
use berth_testkit::NodeOptions;
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
    let s3 = SeaweedFs::start()
        .await
        .unwrap_or_else(|e| panic!("starting SeaweedFS: {e:#}"));
    let grpc: Vec<u16> = (0..n)
        .map(|_| berth_testkit::node::free_port().expect("free port"))
        .collect();
    let members: Vec<String> = (1..=n)
        .map(|id| format!("\"{id}=127.0.0.1:{}\"", grpc[id as usize - 1]))
        .collect();
    let starts = (1..=n).map(|id| {
        let toml = format!(
            "{}{extra_toml}\n[cluster]\nnode_id = {id}\ngrpc_listen = \"127.0.0.1:{}\"\ninitial_members = [{}]\n\
             heartbeat_interval = \"100ms\"\nelection_timeout = \"500ms\"\n",
            s3_toml(&s3, "proxy"),
            grpc[id as usize - 1],
            members.join(", ")
        );
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
    (nodes, s3)
}
