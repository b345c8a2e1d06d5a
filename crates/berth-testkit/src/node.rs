//! One real `berth serve` process on 127.0.0.1 with a generated config.
//!
//! The config file (`berth-test.toml`) and the process log (`berth-test.log`, stdout
//! and stderr of every start appended) live in the data dir. The log's tail is part
//! of every error this module returns, so a failing test shows what the server said.

use std::fs::File;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use tempfile::TempDir;

/// File names inside the data dir.
pub const CONFIG_FILE: &str = "berth-test.toml";
pub const LOG_FILE: &str = "berth-test.log";

/// How long a start may take before `/readyz` answers 200.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd node may take to exit before it is SIGKILLed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Attempts with a fresh port when the chosen one was taken between probe and bind.
const PORT_ATTEMPTS: usize = 3;

/// How to start a node. `BerthNode::start(binary)` is `start_with(NodeOptions::new(binary))`.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Path of the `berth` binary (`env!("CARGO_BIN_EXE_berth")` in the crate's tests).
    pub binary: PathBuf,
    /// TOML merged over the generated config (tables merge key by key, so
    /// `[storage]\nbackend = "s3"` overrides the generated `fs` backend).
    pub extra_toml: String,
    /// Data dir to use (created if missing, kept afterwards). `None`: a fresh temp dir
    /// removed on drop (kept if `BERTH_KEEP_TEST_DIRS` is set).
    pub data_dir: Option<PathBuf>,
    /// Fixed port; `None` picks a free one on 127.0.0.1.
    pub port: Option<u16>,
    /// Extra environment for the child.
    pub env: Vec<(String, String)>,
    /// Readiness deadline; `None` is [`DEFAULT_READY_TIMEOUT`].
    pub ready_timeout: Option<Duration>,
    /// A cgroup directory the child starts in (every start), see [`start_in_cgroup`].
    pub cgroup: Option<PathBuf>,
}

impl NodeOptions {
    pub fn new(binary: impl AsRef<Path>) -> Self {
        NodeOptions {
            binary: binary.as_ref().to_path_buf(),
            ..Default::default()
        }
    }

    pub fn extra_toml(mut self, toml: impl Into<String>) -> Self {
        self.extra_toml = toml.into();
        self
    }

    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cgroup(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cgroup = Some(dir.into());
        self
    }
}

/// A running (or stopped) `berth serve` child. Dropping it SIGKILLs the child.
///
/// The child also gets SIGKILL when the thread that started it exits (so a test
/// process killed by its runner leaves no server behind): start and restart nodes
/// from the test's own task or a runtime worker, not from `spawn_blocking`.
pub struct BerthNode {
    binary: PathBuf,
    data_dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    cgroup: Option<PathBuf>,
    ready_timeout: Duration,
    child: Option<Child>,
    last_pid: u32,
    starts: u32,
    http: reqwest::Client,
    // Last field: dropped after the child is killed in `Drop`.
    tmp: Option<TempDir>,
}

impl std::fmt::Debug for BerthNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BerthNode")
            .field("port", &self.port)
            .field("pid", &self.last_pid)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl BerthNode {
    /// Free port on 127.0.0.1, fresh data dir, fs backend; returns once `/readyz` is 200.
    pub async fn start(binary: impl AsRef<Path>) -> anyhow::Result<BerthNode> {
        Self::start_with(NodeOptions::new(binary)).await
    }

    pub async fn start_with(opts: NodeOptions) -> anyhow::Result<BerthNode> {
        if opts.binary.as_os_str().is_empty() {
            bail!("NodeOptions.binary is empty");
        }
        if !opts.binary.is_file() {
            bail!("berth binary {} does not exist", opts.binary.display());
        }
        let (tmp, data_dir) = match &opts.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
                (None, dir.clone())
            }
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("berth-node-")
                    .tempdir()
                    .context("creating temp data dir")?;
                let path = tmp.path().to_path_buf();
                (Some(tmp), path)
            }
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .build()?;
        let mut node = BerthNode {
            binary: opts.binary.clone(),
            config_path: data_dir.join(CONFIG_FILE),
            log_path: data_dir.join(LOG_FILE),
            data_dir,
            port: 0,
            env: opts.env.clone(),
            cgroup: opts.cgroup.clone(),
            ready_timeout: opts.ready_timeout.unwrap_or(DEFAULT_READY_TIMEOUT),
            child: None,
            last_pid: 0,
            starts: 0,
            http,
            tmp,
        };

        let attempts = if opts.port.is_some() { 1 } else { PORT_ATTEMPTS };
        let mut last_err = None;
        for _ in 0..attempts {
            node.port = match opts.port {
                Some(p) => p,
                None => free_port()?,
            };
            let config = generate_config(node.port, &node.data_dir, &opts.extra_toml)?;
            std::fs::write(&node.config_path, config)
                .with_context(|| format!("writing {}", node.config_path.display()))?;
            match node.spawn_and_wait_ready().await {
                Ok(()) => return Ok(node),
                Err(e) => {
                    // The whole log of this start: a backtrace may follow the error.
                    let port_taken = node.last_start_log().to_lowercase().contains("in use");
                    node.kill9();
                    if !port_taken {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// "http://127.0.0.1:PORT"
    pub fn base_url(&self) -> String {
        format!("http://{}", self.host_port())
    }

    /// "127.0.0.1:PORT"
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// PID of the current child, or of the last one if it is not running.
    pub fn pid(&self) -> u32 {
        self.last_pid
    }

    /// Whether the child is running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap. No-op if not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.log_marker(&format!("SIGKILLed pid {}", self.last_pid));
        }
    }

    /// Start again with the same binary, config, port and data dir; waits until ready.
    /// A running child is stopped gracefully first.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.stop().await?;
        }
        self.spawn_and_wait_ready().await
    }

    /// SIGTERM without waiting: the node starts its graceful shutdown (a later
    /// [`BerthNode::stop`] sends a second SIGTERM).
    pub fn terminate(&self) {
        if self.child.is_some() {
            signal(self.last_pid, libc::SIGTERM);
        }
    }

    /// SIGTERM, wait up to [`STOP_TIMEOUT`], then SIGKILL. Errors if the node had to be
    /// killed or exited unsuccessfully (a graceful shutdown exits 0).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.log_marker(&format!("pid {pid} exited after SIGTERM: {status}"));
                    if !status.success() && !exited_by_sigterm(status) {
                        bail!(
                            "berth pid {pid} exited with {status} after SIGTERM\n{}",
                            self.log_tail_block()
                        );
                    }
                    if exited_by_sigterm(status) {
                        bail!(
                            "berth pid {pid} was killed by SIGTERM (no graceful shutdown handler)\n{}",
                            self.log_tail_block()
                        );
                    }
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => return Err(e).context("waiting for berth"),
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.log_marker(&format!("pid {pid} SIGKILLed: no exit within {STOP_TIMEOUT:?}"));
                bail!(
                    "berth pid {pid} did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed\n{}",
                    self.log_tail_block()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of_file(&self.log_path, lines)
    }

    /// What the log holds since the last start's marker line.
    fn last_start_log(&self) -> String {
        let text = std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        match text.rfind("=== berth-testkit: start #") {
            Some(i) => text[i..].to_string(),
            None => text,
        }
    }

    fn log_tail_block(&self) -> String {
        format!(
            "--- last lines of {} ---\n{}\n--- end of log ---",
            self.log_path.display(),
            self.log_tail(60)
        )
    }

    fn log_marker(&self, msg: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(f, "=== berth-testkit: {msg} ===");
        }
    }

    async fn spawn_and_wait_ready(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_ready().await
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        self.starts += 1;
        writeln!(
            log,
            "=== berth-testkit: start #{} of {} serve --config {} (port {}) ===",
            self.starts,
            self.binary.display(),
            self.config_path.display(),
            self.port
        )?;
        let stderr: File = log.try_clone()?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .env("RUST_BACKTRACE", "1");
        // The generated config is the whole truth: BERTH_* variables of the test
        // environment would override it.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BERTH_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        set_parent_death_signal(&mut cmd, libc::SIGKILL);
        if let Some(dir) = &self.cgroup {
            start_in_cgroup(&mut cmd, dir)?;
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.last_pid = child.id();
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.base_url());
        let started = Instant::now();
        let deadline = started + self.ready_timeout;
        let mut last;
        loop {
            let Some(child) = self.child.as_mut() else {
                bail!("berth is not running");
            };
            if let Some(status) = child.try_wait().context("waiting for berth")? {
                self.child = None;
                bail!(
                    "berth (pid {}) exited with {status} before becoming ready on {}\n{}",
                    self.last_pid,
                    self.host_port(),
                    self.log_tail_block()
                );
            }
            match self.http.get(&url).send().await {
                // Only our process counts: between our free-port pick and its bind,
                // another test's node may have taken the port and be answering.
                Ok(resp) if resp.status() == reqwest::StatusCode::OK && listens_on(self.last_pid, self.port) => {
                    return Ok(());
                }
                Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
                    last = format!("port {} answered by another process", self.port);
                }
                Ok(resp) => last = format!("GET /readyz answered {}", resp.status()),
                Err(e) => last = format!("GET /readyz failed: {e}"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "berth (pid {}) not ready on {} within {:?} (last: {last})\n{}",
                    self.last_pid,
                    self.host_port(),
                    self.ready_timeout,
                    self.log_tail_block()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for BerthNode {
    fn drop(&mut self) {
        self.kill9();
        if std::env::var_os("BERTH_KEEP_TEST_DIRS").is_some()
            && let Some(tmp) = self.tmp.take()
        {
            eprintln!("berth-testkit: kept node dir {}", tmp.keep().display());
        }
    }
}

/// Generated config: listen, data_dir, fs storage; `extra` merged over it table by table.
pub fn generate_config(port: u16, data_dir: &Path, extra: &str) -> anyhow::Result<String> {
    let mut base = toml::Table::new();
    base.insert("listen".into(), toml::Value::String(format!("127.0.0.1:{port}")));
    base.insert(
        "data_dir".into(),
        toml::Value::String(data_dir.to_str().context("data dir path is not UTF-8")?.to_string()),
    );
    let mut storage = toml::Table::new();
    storage.insert("backend".into(), toml::Value::String("fs".into()));
    base.insert("storage".into(), toml::Value::Table(storage));
    if !extra.trim().is_empty() {
        let extra: toml::Table = extra
            .parse()
            .with_context(|| format!("NodeOptions.extra_toml is not valid TOML:\n{extra}"))?;
        merge_tables(&mut base, extra);
    }
    Ok(toml::to_string(&base)?)
}

fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// Ports handed to the servers tests start. They lie below the kernel's ephemeral
/// range, so no outgoing connection can take one between the moment it was found
/// free and the server's own bind; only another test's pick can.
const TEST_PORTS: std::ops::Range<u16> = 12_000..22_000;

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(reserve_port()?.local_addr()?.port())
}

/// A listener on a free 127.0.0.1 port of [`TEST_PORTS`], chosen at random so that
/// parallel test processes rarely try the same one. Where the ephemeral range
/// reaches into those ports (a tuned kernel), any port the kernel gives.
pub fn reserve_port() -> anyhow::Result<TcpListener> {
    if ephemeral_start().is_some_and(|low| low >= TEST_PORTS.end + crate::seaweed::GRPC_OFFSET) {
        let span = u128::from(TEST_PORTS.end - TEST_PORTS.start);
        for _ in 0..256 {
            let offset = u16::try_from(uuid::Uuid::new_v4().as_u128() % span).unwrap_or(0);
            if let Ok(l) = TcpListener::bind(("127.0.0.1", TEST_PORTS.start + offset)) {
                return Ok(l);
            }
        }
    }
    TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")
}

/// First port of the kernel's ephemeral range (Linux), if it can be read; read
/// once per process.
fn ephemeral_start() -> Option<u16> {
    static START: std::sync::OnceLock<Option<u16>> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
        range.split_whitespace().next()?.parse().ok()
    })
}

/// Last `lines` lines of a (possibly missing) text file.
pub fn tail_of_file(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Sends `sig` to `pid`. Ignores a process that is already gone.
pub fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether `pid` names a live process (or an unreaped zombie).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks for existence.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Does process `pid` hold a TCP socket listening on `port`? (Linux: the socket
/// inodes of its descriptors against `/proc/net/tcp`.)
#[cfg(target_os = "linux")]
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    // Rows: "sl local_address rem_address st ... inode"; LISTEN is state 0A.
    let listening: std::collections::HashSet<&str> = table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let f: Vec<&str> = row.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *f.get(3)? == "0A").then_some(*f.get(9)?)
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']'))
                .is_some_and(|inode| listening.contains(inode))
        })
    })
}

#[cfg(not(target_os = "linux"))]
fn listens_on(_pid: u32, _port: u16) -> bool {
    true
}

/// Makes the child join the cgroup at `dir` (by writing to its `cgroup.procs`, v1 or
/// v2) between fork and exec, so it runs no instruction of its own outside it: what
/// it reads of its CPU budget when it starts (std's `available_parallelism`, and so
/// tokio's worker count) is that cgroup's, as in a container with a CPU limit. The
/// spawn fails if the child cannot join.
pub fn start_in_cgroup(cmd: &mut Command, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let procs = std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())?;
    // SAFETY: open, write and close are async-signal-safe; the closure allocates
    // nothing (the path was made before the fork, `last_os_error` only reads errno).
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0": the writing process itself.
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    Ok(())
}

/// Makes the kernel send `sig` to the child when the thread that spawned it dies, so
/// a test process killed by its runner does not leave servers behind.
pub fn set_parent_death_signal(cmd: &mut Command, sig: libc::c_int) {
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn exited_by_sigterm(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(libc::SIGTERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_lie_below_the_ephemeral_range() {
        let Some(low) = ephemeral_start() else {
            return;
        };
        if low < TEST_PORTS.end + crate::seaweed::GRPC_OFFSET {
            return;
        }
        let held: Vec<TcpListener> = (0..20).map(|_| reserve_port().expect("port")).collect();
        for l in &held {
            let port = l.local_addr().expect("addr").port();
            assert!(TEST_PORTS.contains(&port), "{port} outside {TEST_PORTS:?}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_listening_socket_is_found_on_its_owner_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port));
        // PID 1 is not this test.
        assert!(!listens_on(1, port));
        drop(listener);
        assert!(!listens_on(std::process::id(), port));
    }

    #[test]
    fn extra_toml_merges_over_generated_tables() {
        let cfg = generate_config(
            1234,
            Path::new("/tmp/x"),
            "[storage]\nbackend = \"s3\"\n[uploads]\nexpire_after = \"1h\"\n",
        )
        .unwrap();
        let t: toml::Table = cfg.parse().unwrap();
        assert_eq!(t["listen"].as_str(), Some("127.0.0.1:1234"));
        assert_eq!(t["data_dir"].as_str(), Some("/tmp/x"));
        assert_eq!(t["storage"]["backend"].as_str(), Some("s3"));
        assert_eq!(t["uploads"]["expire_after"].as_str(), Some("1h"));
    }
    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-berth");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[tokio::test]
    async fn early_exit_reports_the_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let bin = script(dir.path(), "echo 'boom: bad config' >&2; exit 3");
        let err = BerthNode::start(&bin).await.unwrap_err().to_string();
        assert!(err.contains("exited with exit status: 3"), "{err}");
        assert!(err.contains("boom: bad config"), "{err}");
    }

    #[tokio::test]
    async fn never_ready_is_bounded_and_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let bin = script(dir.path(), &format!("echo $$ > {}; exec sleep 600", pidfile.display()));
        let opts = NodeOptions {
            ready_timeout: Some(Duration::from_millis(500)),
            ..NodeOptions::new(&bin)
        };
        let err = BerthNode::start_with(opts).await.unwrap_err().to_string();
        assert!(err.contains("not ready"), "{err}");
        let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        assert!(!pid_alive(pid), "child {pid} left running");
    }
}
