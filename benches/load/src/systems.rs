//! The systems under test: each is a pluggable entry that says whether it can run
//! here ([`availability`]), starts its processes on 127.0.0.1 with its own config in
//! a temp dir ([`start`]) and stops them by PID ([`Running::stop`]; dropping a
//! [`Running`] SIGKILLs them, and every child also gets SIGKILL from the kernel if
//! the harness dies).
//!
//! To add a system: add a [`SystemKind`] variant, make [`availability`] return `Ok`
//! for it when it can run, start its processes in [`start`] and list every node's
//! base URL in [`Running::endpoints`] (scenarios spread requests over them round
//! robin) and every PID in [`Running::server_pids`]. The 3-node cluster entry is
//! available once `berth check-config` accepts a 3-member `[cluster]` section;
//! before that it is reported as "not available yet".

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use berth_testkit::BerthNode;
use berth_testkit::Distribution;
use berth_testkit::NodeOptions;
use berth_testkit::S3Access;
use berth_testkit::distribution::DistOptions;
use berth_testkit::distribution::DistStorage;
use berth_testkit::node::reserve_port;
use reqwest::Url;
use serde::Deserialize;
use serde::Serialize;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SystemKind {
    /// berth single node, blobs on local disk.
    BerthFs,
    /// berth single node, blobs in SeaweedFS, proxy delivery with local cache.
    BerthS3,
    /// berth single node, blobs in SeaweedFS, 307 redirects to presigned URLs.
    BerthS3Redirect,
    /// berth 3-node cluster on SeaweedFS, proxy delivery (when berth has cluster mode).
    BerthCluster3,
    /// The same cluster with `metadata.tag_reads = "local"` (no read index).
    BerthCluster3Local,
    /// CNCF Distribution 2.8.2, local disk.
    DistFs,
    /// CNCF Distribution 2.8.2 on SeaweedFS, redirects blob GETs to S3 (its default).
    DistS3Redirect,
    /// CNCF Distribution 2.8.2 on SeaweedFS, streams blobs itself (`storage.redirect.disable`).
    DistS3Proxy,
}

impl SystemKind {
    pub const ALL: [SystemKind; 8] = [
        SystemKind::BerthFs,
        SystemKind::BerthS3,
        SystemKind::BerthS3Redirect,
        SystemKind::BerthCluster3,
        SystemKind::BerthCluster3Local,
        SystemKind::DistFs,
        SystemKind::DistS3Redirect,
        SystemKind::DistS3Proxy,
    ];

    /// What a plain `run.sh` measures (berth-s3-redirect on request only).
    pub const DEFAULT: [SystemKind; 7] = [
        SystemKind::BerthFs,
        SystemKind::BerthS3,
        SystemKind::BerthCluster3,
        SystemKind::BerthCluster3Local,
        SystemKind::DistFs,
        SystemKind::DistS3Redirect,
        SystemKind::DistS3Proxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SystemKind::BerthFs => "berth-fs",
            SystemKind::BerthS3 => "berth-s3",
            SystemKind::BerthS3Redirect => "berth-s3-redirect",
            SystemKind::BerthCluster3 => "berth-cluster3",
            SystemKind::BerthCluster3Local => "berth-cluster3-local",
            SystemKind::DistFs => "dist-fs",
            SystemKind::DistS3Redirect => "dist-s3-redirect",
            SystemKind::DistS3Proxy => "dist-s3-proxy",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            SystemKind::BerthFs => "berth, 1 node, local disk",
            SystemKind::BerthS3 => "berth, 1 node, SeaweedFS, proxy + local cache",
            SystemKind::BerthS3Redirect => "berth, 1 node, SeaweedFS, redirect",
            SystemKind::BerthCluster3 => "berth, 3 nodes, SeaweedFS, round robin",
            SystemKind::BerthCluster3Local => "berth, 3 nodes, SeaweedFS, round robin, local tag reads",
            SystemKind::DistFs => "Distribution 2.8.2, local disk",
            SystemKind::DistS3Redirect => "Distribution 2.8.2, SeaweedFS, redirect",
            SystemKind::DistS3Proxy => "Distribution 2.8.2, SeaweedFS, proxy",
        }
    }

    pub fn uses_s3(self) -> bool {
        !matches!(self, SystemKind::BerthFs | SystemKind::DistFs)
    }

    /// How many server processes (nodes) the system runs.
    pub fn nodes(self) -> usize {
        match self {
            SystemKind::BerthCluster3 | SystemKind::BerthCluster3Local => 3,
            _ => 1,
        }
    }
}

/// Where the binaries are and how the servers are configured.
#[derive(Clone, Debug)]
pub struct LaunchSettings {
    pub berth_bin: PathBuf,
    pub registry_bin: PathBuf,
    /// Log level of every server (`warn`: the benchmark measures serving, not logging).
    pub log_level: String,
    /// berth's local blob cache in front of S3.
    pub cache_max_bytes: u64,
    /// `[cluster] follower_lease` of the cluster systems (e.g. "250ms"); the
    /// binary's default when `None`. (Servers get no BERTH_* variables from the
    /// harness's environment: the generated config is the whole truth.)
    pub follower_lease: Option<String>,
}

/// `Ok` if `kind` can be started here, else the reason it is not available.
pub fn availability(kind: SystemKind, settings: &LaunchSettings) -> Result<(), String> {
    let berth = || {
        if settings.berth_bin.is_file() {
            Ok(())
        } else {
            Err(format!(
                "berth binary {} not found (cargo build --release -p berth)",
                settings.berth_bin.display()
            ))
        }
    };
    let dist = || {
        if settings.registry_bin.is_file() {
            Ok(())
        } else {
            Err(format!(
                "{} not found (apt-get install docker-registry)",
                settings.registry_bin.display()
            ))
        }
    };
    match kind {
        SystemKind::BerthFs | SystemKind::BerthS3 | SystemKind::BerthS3Redirect => berth(),
        SystemKind::BerthCluster3 | SystemKind::BerthCluster3Local => {
            berth()?;
            probe_cluster(&settings.berth_bin)
        }
        SystemKind::DistFs | SystemKind::DistS3Redirect | SystemKind::DistS3Proxy => dist(),
    }
}

/// `Ok` if the berth binary accepts a 3-member `[cluster]` configuration
/// (`berth check-config`), else why the cluster is not available yet.
fn probe_cluster(berth_bin: &Path) -> Result<(), String> {
    let probe = (|| -> anyhow::Result<std::process::Output> {
        let dir = tempfile::Builder::new().prefix("berth-bench-probe-").tempdir()?;
        let mut cfg = cluster_table(1, &[(1, 2), (2, 3), (3, 4)]);
        cfg.insert("data_dir".into(), dir.path().display().to_string().into());
        cfg.insert("listen".into(), "127.0.0.1:1".into());
        let s3 = S3Access {
            endpoint: "http://127.0.0.1:1".into(),
            bucket: "probe".into(),
            access_key: "probe".into(),
            secret_key: "probe".into(),
        };
        cfg.insert(
            "storage".into(),
            storage_table(SystemKind::BerthCluster3, &s3, "proxy", 1 << 30)?.into(),
        );
        let path = dir.path().join("probe.toml");
        std::fs::write(&path, toml::to_string(&cfg)?)?;
        Ok(Command::new(berth_bin)
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .output()?)
    })();
    match probe {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned();
            Err(format!(
                "not available yet: berth refuses a 3-node [cluster] configuration ({first})"
            ))
        }
        Err(e) => Err(format!("not available yet: probing `berth check-config` failed: {e:#}")),
    }
}

/// `[cluster]` of node `id` in a cluster of `(id, grpc port)` members.
fn cluster_table(id: u64, members: &[(u64, u16)]) -> toml::Table {
    let grpc = members.iter().find(|(m, _)| *m == id).map_or(0, |(_, p)| *p);
    let mut cluster = toml::Table::new();
    cluster.insert("node_id".into(), i64::try_from(id).unwrap_or(1).into());
    cluster.insert("grpc_listen".into(), format!("127.0.0.1:{grpc}").into());
    let list: Vec<toml::Value> = members
        .iter()
        .map(|(m, p)| toml::Value::from(format!("{m}=127.0.0.1:{p}")))
        .collect();
    cluster.insert("initial_members".into(), list.into());
    let mut root = toml::Table::new();
    root.insert("cluster".into(), cluster.into());
    root
}

/// `[storage]` for berth on the shared S3, under the system's own prefix, with a
/// local cache of `cache_max_bytes`.
fn storage_table(kind: SystemKind, s3: &S3Access, delivery: &str, cache_max_bytes: u64) -> anyhow::Result<toml::Table> {
    let mut storage = s3.berth_storage(kind.name(), delivery);
    let mut cache = toml::Table::new();
    let max = i64::try_from(cache_max_bytes).context("cache size too large")?;
    cache.insert("max_bytes".into(), max.into());
    storage.insert("cache".into(), cache.into());
    Ok(storage)
}

/// A started system.
pub struct Running {
    /// Base URLs ("http://127.0.0.1:PORT/"), one per node.
    pub endpoints: Vec<Url>,
    /// PIDs of the server processes (not SeaweedFS, which is shared).
    pub server_pids: Vec<u32>,
    handle: Handle,
}

enum Handle {
    Berth(Vec<BerthNode>),
    Dist(Distribution),
}

impl Running {
    /// Stops every process of the system by PID: SIGTERM, SIGKILL after a bound.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        match &mut self.handle {
            Handle::Berth(nodes) => {
                let mut first_err = None;
                for node in nodes.iter_mut() {
                    if let Err(e) = node.stop().await {
                        first_err.get_or_insert(e);
                    }
                }
                first_err.map_or(Ok(()), Err)
            }
            Handle::Dist(d) => d.stop().await,
        }
    }

    /// Where the server writes its log (for error messages).
    pub fn log_hint(&self) -> String {
        match &self.handle {
            Handle::Berth(nodes) => nodes.iter().map(|n| n.log_tail(20)).collect::<Vec<_>>().join("\n"),
            Handle::Dist(d) => d.log_tail(20),
        }
    }
}

/// Starts `kind` (which [`availability`] accepted).
/// Start `kind`; with `cgroups` (one per node, [`SystemKind::nodes`]), server `i`
/// starts inside `cgroups[i]`.
pub async fn start(
    kind: SystemKind,
    settings: &LaunchSettings,
    s3: Option<&S3Access>,
    cgroups: &[PathBuf],
) -> anyhow::Result<Running> {
    let need_s3 = || s3.with_context(|| format!("{} needs the shared SeaweedFS", kind.name()));
    let cgroup = cgroups.first();
    match kind {
        SystemKind::BerthFs => start_berth(kind, settings, None, cgroup).await,
        SystemKind::BerthS3 => start_berth(kind, settings, Some((need_s3()?, "proxy")), cgroup).await,
        SystemKind::BerthS3Redirect => start_berth(kind, settings, Some((need_s3()?, "redirect")), cgroup).await,
        SystemKind::BerthCluster3 | SystemKind::BerthCluster3Local => {
            start_cluster(kind, settings, need_s3()?, cgroups).await
        }
        SystemKind::DistFs => start_dist(kind, settings, None, cgroup).await,
        SystemKind::DistS3Redirect => start_dist(kind, settings, Some((need_s3()?, true)), cgroup).await,
        SystemKind::DistS3Proxy => start_dist(kind, settings, Some((need_s3()?, false)), cgroup).await,
    }
}

/// The TOML merged over the testkit's generated config (listen, data_dir, fs).
pub fn berth_extra_toml(
    kind: SystemKind,
    settings: &LaunchSettings,
    s3: Option<(&S3Access, &str)>,
) -> anyhow::Result<String> {
    Ok(toml::to_string(&berth_extra_table(kind, settings, s3)?)?)
}

fn berth_extra_table(
    kind: SystemKind,
    settings: &LaunchSettings,
    s3: Option<(&S3Access, &str)>,
) -> anyhow::Result<toml::Table> {
    let mut root = toml::Table::new();
    let mut log = toml::Table::new();
    log.insert("level".into(), settings.log_level.clone().into());
    root.insert("log".into(), log.into());
    if kind == SystemKind::BerthCluster3Local {
        let mut metadata = toml::Table::new();
        metadata.insert("tag_reads".into(), "local".into());
        root.insert("metadata".into(), metadata.into());
    }
    if let Some((s3, delivery)) = s3 {
        root.insert(
            "storage".into(),
            storage_table(kind, s3, delivery, settings.cache_max_bytes)?.into(),
        );
    }
    Ok(root)
}

async fn start_berth(
    kind: SystemKind,
    settings: &LaunchSettings,
    s3: Option<(&S3Access, &str)>,
    cgroup: Option<&PathBuf>,
) -> anyhow::Result<Running> {
    let opts = NodeOptions {
        ready_timeout: Some(READY_TIMEOUT),
        cgroup: cgroup.cloned(),
        ..NodeOptions::new(&settings.berth_bin).extra_toml(berth_extra_toml(kind, settings, s3)?)
    };
    let node = BerthNode::start_with(opts)
        .await
        .with_context(|| format!("starting {}", kind.name()))?;
    let endpoint = Url::parse(&format!("{}/", node.base_url()))?;
    Ok(Running {
        endpoints: vec![endpoint],
        server_pids: vec![node.pid()],
        handle: Handle::Berth(vec![node]),
    })
}

/// Nodes of the cluster entry.
pub const CLUSTER_NODES: u64 = 3;

/// Three berth nodes on the shared S3 (same prefix), each with its own data dir and
/// cache; started together (node 1 initialises the cluster and needs a majority).
async fn start_cluster(
    kind: SystemKind,
    settings: &LaunchSettings,
    s3: &S3Access,
    cgroups: &[PathBuf],
) -> anyhow::Result<Running> {
    // Six distinct free ports (HTTP and gRPC of each node), held until all are chosen.
    let held = (0..2 * CLUSTER_NODES)
        .map(|_| reserve_port())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ports = held
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<anyhow::Result<Vec<u16>>>()?;
    drop(held);
    let members: Vec<(u64, u16)> = (0..CLUSTER_NODES)
        .map(|i| (i + 1, ports[(CLUSTER_NODES + i) as usize]))
        .collect();
    let mut starts = Vec::new();
    for i in 0..CLUSTER_NODES {
        let mut table = berth_extra_table(kind, settings, Some((s3, "proxy")))?;
        let mut cluster = cluster_table(i + 1, &members);
        if let (Some(lease), Some(toml::Value::Table(c))) = (&settings.follower_lease, cluster.get_mut("cluster")) {
            c.insert("follower_lease".into(), lease.clone().into());
        }
        table.extend(cluster);
        let opts = NodeOptions {
            ready_timeout: Some(READY_TIMEOUT),
            port: Some(ports[i as usize]),
            cgroup: cgroups.get(i as usize).cloned(),
            ..NodeOptions::new(&settings.berth_bin).extra_toml(toml::to_string(&table)?)
        };
        starts.push(BerthNode::start_with(opts));
    }
    // If one fails, the others are dropped, which kills them.
    let nodes = futures::future::try_join_all(starts)
        .await
        .with_context(|| format!("starting the {CLUSTER_NODES} nodes of {}", kind.name()))?;
    let endpoints = nodes
        .iter()
        .map(|n| Url::parse(&format!("{}/", n.base_url())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Running {
        endpoints,
        server_pids: nodes.iter().map(|n| n.pid()).collect(),
        handle: Handle::Berth(nodes),
    })
}

async fn start_dist(
    kind: SystemKind,
    settings: &LaunchSettings,
    s3: Option<(&S3Access, bool)>,
    cgroup: Option<&PathBuf>,
) -> anyhow::Result<Running> {
    let storage = match s3 {
        None => DistStorage::Filesystem,
        Some((access, redirect)) => DistStorage::S3 {
            access: access.clone(),
            root: format!("/{}", kind.name()),
            redirect,
        },
    };
    let opts = DistOptions {
        binary: settings.registry_bin.clone(),
        log_level: settings.log_level.clone(),
        cgroup: cgroup.cloned(),
        ready_timeout: READY_TIMEOUT,
        dir_prefix: format!("berth-bench-{}-", kind.name()),
        ..DistOptions::new(storage)
    };
    let dist = Distribution::start(&opts)
        .await
        .with_context(|| format!("starting {}", kind.name()))?;
    let endpoint = Url::parse(&format!("{}/", dist.base_url()))?;
    Ok(Running {
        endpoints: vec![endpoint],
        server_pids: vec![dist.pid()],
        handle: Handle::Dist(dist),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LaunchSettings {
        LaunchSettings {
            berth_bin: PathBuf::from("/nonexistent/berth"),
            registry_bin: PathBuf::from("/nonexistent/docker-registry"),
            log_level: "warn".into(),
            cache_max_bytes: 1 << 30,
            follower_lease: None,
        }
    }

    fn s3() -> S3Access {
        S3Access {
            endpoint: "http://127.0.0.1:8333".into(),
            bucket: "bench".into(),
            access_key: "ak".into(),
            secret_key: "sk\"quoted".into(),
        }
    }

    #[test]
    fn berth_toml_carries_s3_settings() {
        let t = s3();
        let text = berth_extra_toml(SystemKind::BerthS3, &settings(), Some((&t, "proxy"))).unwrap();
        let parsed: toml::Table = text.parse().unwrap();
        assert_eq!(parsed["storage"]["backend"].as_str(), Some("s3"));
        assert_eq!(
            parsed["storage"]["s3"]["secret_access_key"].as_str(),
            Some("sk\"quoted")
        );
        assert_eq!(parsed["storage"]["s3"]["blob_delivery"].as_str(), Some("proxy"));
        assert_eq!(parsed["storage"]["s3"]["prefix"].as_str(), Some("berth-s3"));
        assert_eq!(parsed["log"]["level"].as_str(), Some("warn"));
        let fs = berth_extra_toml(SystemKind::BerthFs, &settings(), None).unwrap();
        assert!(!fs.contains("storage"));
    }

    #[test]
    fn missing_binaries_and_cluster_are_reported_not_started() {
        let s = settings();
        for kind in SystemKind::ALL {
            let why = availability(kind, &s).unwrap_err();
            assert!(why.contains("not found"), "{}: {why}", kind.name());
        }
        assert!(
            probe_cluster(Path::new("/nonexistent"))
                .unwrap_err()
                .contains("not available yet")
        );
        let t = cluster_table(2, &[(1, 7001), (2, 7002), (3, 7003)]);
        assert_eq!(t["cluster"]["grpc_listen"].as_str(), Some("127.0.0.1:7002"));
        assert_eq!(t["cluster"]["initial_members"].as_array().map(|a| a.len()), Some(3));
    }
}
