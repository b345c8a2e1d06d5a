//! Resident memory of the servers under test, from `/proc/<pid>/status`.
//!
//! A sampler task reads `VmRSS` and `VmHWM` of every tracked PID every 100 ms. Per
//! scenario, [`RssTracker::begin_window`] resets the kernel's high-water mark
//! (`echo 5 > /proc/<pid>/clear_refs`, root or the process owner) so `VmHWM` read at
//! [`RssTracker::end_window`] is the peak of that scenario alone; if the reset is not
//! allowed, the sampled maximum of `VmRSS` is used instead. The run-wide peak is the
//! maximum of everything seen.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// `(VmRSS, VmHWM)` in KiB of `pid`, `None` if it is gone or unreadable.
pub fn read_status(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(&text)
}

fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) `pid` has used so far, seconds; `None` if it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse_cpu_ticks(&text).map(|t| t as f64 / ticks.max(1) as f64)
}

/// CPU time all of `pids` have used so far, seconds (those gone count nothing).
pub fn cpu_seconds_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| cpu_seconds(p)).sum()
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name
/// (field 2) is in parentheses and may hold spaces, so fields count from its end.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resets `VmHWM` of `pid` to its current RSS. False if not allowed or gone.
pub fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

#[derive(Debug, Default, Clone, Copy)]
struct PidStats {
    overall_kib: u64,
    window_kib: u64,
    window_start_kib: u64,
    window_reset: bool,
}

/// RSS of one measurement window, MiB, summed over its processes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// RSS when the window began.
    pub start_mib: f64,
    /// Peak RSS during the window.
    pub peak_mib: f64,
}

/// Tracks peak RSS of a set of PIDs; cheap to clone.
#[derive(Clone, Default)]
pub struct RssTracker {
    inner: Arc<Mutex<HashMap<u32, PidStats>>>,
}

impl RssTracker {
    pub fn new() -> RssTracker {
        RssTracker::default()
    }

    pub fn track(&self, pid: u32) {
        if let Ok(mut map) = self.inner.lock() {
            map.entry(pid).or_default();
        }
        self.sample_one(pid);
    }

    /// Samples every tracked PID every `every` until the returned handle is aborted.
    pub fn spawn_sampler(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            // Bounded: the owner aborts it; the count bound is a week of samples.
            for _ in 0..(7 * 24 * 3600 * 10u64) {
                tokio::time::sleep(every).await;
                let pids: Vec<u32> = match me.inner.lock() {
                    Ok(map) => map.keys().copied().collect(),
                    Err(_) => return,
                };
                for pid in pids {
                    me.sample_one(pid);
                }
            }
        })
    }

    fn sample_one(&self, pid: u32) {
        let Some((rss, hwm)) = read_status(pid) else {
            return;
        };
        if let Ok(mut map) = self.inner.lock()
            && let Some(s) = map.get_mut(&pid)
        {
            s.overall_kib = s.overall_kib.max(rss).max(hwm);
            // Before a successful reset, VmHWM is the lifetime peak: only RSS counts.
            let in_window = if s.window_reset { rss.max(hwm) } else { rss };
            s.window_kib = s.window_kib.max(in_window);
        }
    }

    /// Starts a measurement window for `pids`.
    pub fn begin_window(&self, pids: &[u32]) {
        for &pid in pids {
            let reset = reset_hwm(pid);
            let current = read_status(pid).map(|(rss, _)| rss).unwrap_or(0);
            if let Ok(mut map) = self.inner.lock() {
                let s = map.entry(pid).or_default();
                s.window_reset = reset;
                s.window_kib = current;
                s.window_start_kib = current;
            }
        }
    }

    /// Start and peak RSS summed over `pids` since `begin_window` (the sum of
    /// per-process peaks: an upper bound when there are several processes).
    pub fn end_window(&self, pids: &[u32]) -> Option<Window> {
        let (mut peak, mut start) = (0u64, 0u64);
        let mut any = false;
        for &pid in pids {
            self.sample_one(pid);
            if let Ok(map) = self.inner.lock()
                && let Some(s) = map.get(&pid)
            {
                peak += s.window_kib;
                start += s.window_start_kib;
                any = true;
            }
        }
        any.then(|| Window {
            start_mib: start as f64 / 1024.0,
            peak_mib: peak as f64 / 1024.0,
        })
    }

    /// Run-wide peak RSS (MiB) of `pid`.
    pub fn overall_mib(&self, pid: u32) -> Option<f64> {
        self.sample_one(pid);
        let map = self.inner.lock().ok()?;
        map.get(&pid).map(|s| s.overall_kib as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(parse_status(text), Some((1024, 2048)));
        let stat = "42 (tokio rt) S 1 42 42 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 4 0 5 1 1";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn own_process_is_readable_and_window_sees_it() {
        let me = std::process::id();
        let (rss, hwm) = read_status(me).expect("own status");
        assert!(cpu_seconds(me).is_some());
        assert!(rss > 0 && hwm >= rss);
        let t = RssTracker::new();
        t.track(me);
        t.begin_window(&[me]);
        let w = t.end_window(&[me]).expect("window");
        assert!(w.peak_mib > 0.0 && w.peak_mib >= w.start_mib);
        assert!(t.overall_mib(me).unwrap() >= w.peak_mib - 1.0);
    }
}
