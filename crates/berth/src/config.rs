//! Configuration: TOML file → `BERTH_*` environment → command-line flags →
//! validation. Unknown keys are refused with the key named; every default gives
//! the embedded single node.

use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use berth_cluster::RaftOptions;
use berth_cluster::TimingError;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP address of the registry API.
    pub listen: String,
    /// Where the node keeps its metadata (and, with the fs backend, its blobs).
    pub data_dir: PathBuf,
    pub storage: StorageConfig,
    pub registry: RegistryConfig,
    pub uploads: UploadsConfig,
    pub metadata: MetadataConfig,
    pub cluster: ClusterConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:5000".into(),
            data_dir: PathBuf::from("berth-data"),
            storage: StorageConfig::default(),
            registry: RegistryConfig::default(),
            uploads: UploadsConfig::default(),
            metadata: MetadataConfig::default(),
            cluster: ClusterConfig::default(),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: Backend,
    pub fs: FsConfig,
    pub s3: S3Config,
    pub cache: CacheConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Fs,
    S3,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub bucket: String,
    /// Endpoint URL of an S3-compatible service; AWS when absent.
    pub endpoint: Option<String>,
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`), as most non-AWS services need.
    pub path_style: bool,
    /// Key prefix of everything berth stores in the bucket.
    pub prefix: String,
    /// Static credentials; the standard AWS chain (environment, profile, instance
    /// role) is used when absent.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    /// `proxy`: the node streams blobs; `redirect`: 307 to a presigned URL.
    pub blob_delivery: Delivery,
    #[serde(with = "humantime_serde")]
    pub redirect_expiry: Duration,
    /// Size of the parts uploads are cut into (at least 5 MiB).
    pub part_size: bytesize::ByteSize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_attempts: u32,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            endpoint: None,
            region: "us-east-1".into(),
            path_style: false,
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            secret_access_key_file: None,
            blob_delivery: Delivery::Proxy,
            redirect_expiry: Duration::from_secs(600),
            part_size: bytesize::ByteSize::mib(8),
            request_timeout: Duration::from_secs(30),
            max_attempts: 4,
        }
    }
}

impl S3Config {
    /// The secret key, from the file when one is named.
    pub fn secret(&self) -> anyhow::Result<Option<String>> {
        match &self.secret_access_key_file {
            Some(path) => {
                let s = std::fs::read_to_string(path)
                    .with_context(|| format!("storage.s3.secret_access_key_file: cannot read {}", path.display()))?;
                Ok(Some(s.trim().to_string()))
            }
            None => Ok(self.secret_access_key.clone()),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    Proxy,
    Redirect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Keep proxied S3 blobs on the local disk (ignored for the fs backend).
    pub enabled: bool,
    /// Defaults to `<data_dir>/cache`.
    pub path: Option<PathBuf>,
    pub max_bytes: bytesize::ByteSize,
    /// Fills write with direct I/O (`O_DIRECT`), not through the page cache: the
    /// requesters of a miss are served from the fill's memory. `false`: buffered,
    /// so the page cache holds a blob for its next hits.
    pub direct_io: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            path: None,
            max_bytes: bytesize::ByteSize::gib(10),
            direct_io: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsConfig {
    /// Directory of blob bytes; defaults to `<data_dir>/blobs`.
    pub path: Option<PathBuf>,
    /// The directory is shared by every node of the cluster (e.g. an NFS mount).
    /// Required for the fs backend in a multi-node cluster.
    pub shared: bool,
    /// Pushed blobs are written with direct I/O (`O_DIRECT`), not through the page
    /// cache. `false`: buffered, so a blob stays cached for a first pull from here.
    pub direct_io: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            path: None,
            shared: false,
            direct_io: true,
        }
    }
}

/// Membership of a multi-node cluster. Without `grpc_listen` the node is a
/// stand-alone single-member cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's id, unique in the cluster and never reused for another machine.
    pub node_id: u64,
    /// Address of the internal gRPC service (Raft, forwarded writes).
    pub grpc_listen: Option<String>,
    /// What peers dial to reach this node's gRPC service; defaults to `grpc_listen`.
    pub advertise_grpc: Option<String>,
    /// What clients are sent to for HTTP; defaults to `listen`.
    pub advertise_http: Option<String>,
    /// Local IP address of this node's connections to other members (hosts with
    /// several interfaces); the OS chooses when unset.
    pub source_address: Option<std::net::IpAddr>,
    /// `"ID=GRPC_ADDR"` of every member of a NEW cluster. Only the member with the
    /// lowest id initialises the cluster, once; an initialised node ignores this.
    pub initial_members: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout: Duration,
    /// How long one confirmed leadership round lets the leader answer linearizable
    /// reads on its own; `"0s"` asks a quorum for every burst of reads.
    #[serde(with = "humantime_serde")]
    pub read_lease: Duration,
    /// How long a follower answers reads alone under a lease the leader granted
    /// (the leader then applies a write once every lease holder logged it); `"0s"`:
    /// a read-index request to the leader per burst of reads. Unset: what
    /// `read_lease` leaves of `election_timeout`, at most 250 ms
    /// ([`ClusterConfig::follower_lease`]).
    #[serde(with = "humantime_serde::option")]
    pub follower_lease: Option<Duration>,
    /// How long a node being added may take to catch up with the leader's log
    /// before it becomes a voter; past it the add fails and it stays a learner.
    #[serde(with = "humantime_serde")]
    pub catch_up_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: 1,
            grpc_listen: None,
            advertise_grpc: None,
            advertise_http: None,
            source_address: None,
            initial_members: Vec::new(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(500),
            read_lease: Duration::from_millis(250),
            follower_lease: None,
            catch_up_timeout: Duration::from_secs(300),
        }
    }
}

/// The follower lease when none is configured, if `read_lease` leaves that much.
const DEFAULT_FOLLOWER_LEASE: Duration = Duration::from_millis(250);

impl ClusterConfig {
    /// The follower lease this node grants and holds: the configured one, or the
    /// default cut to what `read_lease` leaves under `election_timeout`.
    pub fn follower_lease(&self) -> Duration {
        self.follower_lease
            .unwrap_or_else(|| DEFAULT_FOLLOWER_LEASE.min(self.election_timeout.saturating_sub(self.read_lease)))
    }

    /// Is this node (meant to be) part of a multi-node cluster?
    pub fn is_clustered(&self) -> bool {
        self.grpc_listen.is_some()
    }

    /// `initial_members` parsed into (id, gRPC address).
    pub fn members(&self) -> anyhow::Result<Vec<(u64, String)>> {
        self.initial_members
            .iter()
            .map(|m| {
                let (id, addr) = m
                    .split_once('=')
                    .with_context(|| format!("cluster.initial_members: {m:?} is not ID=GRPC_ADDR"))?;
                let id: u64 = id
                    .trim()
                    .parse()
                    .with_context(|| format!("cluster.initial_members: {id:?} is not a node id"))?;
                let addr = addr.trim();
                berth_cluster::validate_address(addr).map_err(|e| anyhow::anyhow!("cluster.initial_members: {e}"))?;
                Ok((id, addr.to_string()))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Deletes of blobs, manifests and tags are allowed (`false`: 405 UNSUPPORTED).
    pub deletes: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig { deletes: true }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadsConfig {
    /// An upload idle for this long is cancelled and its bytes removed.
    #[serde(with = "humantime_serde")]
    pub expire_after: Duration,
    /// How often expired uploads are looked for.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Upload sessions open at once in one repository, at most (then 429).
    pub max_sessions_per_repository: usize,
    /// Upload sessions a node owns at once, at most (then 429).
    pub max_sessions: usize,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig {
            expire_after: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(60),
            max_sessions_per_repository: 1_000,
            max_sessions: 10_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// `linearizable` (default) or `local`.
    pub tag_reads: TagReads,
    /// Take a snapshot and compact the Raft log after this many entries.
    pub snapshot_after_logs: u64,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            tag_reads: TagReads::Linearizable,
            snapshot_after_logs: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TagReads {
    Linearizable,
    Local,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `berth=debug,info`. `RUST_LOG` wins.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info,openraft=warn".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// OpenTelemetry trace export. Off unless an OTLP endpoint is given here or in the
/// standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`.
    pub otlp_endpoint: Option<String>,
    /// Which spans are exported: a tracing filter like `log.level`, applied to the
    /// exported spans only.
    pub level: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces recorded (0.0–1.0); a request that arrives with a sampled
    /// `traceparent` is always recorded. Unset: `OTEL_TRACES_SAMPLER_ARG` (for the
    /// ratio samplers of `OTEL_TRACES_SAMPLER`), else 1.0.
    pub sample_ratio: Option<f64>,
    /// Longest a finished span waits before it is sent.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            level: "info,openraft=warn".into(),
            service_name: "berth".into(),
            sample_ratio: None,
            flush_interval: Duration::from_secs(5),
        }
    }
}

/// Command-line values that override the file and environment.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

const ENV_PREFIX: &str = "BERTH_";

/// `BERTH_UPLOADS__EXPIRE_AFTER=1h` sets `uploads.expire_after`: sections are
/// separated by a double underscore. Values are read as TOML scalars when they parse
/// as one (numbers, booleans), else as strings.
fn apply_env(table: &mut toml::Table, vars: impl Iterator<Item = (String, String)>) -> anyhow::Result<()> {
    for (key, value) in vars {
        let Some(path) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if parts.iter().any(|p| p.is_empty()) {
            bail!("environment variable {key}: empty key segment");
        }
        if !TOP_LEVEL_KEYS.contains(&parts[0].as_str()) {
            // Other tools share the prefix (BERTH_TOOLS, …): only our keys are ours.
            continue;
        }
        let mut cur = &mut *table;
        for p in &parts[..parts.len() - 1] {
            let entry = cur
                .entry(p.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = entry
                .as_table_mut()
                .with_context(|| format!("environment variable {key}: {p} is not a section"))?;
        }
        let v = if let Ok(i) = value.parse::<i64>() {
            toml::Value::Integer(i)
        } else if let Some(f) = value.parse::<f64>().ok().filter(|f| f.is_finite()) {
            toml::Value::Float(f)
        } else if let Ok(b) = value.parse::<bool>() {
            toml::Value::Boolean(b)
        } else {
            toml::Value::String(value)
        };
        cur.insert(parts[parts.len() - 1].clone(), v);
    }
    Ok(())
}

/// An optional URL setting must name its scheme, `http://` or `https://`.
fn check_http_url(key: &str, url: Option<&str>) -> anyhow::Result<()> {
    match url {
        Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
            bail!("{key}: {u:?} must start with http:// or https://")
        }
        _ => Ok(()),
    }
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "storage",
    "uploads",
    "metadata",
    "cluster",
    "log",
    "telemetry",
];

impl Config {
    /// Load from an optional file, the process environment and flags, then validate.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> anyhow::Result<Config> {
        Self::load_from(file, std::env::vars(), overrides)
    }

    pub fn load_from(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
        overrides: Overrides,
    ) -> anyhow::Result<Config> {
        let mut table = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, env)?;
        let mut config: Config = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| anyhow::anyhow!("invalid configuration: {}", e.message().trim()))
            .with_context(|| match file {
                Some(p) => format!("in {} (or BERTH_* environment)", p.display()),
                None => "in BERTH_* environment".to_string(),
            })?;
        if let Some(l) = overrides.listen {
            config.listen = l;
        }
        if let Some(d) = overrides.data_dir {
            config.data_dir = d;
        }
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.listen_addr()?;
        if self.data_dir.as_os_str().is_empty() {
            bail!("data_dir: must not be empty");
        }
        if self.uploads.expire_after.is_zero() {
            bail!("uploads.expire_after: must be greater than zero");
        }
        if self.uploads.sweep_interval.is_zero() {
            bail!("uploads.sweep_interval: must be greater than zero");
        }
        if self.uploads.max_sessions_per_repository == 0 {
            bail!("uploads.max_sessions_per_repository: must be greater than zero");
        }
        if self.uploads.max_sessions == 0 {
            bail!("uploads.max_sessions: must be greater than zero");
        }
        if self.storage.backend == Backend::S3 {
            let s3 = &self.storage.s3;
            if s3.bucket.is_empty() {
                bail!("storage.s3.bucket: required when storage.backend = \"s3\"");
            }
            if s3.secret_access_key.is_some() && s3.secret_access_key_file.is_some() {
                bail!("storage.s3.secret_access_key_file: set either it or secret_access_key, not both");
            }
            let has_secret = s3.secret_access_key.is_some() || s3.secret_access_key_file.is_some();
            if s3.access_key_id.is_some() != has_secret {
                bail!("storage.s3.access_key_id: static credentials need both the key id and the secret");
            }
            if s3.part_size.as_u64() < 5 * 1024 * 1024 {
                bail!(
                    "storage.s3.part_size: S3 parts are at least 5 MiB, got {}",
                    s3.part_size
                );
            }
            if s3.redirect_expiry.is_zero() || s3.redirect_expiry > Duration::from_secs(7 * 24 * 3600) {
                bail!("storage.s3.redirect_expiry: must be between 1s and 7 days");
            }
            if s3.max_attempts == 0 {
                bail!("storage.s3.max_attempts: must be at least 1");
            }
            check_http_url("storage.s3.endpoint", s3.endpoint.as_deref())?;
        }
        let cluster = &self.cluster;
        if cluster.node_id == 0 {
            bail!("cluster.node_id: must be at least 1");
        }
        if let Some(g) = &cluster.grpc_listen {
            g.parse::<SocketAddr>()
                .with_context(|| format!("cluster.grpc_listen: {g:?} is not an address like 10.0.0.1:7000"))?;
        }
        if cluster.catch_up_timeout.is_zero() {
            bail!("cluster.catch_up_timeout: must be greater than zero");
        }
        if let Some(addr) = &cluster.advertise_grpc {
            berth_cluster::validate_address(addr).map_err(|e| anyhow::anyhow!("cluster.advertise_grpc: {e}"))?;
        }
        if let Some(addr) = &cluster.advertise_http {
            berth_cluster::validate_http_address(addr).map_err(|e| anyhow::anyhow!("cluster.advertise_http: {e}"))?;
        }
        let members = cluster.members()?;
        if !members.is_empty() {
            if !cluster.is_clustered() {
                bail!("cluster.initial_members: needs cluster.grpc_listen");
            }
            if !members.iter().any(|(id, _)| *id == cluster.node_id) {
                bail!("cluster.initial_members: does not name this node ({})", cluster.node_id);
            }
        }
        if cluster.is_clustered() && self.storage.backend == Backend::Fs && !self.storage.fs.shared {
            bail!(
                "storage.backend: a multi-node cluster needs blobs every node can read: use \"s3\", \
                 or set storage.fs.shared = true on a directory shared by all nodes"
            );
        }
        // The configured follower lease is checked even where it is not used (a
        // single node), so a config that is wrong for a cluster fails at once.
        let configured = RaftOptions {
            follower_lease: cluster.follower_lease(),
            ..self.raft_options()
        };
        if let Err(e) = configured.validate() {
            let key = match e {
                TimingError::Heartbeat | TimingError::ElectionRange { .. } => "cluster.election_timeout",
                TimingError::ReadLease { .. } => "cluster.read_lease",
                TimingError::FollowerLease { .. } => "cluster.follower_lease",
                TimingError::SnapshotAfterLogs => "metadata.snapshot_after_logs",
            };
            bail!("{key}: {e}");
        }
        let telemetry = &self.telemetry;
        if let Some(r) = telemetry.sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            bail!("telemetry.sample_ratio: must be between 0.0 and 1.0, got {r}");
        }
        if telemetry.flush_interval.is_zero() {
            bail!("telemetry.flush_interval: must be greater than zero");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&telemetry.level) {
            bail!("telemetry.level: {:?} is not a valid filter: {e}", telemetry.level);
        }
        if telemetry.service_name.is_empty() {
            bail!("telemetry.service_name: must not be empty");
        }
        check_http_url("telemetry.otlp_endpoint", telemetry.otlp_endpoint.as_deref())?;
        Ok(())
    }

    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen
            .parse()
            .with_context(|| format!("listen: {:?} is not an address like 127.0.0.1:5000", self.listen))
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.storage
            .fs
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("blobs"))
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.storage
            .cache
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cache"))
    }

    /// Local scratch space of the S3 backend (upload spools).
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    pub fn meta_dir(&self) -> PathBuf {
        self.data_dir.join("meta")
    }

    /// The Raft settings of this node.
    pub fn raft_options(&self) -> RaftOptions {
        let cc = &self.cluster;
        RaftOptions {
            snapshot_after_logs: self.metadata.snapshot_after_logs,
            heartbeat_interval: cc.heartbeat_interval,
            election_timeout_min: cc.election_timeout,
            election_timeout_max: cc.election_timeout.saturating_mul(2),
            source_address: cc.source_address,
            read_lease: cc.read_lease,
            catch_up_timeout: cc.catch_up_timeout,
            // A node that serves no cluster has nobody to grant a lease to (and would
            // otherwise wait one out on every restart).
            follower_lease: if cc.is_clustered() {
                cc.follower_lease()
            } else {
                Duration::ZERO
            },
            ..RaftOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, toml_text)?;
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_from(Some(&path), env.collect::<Vec<_>>().into_iter(), Overrides::default())
    }

    #[test]
    fn defaults_are_the_embedded_single_node() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:5000");
        assert_eq!(c.storage.backend, Backend::Fs);
        assert_eq!(c.blob_dir(), PathBuf::from("berth-data/blobs"));
        assert_eq!(c.uploads.expire_after, Duration::from_secs(86400));
        assert!(c.storage.fs.direct_io);
        assert!(c.storage.cache.direct_io);
        let c = load(
            "[storage.fs]\ndirect_io = false\n[storage.cache]\ndirect_io = false",
            &[],
        )
        .unwrap();
        assert!(!c.storage.fs.direct_io);
        assert!(!c.storage.cache.direct_io);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = format!("{:#}", load("lisen = \"x\"", &[]).unwrap_err());
        assert!(err.contains("lisen"), "{err}");
        let err = format!("{:#}", load("[uploads]\nexpires = \"1h\"", &[]).unwrap_err());
        assert!(err.contains("expires"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = format!("{:#}", load("listen = \"nowhere\"", &[]).unwrap_err());
        assert!(err.contains("listen"), "{err}");
        let err = format!("{:#}", load("[uploads]\nexpire_after = \"soon\"", &[]).unwrap_err());
        assert!(err.contains("soon") || err.contains("expire_after"), "{err}");
        let err = format!("{:#}", load("[storage]\nbackend = \"tape\"", &[]).unwrap_err());
        assert!(err.contains("tape"), "{err}");
    }

    #[test]
    fn environment_overrides_file_and_flags_override_both() {
        let c = load(
            "listen = \"127.0.0.1:1\"\n[uploads]\nexpire_after = \"1h\"",
            &[
                ("BERTH_LISTEN", "127.0.0.1:2"),
                ("BERTH_UPLOADS__EXPIRE_AFTER", "5m"),
                ("BERTH_TOOLS", "/elsewhere"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.uploads.expire_after, Duration::from_secs(300));

        let o = Overrides {
            listen: Some("127.0.0.1:3".into()),
            data_dir: Some("/tmp/x".into()),
        };
        let c = Config::load_from(
            None,
            [("BERTH_LISTEN".to_string(), "127.0.0.1:2".to_string())].into_iter(),
            o,
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:3");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn s3_settings_are_checked() {
        let base = "[storage]\nbackend = \"s3\"\n[storage.s3]\n";
        let err = format!("{:#}", load(base, &[]).unwrap_err());
        assert!(err.contains("storage.s3.bucket"), "{err}");
        let err = format!(
            "{:#}",
            load(&format!("{base}bucket = \"b\"\npart_size = \"1MiB\""), &[]).unwrap_err()
        );
        assert!(err.contains("part_size"), "{err}");
        let err = format!(
            "{:#}",
            load(&format!("{base}bucket = \"b\"\naccess_key_id = \"k\""), &[]).unwrap_err()
        );
        assert!(err.contains("access_key_id"), "{err}");
        let c = load(
            &format!("{base}bucket = \"b\"\nendpoint = \"http://127.0.0.1:8333\"\nblob_delivery = \"redirect\""),
            &[("BERTH_STORAGE__S3__PART_SIZE", "16MiB")],
        )
        .unwrap();
        assert_eq!(c.storage.s3.blob_delivery, Delivery::Redirect);
        assert_eq!(c.storage.s3.part_size, bytesize::ByteSize::mib(16));
    }

    #[test]
    fn telemetry_settings_are_checked() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.telemetry.otlp_endpoint, None);
        assert_eq!(c.telemetry.sample_ratio, None);
        let c = load(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4317\"\nflush_interval = \"200ms\"",
            &[("BERTH_TELEMETRY__SAMPLE_RATIO", "0.25")],
        )
        .unwrap();
        assert_eq!(c.telemetry.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!(c.telemetry.flush_interval, Duration::from_millis(200));
        assert_eq!(c.telemetry.sample_ratio, Some(0.25));
        for (bad, key) in [
            ("sample_ratio = 1.5", "telemetry.sample_ratio"),
            ("flush_interval = \"0s\"", "telemetry.flush_interval"),
            ("otlp_endpoint = \"collector:4317\"", "telemetry.otlp_endpoint"),
            ("service_name = \"\"", "telemetry.service_name"),
            ("level = \"info,[\"", "telemetry.level"),
        ] {
            let err = format!("{:#}", load(&format!("[telemetry]\n{bad}"), &[]).unwrap_err());
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn cluster_settings_are_checked() {
        let s3 = "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\n";
        let fs_cluster = "[cluster]\nnode_id = 2\ngrpc_listen = \"127.0.0.1:7002\"\n";
        let err = format!("{:#}", load(fs_cluster, &[]).unwrap_err());
        assert!(err.contains("storage.fs.shared"), "{err}");
        let c = load(
            &format!("{s3}{fs_cluster}initial_members = [\"1=127.0.0.1:7001\", \"2=127.0.0.1:7002\"]"),
            &[],
        )
        .unwrap();
        assert_eq!(c.cluster.members().unwrap()[1], (2, "127.0.0.1:7002".to_string()));
        let err = format!(
            "{:#}",
            load(
                &format!("{s3}{fs_cluster}initial_members = [\"1=127.0.0.1:7001\"]"),
                &[]
            )
            .unwrap_err()
        );
        assert!(err.contains("does not name this node"), "{err}");
        let err = format!(
            "{:#}",
            load(&format!("{s3}{fs_cluster}initial_members = [\"x\"]"), &[]).unwrap_err()
        );
        assert!(err.contains("ID=GRPC_ADDR"), "{err}");
        let err = format!(
            "{:#}",
            load(&format!("{s3}{fs_cluster}read_lease = \"600ms\""), &[]).unwrap_err()
        );
        assert!(err.contains("cluster.read_lease"), "{err}");
        let c = load(&format!("{s3}{fs_cluster}read_lease = \"0s\""), &[]).unwrap();
        assert!(c.cluster.read_lease.is_zero());
        let err = format!(
            "{:#}",
            load(&format!("{s3}{fs_cluster}follower_lease = \"300ms\""), &[]).unwrap_err()
        );
        assert!(err.contains("cluster.follower_lease"), "{err}");
        let c = load(
            &format!("{s3}{fs_cluster}read_lease = \"100ms\"\nfollower_lease = \"400ms\""),
            &[],
        )
        .unwrap();
        assert_eq!(c.cluster.follower_lease(), Duration::from_millis(400));
        // Unset: the default, cut to what the read lease leaves.
        let c = load(&format!("{s3}{fs_cluster}"), &[]).unwrap();
        assert_eq!(c.cluster.follower_lease(), Duration::from_millis(250));
        let c = load(&format!("{s3}{fs_cluster}read_lease = \"400ms\""), &[]).unwrap();
        assert_eq!(c.cluster.follower_lease(), Duration::from_millis(100));
        let c = load(&format!("{s3}{fs_cluster}follower_lease = \"0s\""), &[]).unwrap();
        assert!(c.cluster.follower_lease().is_zero());
        // Every section is reachable from the environment.
        let c = load(
            s3,
            &[("BERTH_CLUSTER__READ_LEASE", "100ms"), ("BERTH_CLUSTER__NODE_ID", "7")],
        )
        .unwrap();
        assert_eq!(c.cluster.read_lease, Duration::from_millis(100));
        assert_eq!(c.cluster.node_id, 7);
    }

    #[test]
    fn unknown_environment_keys_under_our_sections_are_refused() {
        let err = format!("{:#}", load("", &[("BERTH_UPLOADS__NOPE", "1")]).unwrap_err());
        assert!(err.contains("nope"), "{err}");
    }
}
