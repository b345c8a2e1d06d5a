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
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

use anyhow::Context;

/// The CFS period of the quotas by default: the kernel's own default.
pub const DEFAULT_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

/// Numbers the cgroups this process makes (their names must differ).
static NEXT: AtomicUsize = AtomicUsize::new(0);

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

/// The CFS period in microseconds: the kernel takes 1 ms to 1 s.
fn period_us(period: std::time::Duration) -> anyhow::Result<u64> {
    let us = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
    anyhow::ensure!(
        (1_000..=1_000_000).contains(&us),
        "a CFS period of {period:?} is not usable (1ms to 1s)"
    );
    Ok(us)
}

/// The quota, in microseconds per period of `period_us`, of `cpus` cores.
fn quota_us(cpus: f64, period_us: u64) -> anyhow::Result<u64> {
    anyhow::ensure!(
        cpus.is_finite() && cpus >= 0.01,
        "a CPU budget of {cpus} cores is not usable"
    );
    // 1 ms per period is the kernel's minimum.
    Ok(((cpus * period_us as f64).round() as u64).max(1000))
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// Make `count` cgroups, each limited to `cpus` cores granted per CFS `period` (a
/// process that has used its quota waits for the next period). The servers start
/// inside them ([`CpuLimit::dirs`], `berth_testkit::node::start_in_cgroup`), as in
/// a container: a server sizes its thread pools by the budget it sees at start.
pub fn prepare(count: usize, cpus: f64, period: std::time::Duration) -> anyhow::Result<CpuLimit> {
    let period = period_us(period)?;
    let quota = quota_us(cpus, period)?;
    let hierarchy = find_hierarchy(Path::new("/sys/fs/cgroup"))?;
    let mut made = CpuLimit::default();
    for _ in 0..count {
        let name = format!(
            "berth-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        match &hierarchy {
            Hierarchy::V2(parent) => {
                write(&parent.join("cgroup.subtree_control"), "+cpu")?;
                let dir = parent.join(name);
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                made.dirs.push(dir.clone());
                write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
            }
            Hierarchy::V1(mount) => {
                let dir = mount.join(name);
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                made.dirs.push(dir.clone());
                write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
        }
    }
    Ok(made)
}

/// CFS periods of a cgroup so far, and how many of them ended throttled (the
/// group had used its whole quota).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Periods {
    pub total: u64,
    pub throttled: u64,
}

impl CpuLimit {
    /// The cgroups, one per server.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The periods of each limited process's cgroup (`cpu.stat`, the same keys in
    /// v1 and v2); a cgroup whose counters cannot be read is left out.
    pub fn periods(&self) -> Vec<Periods> {
        self.dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cpu.stat")).ok())
            .map(|text| parse_periods(&text))
            .collect()
    }
}

fn parse_periods(cpu_stat: &str) -> Periods {
    let mut p = Periods::default();
    for line in cpu_stat.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(Ok(v))) = (it.next(), it.next().map(str::parse::<u64>)) else {
            continue;
        };
        match key {
            "nr_periods" => p.total = v,
            "nr_throttled" => p.throttled = v,
            _ => {}
        }
    }
    p
}

/// The smallest share of throttled periods between two readings of the same
/// cgroups: near 1 when every server used its whole budget (saturated), lower when
/// one of them sometimes waited for work.
pub fn least_throttled_share(before: &[Periods], after: &[Periods]) -> Option<f64> {
    before
        .iter()
        .zip(after)
        .filter_map(|(b, a)| {
            let total = a.total.checked_sub(b.total)?;
            let throttled = a.throttled.checked_sub(b.throttled)?;
            (total > 0).then(|| throttled as f64 / total as f64)
        })
        .reduce(f64::min)
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
        let period = period_us(DEFAULT_PERIOD).unwrap();
        assert_eq!(period, 100_000);
        assert_eq!(quota_us(0.25, period).unwrap(), 25_000);
        assert_eq!(quota_us(2.0, period).unwrap(), 200_000);
        assert_eq!(quota_us(0.25, 10_000).unwrap(), 2_500);
        assert_eq!(quota_us(0.05, 10_000).unwrap(), 1_000, "the kernel's minimum quota");
        assert!(quota_us(0.005, period).is_err());
        assert!(quota_us(f64::NAN, period).is_err());
        assert!(period_us(std::time::Duration::from_micros(500)).is_err());
        assert!(period_us(std::time::Duration::from_secs(2)).is_err());
    }

    #[test]
    fn throttled_periods_are_read_from_either_version_and_compared() {
        let v2 = "usage_usec 81\nuser_usec 50\nsystem_usec 31\nnr_periods 200\nnr_throttled 150\nthrottled_usec 9\n";
        let v1 = "nr_periods 40\nnr_throttled 10\nthrottled_time 123456\n";
        assert_eq!(
            parse_periods(v2),
            Periods {
                total: 200,
                throttled: 150
            }
        );
        assert_eq!(
            parse_periods(v1),
            Periods {
                total: 40,
                throttled: 10
            }
        );
        let before = [
            Periods {
                total: 100,
                throttled: 90,
            },
            Periods {
                total: 100,
                throttled: 50,
            },
        ];
        let after = [
            Periods {
                total: 200,
                throttled: 190,
            },
            Periods {
                total: 200,
                throttled: 110,
            },
        ];
        assert_eq!(least_throttled_share(&before, &after), Some(0.6));
        assert_eq!(least_throttled_share(&before, &before), None, "no period passed");
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

    #[test]
    fn a_process_started_in_its_cgroup_is_in_it_from_its_first_instruction() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: making cgroups needs root");
            return;
        }
        let limit = prepare(2, 0.25, DEFAULT_PERIOD).unwrap();
        assert_eq!(limit.dirs().len(), 2);
        assert_ne!(limit.dirs()[0], limit.dirs()[1]);
        let dir = &limit.dirs()[1];
        let mut cmd = std::process::Command::new("cat");
        cmd.arg("/proc/self/cgroup");
        berth_testkit::node::start_in_cgroup(&mut cmd, dir).unwrap();
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        let name = dir.file_name().unwrap().to_str().unwrap();
        let cgroups = String::from_utf8(out.stdout).unwrap();
        // The v1 cpu controller's line where there is one, else the unified one.
        let cpu = (cgroups.lines())
            .find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == "cpu")))
            .or_else(|| cgroups.lines().find(|l| l.starts_with("0::")))
            .unwrap();
        assert!(cpu.ends_with(&format!("/{name}")), "{cgroups}");
        // The budget is the one asked for.
        let quota = std::fs::read_to_string(dir.join("cpu.max"))
            .or_else(|_| std::fs::read_to_string(dir.join("cpu.cfs_quota_us")))
            .unwrap();
        assert!(quota.starts_with("25000"), "{quota}");

        let mut cmd = std::process::Command::new("true");
        berth_testkit::node::start_in_cgroup(&mut cmd, &dir.join("missing")).unwrap();
        assert!(
            cmd.status().is_err(),
            "a child that cannot join its cgroup must not run"
        );
    }
}
