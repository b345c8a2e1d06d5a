//! The reference registry: CNCF Distribution 2.8.2 (Debian `docker-registry`) as one
//! process on a free 127.0.0.1 port, for side-by-side measurements and behaviour
//! comparisons.
//!
//! It never runs with its default config (which listens on all interfaces): the
//! config is generated into a private temp dir ([`config`]), written as JSON (YAML is
//! a superset of JSON, so nothing needs quoting). Its environment loses `REGISTRY_*`
//! (which would override the config), `AWS_*` (`AWS_CA_BUNDLE` breaks its plain-http
//! S3 client) and proxy variables. Ready means `GET /v2/` answers 200 (polled,
//! bounded). [`Distribution::stop`] sends SIGTERM (SIGKILL after [`STOP_TIMEOUT`]);
//! dropping it SIGKILLs the process, and so does the kernel when the thread that
//! started it dies.

use std::fs::OpenOptions;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use tempfile::TempDir;

use crate::node::free_port;
use crate::node::set_parent_death_signal;
use crate::node::signal;
use crate::node::start_in_cgroup;
use crate::node::tail_of_file;
use crate::seaweed::REGION;
use crate::seaweed::S3Access;

/// Debian's binary of Distribution 2.8.2.
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";
/// How long a start may take before `GET /v2/` answers 200.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long SIGTERM may take before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Attempts with a fresh port when the chosen one was taken before the bind.
const PORT_ATTEMPTS: usize = 3;
const LOG_FILE: &str = "registry.log";

/// Where Distribution keeps blobs and manifests.
#[derive(Debug, Clone)]
pub enum DistStorage {
    /// A directory inside the private temp dir.
    Filesystem,
    /// A bucket, under the key prefix `root` ("/name"); `redirect`: blob GETs are
    /// answered with 307 to a presigned URL (its default), else it streams them.
    S3 {
        access: S3Access,
        root: String,
        redirect: bool,
    },
}

/// How to start the registry.
#[derive(Debug, Clone)]
pub struct DistOptions {
    /// Default [`DOCKER_REGISTRY`].
    pub binary: PathBuf,
    pub storage: DistStorage,
    /// error, warn, info or debug (trace counts as debug; anything else as warn).
    pub log_level: String,
    /// A cgroup directory the process starts in, see [`start_in_cgroup`].
    pub cgroup: Option<PathBuf>,
    pub ready_timeout: Duration,
    /// Prefix of the private temp dir's name.
    pub dir_prefix: String,
}

impl DistOptions {
    pub fn new(storage: DistStorage) -> DistOptions {
        DistOptions {
            binary: PathBuf::from(DOCKER_REGISTRY),
            storage,
            log_level: "warn".into(),
            cgroup: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            dir_prefix: "berth-dist-".into(),
        }
    }
}

/// Distribution's config: `port` on 127.0.0.1, data under `dir` or in S3, access log
/// off, deletes on, upload purging off, the blob descriptor cache in memory (as
/// Debian's sample config).
pub fn config(port: u16, dir: &Path, storage: &DistStorage, log_level: &str) -> serde_json::Value {
    let mut section = serde_json::json!({
        "delete": {"enabled": true},
        "cache": {"blobdescriptor": "inmemory"},
        "maintenance": {"uploadpurging": {"enabled": false}},
    });
    match storage {
        DistStorage::Filesystem => {
            section["filesystem"] = serde_json::json!({"rootdirectory": dir.join("registry")});
        }
        DistStorage::S3 { access, root, redirect } => {
            section["s3"] = serde_json::json!({
                "accesskey": access.access_key,
                "secretkey": access.secret_key,
                "region": REGION,
                "regionendpoint": access.endpoint,
                "bucket": access.bucket,
                "secure": false,
                "v4auth": true,
                "rootdirectory": root,
            });
            if !redirect {
                section["redirect"] = serde_json::json!({"disable": true});
            }
        }
    }
    let level = match log_level {
        "error" | "warn" | "info" | "debug" => log_level,
        "trace" => "debug",
        _ => "warn",
    };
    serde_json::json!({
        "version": "0.1",
        "log": {"level": level, "formatter": "text", "accesslog": {"disabled": true}},
        "storage": section,
        "http": {"addr": format!("127.0.0.1:{port}"), "headers": {"X-Content-Type-Options": ["nosniff"]}},
    })
}

/// One running (or stopped) `docker-registry serve`. Dropping it SIGKILLs the process.
pub struct Distribution {
    child: Option<Child>,
    pid: u32,
    port: u16,
    log_path: PathBuf,
    // Last field: removed after the process is killed in `Drop`.
    dir: TempDir,
}

impl std::fmt::Debug for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distribution")
            .field("port", &self.port)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Distribution {
    /// Starts it on a free port; returns once `GET /v2/` answers 200.
    pub async fn start(opts: &DistOptions) -> anyhow::Result<Distribution> {
        crate::tools::require_executable(&opts.binary)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let mut last_err = None;
        // A new port (and dir) when the probed port was taken before the server bound it.
        for _ in 0..PORT_ATTEMPTS {
            let mut d = Distribution::spawn(opts)?;
            match d.wait_ready(&http, opts.ready_timeout).await {
                Ok(()) => return Ok(d),
                Err(e) => {
                    d.kill9();
                    if !d.log_tail(20).contains("address already in use") {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("Distribution did not start")))
    }

    fn spawn(opts: &DistOptions) -> anyhow::Result<Distribution> {
        let dir = tempfile::Builder::new().prefix(&opts.dir_prefix).tempdir()?;
        let log_path = dir.path().join(LOG_FILE);
        let port = free_port()?;
        let config_path = dir.path().join("config.yml");
        let cfg = config(port, dir.path(), &opts.storage, &opts.log_level);
        std::fs::write(&config_path, serde_json::to_vec_pretty(&cfg)?)?;
        let log = OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = Command::new(&opts.binary);
        cmd.arg("serve")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("REGISTRY_")
                || k.starts_with("AWS_")
                || k.eq_ignore_ascii_case("http_proxy")
                || k.eq_ignore_ascii_case("https_proxy")
            {
                cmd.env_remove(&key);
            }
        }
        set_parent_death_signal(&mut cmd, libc::SIGKILL);
        if let Some(cgroup) = &opts.cgroup {
            start_in_cgroup(&mut cmd, cgroup)?;
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", opts.binary.display()))?;
        Ok(Distribution {
            pid: child.id(),
            child: Some(child),
            port,
            log_path,
            dir,
        })
    }

    async fn wait_ready(&mut self, http: &reqwest::Client, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("{}/v2/", self.base_url());
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("docker-registry exited with {status}:\n{}", self.log_tail(30));
            }
            match http.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("GET /v2/ answered {}", r.status()),
                Err(e) => last = format!("GET /v2/ failed: {e}"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "docker-registry not ready within {timeout:?} ({last}):\n{}",
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// "http://127.0.0.1:PORT"
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The private dir (config, log, filesystem storage).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Last `lines` lines of its stdout/stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of_file(&self.log_path, lines)
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`] (an error then). No-op if stopped.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "docker-registry pid {} ignored SIGTERM for {STOP_TIMEOUT:?}; killed",
                    self.pid
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGKILL and reap. No-op if stopped.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_binds_loopback_and_sets_the_storage_modes() {
        let c = config(5001, Path::new("/tmp/x"), &DistStorage::Filesystem, "warn");
        assert_eq!(c["http"]["addr"], "127.0.0.1:5001");
        assert_eq!(c["storage"]["filesystem"]["rootdirectory"], "/tmp/x/registry");
        assert_eq!(c["log"]["accesslog"]["disabled"], true);
        let access = S3Access {
            endpoint: "http://127.0.0.1:8333".into(),
            bucket: "bench".into(),
            access_key: "ak".into(),
            secret_key: "sk".into(),
        };
        let s3 = |redirect| DistStorage::S3 {
            access: access.clone(),
            root: "/dist-s3-proxy".into(),
            redirect,
        };
        let proxy = config(1, Path::new("/x"), &s3(false), "info");
        assert_eq!(proxy["storage"]["redirect"]["disable"], true);
        assert_eq!(proxy["storage"]["s3"]["secure"], false);
        assert_eq!(proxy["storage"]["s3"]["regionendpoint"], "http://127.0.0.1:8333");
        assert_eq!(proxy["storage"]["s3"]["rootdirectory"], "/dist-s3-proxy");
        assert!(proxy["storage"].get("filesystem").is_none());
        let redirect = config(1, Path::new("/x"), &s3(true), "trace");
        assert!(redirect["storage"].get("redirect").is_none());
        assert_eq!(redirect["log"]["level"], "debug");
    }

    #[tokio::test]
    async fn a_missing_binary_is_an_error_naming_the_install_script() {
        let opts = DistOptions {
            binary: PathBuf::from("/nonexistent/docker-registry"),
            ..DistOptions::new(DistStorage::Filesystem)
        };
        let err = Distribution::start(&opts).await.unwrap_err().to_string();
        assert!(err.contains("install-test-deps"), "{err}");
    }
}
