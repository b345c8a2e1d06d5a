//! A Docker daemon for push/pull tests: the one `DOCKER_HOST` names, or a private
//! `dockerd` with its own data root, exec root and socket under a short /tmp dir.
//!
//! The private daemon runs with `--bridge=none --iptables=false --ip6tables=false` so
//! it changes no host network state, and is stopped by its PID on drop (SIGTERM, then
//! SIGKILL), together with the containerd it manages.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use tempfile::TempDir;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::node::pid_alive;
use crate::node::signal;
use crate::node::tail_of_file;
use crate::tools::CMD_TIMEOUT;
use crate::tools::DOCKER;
use crate::tools::require_executable;
use crate::tools::run;

const DOCKERD_CANDIDATES: &[&str] = &["/usr/sbin/dockerd", "/usr/bin/dockerd"];
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A Docker daemon and a matching `docker` client invocation.
#[derive(Debug)]
pub struct Dockerd {
    /// "unix:///tmp/bdkXXXX/docker.sock" or `$DOCKER_HOST`.
    host: String,
    client: PathBuf,
    /// Private DOCKER_CONFIG (no credential helpers) and build contexts.
    client_dir: TempDir,
    child: Option<Child>,
    pid: u32,
    /// Daemon dir, only for a private daemon. Dropped last.
    dir: Option<TempDir>,
}

impl Dockerd {
    /// The daemon `DOCKER_HOST` names if set, otherwise a private one.
    pub async fn start() -> anyhow::Result<Dockerd> {
        match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.is_empty() => Self::external(host).await,
            _ => Self::start_private().await,
        }
    }

    /// Uses an already-running daemon; it is not stopped on drop.
    pub async fn external(host: String) -> anyhow::Result<Dockerd> {
        let d = Dockerd {
            host,
            client: require_executable(DOCKER)?,
            client_dir: client_dir()?,
            child: None,
            pid: 0,
            dir: None,
        };
        let mut cmd = d.docker(&["version"]);
        run(&mut cmd, Duration::from_secs(30))
            .await
            .with_context(|| format!("DOCKER_HOST={} does not answer", d.host))?;
        Ok(d)
    }

    /// Starts a private dockerd and waits (bounded) until its socket answers `/_ping`.
    pub async fn start_private() -> anyhow::Result<Dockerd> {
        let dockerd = DOCKERD_CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .map(Path::to_path_buf)
            .map_or_else(|| require_executable(DOCKERD_CANDIDATES[0]), Ok)?;
        let client = require_executable(DOCKER)?;
        // Short path: the socket path must stay under 108 bytes.
        let dir = tempfile::Builder::new().prefix("bdk").tempdir_in("/tmp")?;
        let d = dir.path();
        let sock = d.join("docker.sock");
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        let mut cmd = std::process::Command::new(&dockerd);
        cmd.arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .env_remove("DOCKER_HOST");
        // If the test process dies, let dockerd shut down gracefully (it stops its
        // containerd too).
        // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("spawning {}", dockerd.display()))?;
        let mut me = Dockerd {
            host: format!("unix://{}", sock.display()),
            client,
            client_dir: client_dir()?,
            pid: child.id(),
            child: Some(child),
            dir: Some(dir),
        };
        me.wait_ready(&sock).await?;
        Ok(me)
    }

    async fn wait_ready(&mut self, sock: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("dockerd exited with {status} while starting\n{}", self.log_tail(40));
            }
            if ping(sock).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("dockerd not ready within {READY_TIMEOUT:?}\n{}", self.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The daemon address, for `docker -H`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// PID of the private daemon (0 for an external one).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `/usr/bin/docker -H <host> <args>` with a private DOCKER_CONFIG and the classic
    /// builder (BuildKit would try to pull its frontend).
    pub fn docker(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.client);
        cmd.env("DOCKER_CONFIG", self.client_dir.path().join("config"))
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_HOST")
            .arg("-H")
            .arg(&self.host)
            .args(args);
        cmd
    }

    /// `docker <args>`, bounded, must succeed; returns stdout.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let mut cmd = self.docker(args);
        run(&mut cmd, CMD_TIMEOUT).await.map(|o| o.stdout)
    }

    /// Builds `FROM scratch` + `files` (path, content, mode) and tags it `tag`
    /// (e.g. "127.0.0.1:PORT/team/app:v1"). No pulls happen. Returns the image ID.
    pub async fn build_scratch_image(
        &self,
        tag: &str,
        files: &[(&str, &[u8], u32)],
        cmd: Option<&[&str]>,
    ) -> anyhow::Result<String> {
        let ctx = tempfile::Builder::new()
            .prefix("ctx")
            .tempdir_in(self.client_dir.path())?;
        let root = ctx.path().join("rootfs");
        std::fs::create_dir_all(&root)?;
        for (path, content, mode) in files {
            use std::os::unix::fs::PermissionsExt;
            let p = root.join(path.trim_start_matches('/'));
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&p, content)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
        }
        let mut dockerfile = String::from("FROM scratch\nCOPY rootfs/ /\n");
        if let Some(cmd) = cmd {
            dockerfile.push_str(&format!("CMD {}\n", serde_json::to_string(cmd)?));
        }
        std::fs::write(ctx.path().join("Dockerfile"), dockerfile)?;
        let ctx_path = ctx.path().to_str().context("non-UTF-8 temp path")?;
        self.run(&["build", "--network", "none", "-q", "-t", tag, ctx_path])
            .await?;
        let id = self.run(&["image", "inspect", "--format", "{{.Id}}", tag]).await?;
        Ok(String::from_utf8(id)?.trim().to_string())
    }

    /// Last lines of the private daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        match &self.dir {
            Some(dir) => tail_of_file(&dir.path().join("dockerd.log"), lines),
            None => String::from("<external daemon: no log>"),
        }
    }

    fn stop_private(&mut self) {
        let Some(dir) = self.dir.as_ref() else {
            return;
        };
        let containerd_pid = std::fs::read_to_string(dir.path().join("exec/containerd/containerd.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        // dockerd stops the containerd it manages; make sure of it after a SIGKILL.
        if let Some(pid) = containerd_pid {
            let deadline = Instant::now() + Duration::from_secs(5);
            while pid_alive(pid) && Instant::now() < deadline {
                signal(pid, libc::SIGTERM);
                std::thread::sleep(Duration::from_millis(100));
            }
            if pid_alive(pid) {
                signal(pid, libc::SIGKILL);
            }
        }
        unmount_under(dir.path());
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop_private();
        if std::env::var_os("BERTH_KEEP_TEST_DIRS").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("berth-testkit: kept dockerd dir {}", dir.keep().display());
        }
    }
}

fn client_dir() -> anyhow::Result<TempDir> {
    let dir = tempfile::Builder::new().prefix("bdkc").tempdir_in("/tmp")?;
    std::fs::create_dir_all(dir.path().join("config"))?;
    std::fs::write(dir.path().join("config").join("config.json"), "{}")?;
    Ok(dir)
}

/// `GET /_ping` on the daemon socket answers "OK".
async fn ping(sock: &Path) -> bool {
    let attempt = async {
        let mut s = tokio::net::UnixStream::connect(sock).await.ok()?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n").await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        Some(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(true))
    )
}

/// Lazily unmounts anything still mounted under `dir` (left by a killed daemon).
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: c is a valid NUL-terminated path.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Regular files of every layer in a `docker save` archive, lowest layer first.
pub fn saved_image_files(saved: &[u8]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use std::io::Read;
    let mut entries = std::collections::HashMap::new();
    let mut archive = tar::Archive::new(saved);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        entries.insert(path, content);
    }
    let manifest: serde_json::Value = serde_json::from_slice(
        entries
            .get("manifest.json")
            .context("no manifest.json in docker save archive")?,
    )?;
    let mut files = Vec::new();
    for layer in manifest[0]["Layers"]
        .as_array()
        .context("manifest.json has no Layers")?
    {
        let name = layer.as_str().context("layer name")?;
        let blob = entries
            .get(name)
            .with_context(|| format!("layer {name} missing from archive"))?;
        files.extend(crate::image::layer_files(blob)?);
    }
    Ok(files)
}
