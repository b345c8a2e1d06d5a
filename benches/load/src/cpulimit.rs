//! A CPU budget per server process, enforced by a cgroup (`--server-cpus`).
//!
//! On one small machine, three nodes share the cores one node alone would use, so a
//! cluster's request rate cannot exceed one node's however well it scales. Giving
//! every server process the same budget (say a quarter of a core) emulates a machine
//! per node: one node gets 0.25 cores, three nodes 0.75, and the client and SeaweedFS
//! keep the rest. Each process gets its own cgroup with a CFS quota: cgroup v2
//! (`cpu.max`) where the cpu controller is on the unified hierarchy, else v1
//! (`cpu.cfs_quota_us` under `/sys/fs/cgroup/cpu`). Needs root.

use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;

/// CFS period of the quotas.
const PERIOD_US: u64 = 100_000;

/// Cgroups made for a system's processes; removed on drop (after the processes
/// ended: a cgroup with members cannot be removed).
#[derive(Debug, Default)]
pub struct CpuLimit {
    dirs: Vec<PathBuf>,
}

/// Where and how to make a limited cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hierarchy {
    /// cgroup v2: the parent directory, whose `cgroup.subtree_control` enables cpu.
    V2(PathBuf),
    /// cgroup v1: the cpu controller's mount.
    V1(PathBuf),
}

fn find_hierarchy(root: &Path) -> anyhow::Result<Hierarchy> {
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "cpu") {
        return Ok(Hierarchy::V2(root.to_path_buf()));
    }
    let v1 = root.join("cpu");
    if v1.join("cpu.cfs_quota_us").exists() {
        return Ok(Hierarchy::V1(v1));
    }
    anyhow::bail!(
        "no cgroup cpu controller under {} (neither v2 cpu.max nor v1 cpu.cfs_quota_us)",
        root.display()
    )
}

/// The quota, in microseconds per period, of `cpus` cores.
fn quota_us(cpus: f64) -> anyhow::Result<u64> {
    anyhow::ensure!(
        cpus.is_finite() && cpus >= 0.01,
        "a CPU budget of {cpus} cores is not usable"
    );
    // 1 ms per period is the kernel's minimum.
    Ok(((cpus * PERIOD_US as f64).round() as u64).max(1000))
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// Put each of `pids` in a cgroup of its own limited to `cpus` cores.
pub fn limit(pids: &[u32], cpus: f64) -> anyhow::Result<CpuLimit> {
    let quota = quota_us(cpus)?;
    let hierarchy = find_hierarchy(Path::new("/sys/fs/cgroup"))?;
    let mut made = CpuLimit::default();
    for &pid in pids {
        let name = format!("berth-bench-{}-{pid}", std::process::id());
        match &hierarchy {
            Hierarchy::V2(parent) => {
                write(&parent.join("cgroup.subtree_control"), "+cpu")?;
                let dir = parent.join(name);
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                made.dirs.push(dir.clone());
                write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
                write(&dir.join("cgroup.procs"), &pid.to_string())?;
            }
            Hierarchy::V1(mount) => {
                let dir = mount.join(name);
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                made.dirs.push(dir.clone());
                write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(&dir.join("cgroup.procs"), &pid.to_string())?;
            }
        }
    }
    Ok(made)
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // The processes were stopped just before; give the kernel a moment to
            // take exited ones out.
            let mut removed = false;
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    removed = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if !removed {
                tracing::warn!(cgroup = %dir.display(), "could not remove the CPU-budget cgroup");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_become_quotas_per_period() {
        assert_eq!(quota_us(0.25).unwrap(), 25_000);
        assert_eq!(quota_us(2.0).unwrap(), 200_000);
        assert!(quota_us(0.005).is_err());
        assert!(quota_us(f64::NAN).is_err());
    }

    #[test]
    fn the_hierarchy_is_v2_when_its_cpu_controller_is_there_else_v1() {
        let root = tempfile::tempdir().unwrap();
        assert!(find_hierarchy(root.path()).is_err());
        std::fs::create_dir(root.path().join("cpu")).unwrap();
        std::fs::write(root.path().join("cpu/cpu.cfs_quota_us"), "-1").unwrap();
        assert_eq!(
            find_hierarchy(root.path()).unwrap(),
            Hierarchy::V1(root.path().join("cpu"))
        );
        std::fs::write(root.path().join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        assert_eq!(
            find_hierarchy(root.path()).unwrap(),
            Hierarchy::V2(root.path().to_path_buf())
        );
    }
}
