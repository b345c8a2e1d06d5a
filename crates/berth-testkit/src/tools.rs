//! Bounded command execution and the real clients, each with private configuration.
//!
//! Tools are found at their Debian paths (another binary of the same name may come
//! first in PATH) or in `$BERTH_TOOLS/venv`; a missing tool is an error that names
//! `scripts/install-test-deps.sh`, never a skipped test.

use std::path::Path;
use std::path::PathBuf;
use std::process::Output;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use tempfile::TempDir;
use tokio::process::Command;

/// Default bound for one client command (below nextest's 300 s hard bound, so a hung
/// client fails with its own output rather than a runner kill).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(120);

pub const SKOPEO: &str = "/usr/bin/skopeo";
pub const PODMAN: &str = "/usr/bin/podman";
pub const UMOCI: &str = "/usr/bin/umoci";
pub const DOCKER: &str = "/usr/bin/docker";
pub const BUSYBOX: &str = "/bin/busybox";

/// `$BERTH_TOOLS`, default `/var/cache/berth-tools`.
pub fn berth_tools_dir() -> PathBuf {
    std::env::var_os("BERTH_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth-tools"))
}

/// The venv's python (`$BERTH_TOOLS/venv/bin/python`).
pub fn venv_python() -> anyhow::Result<PathBuf> {
    require_executable(berth_tools_dir().join("venv").join("bin").join("python"))
}

/// `path` if it is an executable file; otherwise an error naming the install script.
pub fn require_executable(path: impl AsRef<Path>) -> anyhow::Result<PathBuf> {
    let path = path.as_ref();
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(path.to_path_buf()),
        _ => bail!(
            "required test tool {} is missing: run `sudo scripts/install-test-deps.sh` \
             (tests never skip a missing client)",
            path.display()
        ),
    }
}

/// Runs `cmd` (stdin closed, output captured) for at most `timeout`; the child is
/// killed if the bound passes. Errors unless it exits 0; the error shows the command,
/// its status, stdout and stderr.
pub async fn run(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let out = run_unchecked(cmd, timeout).await?;
    if !out.status.success() {
        bail!("{}", describe_output(cmd, &out));
    }
    Ok(out)
}

/// Like [`run`] but requires a non-zero exit (for commands expected to fail).
pub async fn run_expect_failure(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let out = run_unchecked(cmd, timeout).await?;
    if out.status.success() {
        bail!("expected failure, but it succeeded: {}", describe_output(cmd, &out));
    }
    Ok(out)
}

/// Runs `cmd` bounded by `timeout`, whatever its exit status.
pub async fn run_unchecked(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("spawning {:?}", cmd.as_std()))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => Ok(out.with_context(|| format!("waiting for {:?}", cmd.as_std()))?),
        // Dropping the future drops the child, which kills it (kill_on_drop).
        Err(_) => bail!("{:?} did not finish within {timeout:?}; killed", cmd.as_std()),
    }
}

/// Human-readable account of a finished command.
pub fn describe_output(cmd: &Command, out: &Output) -> String {
    format!(
        "{:?} exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        cmd.as_std(),
        out.status,
        tail(&String::from_utf8_lossy(&out.stdout), 60),
        tail(&String::from_utf8_lossy(&out.stderr), 60),
    )
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Private containers config shared by skopeo and podman: registries.conf with no
/// search registries (so no name resolves outside loopback), an accept-anything
/// policy, an empty auth file and a private temp dir.
#[derive(Debug)]
struct ContainersConf {
    dir: TempDir,
}

impl ContainersConf {
    fn new(prefix: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let d = dir.path();
        std::fs::write(
            d.join("registries.conf"),
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
        )?;
        std::fs::write(
            d.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        std::fs::write(d.join("auth.json"), "{}")?;
        std::fs::create_dir_all(d.join("registries.d"))?;
        std::fs::create_dir_all(d.join("tmp"))?;
        std::fs::create_dir_all(d.join("xdg-runtime"))?;
        Ok(ContainersConf { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn apply_env(&self, cmd: &mut Command) {
        cmd.env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .env("REGISTRY_AUTH_FILE", self.path("auth.json"))
            .env("TMPDIR", self.path("tmp"))
            .env("XDG_RUNTIME_DIR", self.path("xdg-runtime"))
            .env_remove("CONTAINERS_CONF")
            .env_remove("CONTAINERS_STORAGE_CONF")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY");
    }
}

/// Path of the shared blob-info cache that c/image keeps for root. It remembers where
/// blobs were seen and makes skopeo/podman try cross-repo mounts; removing it makes
/// request sequences reproducible. Removing it under a running client is harmless.
pub const BLOB_INFO_CACHE: &str = "/var/lib/containers/cache/blob-info-cache-v1.boltdb";

pub fn remove_blob_info_cache() {
    let _ = std::fs::remove_file(BLOB_INFO_CACHE);
}

/// skopeo with private registries.conf, policy, auth file and temp dir.
#[derive(Debug)]
pub struct Skopeo {
    conf: ContainersConf,
    bin: PathBuf,
}

impl Skopeo {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Skopeo {
            bin: require_executable(SKOPEO)?,
            conf: ContainersConf::new("berth-skopeo-")?,
        })
    }

    /// `skopeo --policy … --registries.d … --tmpdir …` plus private env; add the
    /// subcommand and its flags.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        self.conf.apply_env(&mut cmd);
        cmd.arg("--policy")
            .arg(self.conf.path("policy.json"))
            .arg("--registries.d")
            .arg(self.conf.path("registries.d"))
            .arg("--tmpdir")
            .arg(self.conf.path("tmp"))
            .arg("--command-timeout")
            .arg(format!("{}s", CMD_TIMEOUT.as_secs()));
        cmd
    }

    /// `skopeo <args>`, bounded, must succeed; returns stdout.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let mut cmd = self.cmd();
        cmd.args(args);
        Ok(run(&mut cmd, CMD_TIMEOUT).await?.stdout)
    }

    /// `skopeo copy [extra…] SRC DST` against plain-http registries.
    pub async fn copy(&self, src: &str, dst: &str, extra: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["copy", "--src-tls-verify=false", "--dest-tls-verify=false"];
        args.extend_from_slice(extra);
        args.push(src);
        args.push(dst);
        self.run(&args).await.map(|_| ())
    }
}

/// podman with a private root, runroot, tmpdir and vfs storage driver.
#[derive(Debug)]
pub struct Podman {
    conf: ContainersConf,
    bin: PathBuf,
}

impl Podman {
    pub fn new() -> anyhow::Result<Self> {
        let conf = ContainersConf::new("berth-podman-")?;
        for d in ["root", "runroot", "libpod-tmp"] {
            std::fs::create_dir_all(conf.path(d))?;
        }
        Ok(Podman {
            bin: require_executable(PODMAN)?,
            conf,
        })
    }

    /// `podman --root … --runroot … --tmpdir … --storage-driver vfs`; add the rest.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        self.conf.apply_env(&mut cmd);
        cmd.arg("--root")
            .arg(self.conf.path("root"))
            .arg("--runroot")
            .arg(self.conf.path("runroot"))
            .arg("--tmpdir")
            .arg(self.conf.path("libpod-tmp"))
            .arg("--storage-driver")
            .arg("vfs")
            .arg("--events-backend")
            .arg("none")
            .arg("--cgroup-manager")
            .arg("cgroupfs");
        cmd
    }

    /// `podman <args>`, bounded, must succeed; returns stdout.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let mut cmd = self.cmd();
        cmd.args(args);
        Ok(run(&mut cmd, CMD_TIMEOUT).await?.stdout)
    }

    /// A scratch dir inside this podman's private dir (for build contexts).
    pub fn scratch_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.conf.path(name);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Best effort: vfs "mounts" are plain directories, but unmount anyway so the
        // storage is consistent if the dir is kept for debugging.
        let _ = std::process::Command::new(&self.bin)
            .arg("--root")
            .arg(self.conf.path("root"))
            .arg("--runroot")
            .arg(self.conf.path("runroot"))
            .arg("--storage-driver")
            .arg("vfs")
            .args(["image", "unmount", "--all"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// oras-py in `$BERTH_TOOLS/venv`: runs Python scripts the test writes.
#[derive(Debug)]
pub struct Oras {
    python: PathBuf,
    dir: TempDir,
}

impl Oras {
    pub fn new() -> anyhow::Result<Self> {
        let python = venv_python()?;
        let dir = tempfile::Builder::new().prefix("berth-oras-").tempdir()?;
        Ok(Oras { python, dir })
    }

    /// Working dir for the script (files to push, pull output).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `script` to the work dir and runs it there with `args`; must exit 0.
    pub async fn run_script(&self, script: &str, args: &[&str]) -> anyhow::Result<Output> {
        let path = self.dir.path().join("script.py");
        std::fs::write(&path, script)?;
        let mut cmd = Command::new(&self.python);
        cmd.arg(&path)
            .args(args)
            .current_dir(self.dir.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("HOME", self.dir.path())
            .env("NO_PROXY", "*")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY");
        run(&mut cmd, CMD_TIMEOUT).await
    }
}
