//! The phases of one run, in order: the data ([`prepare_data`]), the physical
//! references ([`physical_references`]), the set-up of every system ([`Setup::start`]),
//! the scenarios on every system ([`measure_all`]; with rounds, the systems
//! interleaved within each round and each system's median round kept), the
//! teardown ([`Setup::stop`]) and the report ([`write_report`]).

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use berth_testkit::SeaweedFs;
use berth_testkit::seaweed::S3Access;

use crate::cpulimit;
use crate::oci::Pusher;
use crate::physical;
use crate::physical::Physical;
use crate::report;
use crate::report::Report;
use crate::report::SystemInfo;
use crate::rss;
use crate::rss::RssTracker;
use crate::scenarios;
use crate::scenarios::Balance;
use crate::scenarios::Dataset;
use crate::scenarios::Params;
use crate::scenarios::Scenario;
use crate::stats::Measurement;
use crate::systems;
use crate::systems::LaunchSettings;
use crate::systems::Running;
use crate::systems::SystemKind;
use crate::targets::Target;

/// What one run does, from the command line.
pub struct Plan {
    pub scenarios: Vec<Scenario>,
    pub kinds: Vec<SystemKind>,
    pub params: Params,
    pub settings: LaunchSettings,
    /// Rounds of every scenario (1 to 9).
    pub rounds: u32,
    pub physical_reps: usize,
    pub out_path: PathBuf,
    pub targets: Vec<Target>,
}

/// The data every system gets, generated off the runtime's workers.
pub async fn prepare_data(params: &Params, nonce: u64) -> anyhow::Result<Arc<Dataset>> {
    println!(
        "preparing data (layers of {}, {}, {}) …",
        scenarios::size(params.small_blob),
        scenarios::size(params.large_blob),
        scenarios::size(params.push_size)
    );
    let p = params.clone();
    let data = tokio::task::spawn_blocking(move || Dataset::generate(&p, nonce))
        .await
        .context("data generation task")??;
    Ok(Arc::new(data))
}

/// sha256, loopback copy, disk and page-cache send of the big push's bytes, before
/// any server runs.
pub async fn physical_references(data: &Arc<Dataset>, reps: usize) -> anyhow::Result<Physical> {
    println!("physical references ({reps} × {}) …", scenarios::size(data.big.size()));
    let d = data.clone();
    let physical = tokio::task::spawn_blocking(move || physical::measure(&d.big.bytes, reps))
        .await
        .context("physical reference task")??;
    println!(
        "  sha256: {:.0} MiB/s, loopback copy: {:.0} MiB/s, disk write+fsync: {:.0} MiB/s",
        physical.sha256_mib_per_s, physical.loopback_mib_per_s, physical.disk_write_fsync_mib_per_s
    );
    Ok(physical)
}

/// One started system with its data in place.
pub struct Live {
    pub kind: SystemKind,
    pub running: Running,
    /// Dropped after `running`: its cgroups go once the processes are gone.
    pub cpu_limit: Option<cpulimit::CpuLimit>,
}

/// Every started process of a run, and what became of the systems that did not start.
pub struct Setup {
    pub live: Vec<Live>,
    /// Systems that are not available or failed to start (the others are added at
    /// [`Setup::stop`]).
    pub infos: Vec<SystemInfo>,
    pub seaweed: Option<SeaweedFs>,
    pub rss: RssTracker,
    sampler: tokio::task::JoinHandle<()>,
    pub pusher: Pusher,
}

fn system_info(k: SystemKind, status: &str, note: Option<String>) -> SystemInfo {
    SystemInfo {
        name: k.name().into(),
        description: k.describe().into(),
        status: status.into(),
        note,
        pids: vec![],
        peak_rss_mib: None,
    }
}

impl Setup {
    /// Starts SeaweedFS when an S3 system is selected, then each available system in
    /// turn, pushing the data to it; a system that cannot start is reported, the
    /// others still run.
    pub async fn start(plan: &Plan, data: &Dataset) -> anyhow::Result<Setup> {
        let mut infos = Vec::new();
        let available = available_systems(plan, &mut infos);
        let rss = RssTracker::new();
        let sampler = rss.spawn_sampler(Duration::from_millis(100));
        let (seaweed, s3_error) = start_seaweed(&available, &rss).await;
        let s3 = seaweed.as_ref().map(SeaweedFs::access);
        let mut setup = Setup {
            live: Vec::new(),
            infos,
            seaweed,
            rss,
            sampler,
            pusher: Pusher::new(plan.params.request_timeout)?,
        };
        for &k in &available {
            if k.uses_s3() && s3.is_none() {
                let why = s3_error.clone().unwrap_or_else(|| "no SeaweedFS".into());
                setup.infos.push(system_info(k, "failed", Some(why)));
                continue;
            }
            match setup.start_system(k, plan, s3.as_ref(), data).await {
                Ok(live) => setup.live.push(live),
                Err(why) => setup.infos.push(system_info(k, "failed", Some(why))),
            }
        }
        Ok(setup)
    }

    /// Starts `k` in its CPU budget (if any) and pushes the data; why not, if not.
    async fn start_system(
        &self,
        k: SystemKind,
        plan: &Plan,
        s3: Option<&S3Access>,
        data: &Dataset,
    ) -> Result<Live, String> {
        println!("starting {} ({}) …", k.name(), k.describe());
        let cpu_limit = plan
            .params
            .server_cpus
            .map(|c| cpulimit::prepare(k.nodes(), c, plan.params.cpu_period))
            .transpose()
            .map_err(|e| {
                println!("  failed: CPU budget: {e:#}");
                format!("CPU budget: {e:#}")
            })?;
        let cgroups = cpu_limit.as_ref().map(|l| l.dirs()).unwrap_or_default();
        let mut running = systems::start(k, &plan.settings, s3, cgroups).await.map_err(|e| {
            println!("  failed: {e:#}");
            format!("{e:#}")
        })?;
        for &pid in &running.server_pids {
            self.rss.track(pid);
        }
        let t0 = Instant::now();
        match scenarios::prepare(&running.endpoints, data, &self.pusher).await {
            Ok(()) => {
                println!("  pushed and verified the data in {:.1} s", t0.elapsed().as_secs_f64());
                Ok(Live {
                    kind: k,
                    running,
                    cpu_limit,
                })
            }
            Err(e) => {
                println!("  preparing data failed: {e:#}");
                let why = format!("preparing data: {e:#}\n{}", running.log_hint());
                let _ = running.stop().await;
                Err(why)
            }
        }
    }

    /// Stops every process by PID, gracefully, and keeps SeaweedFS's log next to
    /// the report (its temp dir does not outlive the run, and a failed S3 request
    /// is only explained there).
    pub async fn stop(mut self, kinds: &[SystemKind], out_path: &Path) -> Stopped {
        let seaweed_peak = self.seaweed.as_ref().and_then(|fs| self.rss.overall_mib(fs.pid()));
        for mut l in std::mem::take(&mut self.live) {
            let peak = l
                .running
                .server_pids
                .iter()
                .filter_map(|&p| self.rss.overall_mib(p))
                .reduce(|a, b| a + b);
            let stop = l.running.stop().await;
            self.infos.push(SystemInfo {
                pids: l.running.server_pids.clone(),
                peak_rss_mib: peak,
                ..system_info(l.kind, "ran", stop.err().map(|e| format!("stop: {e:#}")))
            });
        }
        let seaweed_log = self.seaweed.as_ref().and_then(|fs| {
            let dst = out_path.with_extension("seaweedfs.log");
            match fs.keep_log(&dst) {
                Ok(()) => Some(dst),
                Err(e) => {
                    eprintln!("berth-bench: SeaweedFS's log not kept: {e:#}");
                    None
                }
            }
        });
        if let Some(mut fs) = self.seaweed.take()
            && let Err(e) = fs.stop().await
        {
            eprintln!("berth-bench: stopping SeaweedFS: {e:#}");
        }
        self.sampler.abort();
        self.infos
            .sort_by_key(|i| kinds.iter().position(|k| k.name() == i.name));
        Stopped {
            infos: self.infos,
            seaweed_peak,
            seaweed_log,
        }
    }
}

/// What is left of a run's systems once every process is stopped.
pub struct Stopped {
    pub infos: Vec<SystemInfo>,
    pub seaweed_peak: Option<f64>,
    pub seaweed_log: Option<PathBuf>,
}

/// The selected systems that can run here; the others go to `infos`.
fn available_systems(plan: &Plan, infos: &mut Vec<SystemInfo>) -> Vec<SystemKind> {
    let mut available = Vec::new();
    for &k in &plan.kinds {
        match systems::availability(k, &plan.settings) {
            Ok(()) => available.push(k),
            Err(why) => {
                println!("  {}: {why}", k.name());
                infos.push(system_info(k, "not_available", Some(why)));
            }
        }
    }
    available
}

/// One SeaweedFS for every S3 system (if any is selected), or why it did not start.
async fn start_seaweed(available: &[SystemKind], rss: &RssTracker) -> (Option<SeaweedFs>, Option<String>) {
    if !available.iter().any(|k| k.uses_s3()) {
        return (None, None);
    }
    println!("starting SeaweedFS …");
    match SeaweedFs::start_with_bucket("bench").await {
        Ok(fs) => {
            rss.track(fs.pid());
            (Some(fs), None)
        }
        Err(e) => (None, Some(format!("SeaweedFS did not start: {e:#}"))),
    }
}

/// Every scenario on every running system: the measurements (with rounds, each
/// system's median round) and, with rounds, every round's.
pub async fn measure_all(plan: &Plan, setup: &Setup, data: &Dataset) -> (Vec<Measurement>, Vec<Measurement>) {
    let mut results = Vec::new();
    let mut rounds = Vec::new();
    for &s in &plan.scenarios {
        results.extend(not_running(s, plan, setup));
        let mut these = Vec::new();
        for round in 0..plan.rounds {
            for l in &setup.live {
                these.push(measure_round(s, l, round, plan, setup, data).await);
            }
        }
        if plan.rounds > 1 {
            for l in &setup.live {
                let of_system: Vec<Measurement> = these.iter().filter(|m| m.system == l.kind.name()).cloned().collect();
                results.extend(report::median_round(s, &of_system));
            }
            rounds.append(&mut these);
        } else {
            results.append(&mut these);
        }
    }
    (results, rounds)
}

/// "Not available" measurements of `s` for the selected systems that do not run.
fn not_running(s: Scenario, plan: &Plan, setup: &Setup) -> Vec<Measurement> {
    plan.kinds
        .iter()
        .filter(|&&k| !setup.live.iter().any(|l| l.kind == k))
        .map(|&k| {
            let why = setup
                .infos
                .iter()
                .find(|i| i.name == k.name())
                .and_then(|i| i.note.clone())
                .unwrap_or_else(|| "not running".into());
            let first_line = why.lines().next().unwrap_or("").to_owned();
            Measurement::not_available(s.id(), k.name(), first_line)
        })
        .collect()
}

/// Scenario `s` on one system in one round, printed; SeaweedFS compacted after a push.
async fn measure_round(s: Scenario, l: &Live, round: u32, plan: &Plan, setup: &Setup, data: &Dataset) -> Measurement {
    let mut m = measure(s, l, &plan.params, data, &setup.pusher, &setup.rss).await;
    let tag = if plan.rounds > 1 {
        m.round = Some(round);
        format!(" (round {})", round + 1)
    } else {
        String::new()
    };
    println!(
        "  {:<34} {:<18} {}{tag}",
        s.title(&plan.params),
        l.kind.name(),
        summary(&m)
    );
    // Pushes leave SeaweedFS with garbage (upload parts, overwritten blobs) it does
    // not reclaim for a quarter of an hour: compact now, so every system pushes into
    // the same free space.
    if matches!(s, Scenario::PushLarge | Scenario::PushSmall)
        && l.kind.uses_s3()
        && let Some(fs) = &setup.seaweed
        && let Err(e) = fs.vacuum().await
    {
        eprintln!("berth-bench: SeaweedFS vacuum failed: {e:#}");
    }
    m
}

/// One scenario on one running system, with the servers' CPU, RSS and (under
/// CPU budgets) throttling over it.
async fn measure(
    s: Scenario,
    l: &Live,
    params: &Params,
    data: &Dataset,
    pusher: &Pusher,
    rss: &RssTracker,
) -> Measurement {
    let ctx = scenarios::Ctx {
        system: l.kind.name(),
        endpoints: &l.running.endpoints,
        server_pids: &l.running.server_pids,
        params,
        data,
        pusher,
    };
    settle_disk().await;
    let cpu_before = rss::cpu_seconds_of(&l.running.server_pids);
    let periods_before = l.cpu_limit.as_ref().map(|c| c.periods());
    rss.begin_window(&l.running.server_pids);
    let mut m = scenarios::run(s, &ctx).await;
    // Read scenarios measured their own window (without the warm-up).
    let used = *m
        .server_cpu_s
        .get_or_insert_with(|| rss::cpu_seconds_of(&l.running.server_pids) - cpu_before);
    m.cpu_us_per_op = (m.ops > 0).then(|| used * 1e6 / m.ops as f64);
    if let (Some(before), Some(limit)) = (periods_before, &l.cpu_limit) {
        m.throttled_share = cpulimit::least_throttled_share(&before, &limit.periods());
    }
    if let Some(w) = rss.end_window(&l.running.server_pids) {
        m.peak_rss_mib = Some(w.peak_mib);
        m.start_rss_mib = Some(w.start_mib);
    }
    m
}

/// Write back every dirty page before a measurement, so no scenario pays for the
/// writes of an earlier one or of another system's data (the preparation alone
/// leaves gigabytes behind, and a synced Raft log append waits behind them).
async fn settle_disk() {
    let started = Instant::now();
    // SAFETY: sync(2) has no preconditions.
    let _ = tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await;
    let took = started.elapsed();
    if took > Duration::from_secs(1) {
        println!(
            "  (waited {:.1} s for earlier writes to reach the disk)",
            took.as_secs_f64()
        );
    }
}

/// The one-line account of a measurement printed as it is taken.
fn summary(m: &Measurement) -> String {
    if let Some(note) = &m.note {
        let first: String = note.lines().next().unwrap_or("").chars().take(160).collect();
        return format!("{:?}: {first}", m.outcome);
    }
    let mut parts = Vec::new();
    if let Some(w) = m.wall_s {
        parts.push(format!("wall {w:.2} s"));
    }
    if let Some(v) = m.ops_per_s {
        parts.push(format!("{v:.0} ops/s"));
    }
    if let Some(v) = m.mib_per_s {
        parts.push(format!("{v:.0} MiB/s"));
    }
    if let Some(v) = m.readback_mib_per_s {
        parts.push(format!("read-back {v:.0} MiB/s"));
    }
    if let (Some(a), Some(b)) = (m.p50_ms, m.p99_ms) {
        parts.push(format!("p50 {a:.2} ms p99 {b:.2} ms"));
    }
    if let Some(v) = m.peak_rss_mib {
        parts.push(format!("rss {v:.0} MiB"));
    }
    if let Some(v) = m.cpu_us_per_op {
        parts.push(format!("cpu {v:.0} µs/op"));
    }
    if m.errors > 0 {
        parts.push(format!("{} errors", m.errors));
    }
    parts.join(", ")
}

/// The run's conditions, printed above the table.
fn run_note(params: &Params) -> String {
    match params.server_cpus {
        None => "One run on a shared 2-core machine: client and servers share the cores, \
                 other work may run at the same time. Compare systems only within one run."
            .into(),
        Some(c) => format!(
            "One run on a shared 2-core machine, every server process limited to {c} CPU \
             cores by a cgroup of its own that it starts in (a machine per node, emulated; CFS period {:?}); \
             the client and SeaweedFS are not limited. Clients spread over a cluster's \
             nodes {}. Compare systems only within one run.",
            params.cpu_period,
            match params.balance {
                Balance::Request => "request by request (each client turns over the nodes)",
                Balance::Connection => "by connection (each client keeps to one node)",
            }
        ),
    }
}

/// Everything measured, before the targets are judged.
pub struct Measured {
    pub generated_unix: u64,
    pub machine: serde_json::Value,
    pub physical: Physical,
    pub stopped: Stopped,
    pub results: Vec<Measurement>,
    pub rounds: Vec<Measurement>,
}

/// Judges the targets, prints the table and writes the JSON and the table next to it.
pub fn write_report(plan: &Plan, measured: Measured) -> anyhow::Result<()> {
    let mut rep = Report {
        generated_unix: measured.generated_unix,
        generated_utc: report::utc(measured.generated_unix),
        machine: measured.machine,
        note: run_note(&plan.params),
        params: plan.params.clone(),
        scenarios: plan.scenarios.iter().map(|s| s.id().to_owned()).collect(),
        physical: Some(measured.physical),
        systems: measured.stopped.infos,
        seaweedfs_peak_rss_mib: measured.stopped.seaweed_peak,
        results: measured.results,
        rounds: measured.rounds,
        targets: vec![],
    };
    rep.targets = crate::targets::judge(&plan.targets, &rep);
    let text = report::render(&rep, &plan.kinds, &plan.scenarios);
    println!();
    println!("{text}");
    let out = &plan.out_path;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, serde_json::to_vec_pretty(&rep)?).with_context(|| format!("writing {}", out.display()))?;
    std::fs::write(out.with_extension("txt"), &text)
        .with_context(|| format!("writing the table next to {}", out.display()))?;
    let shown = out.canonicalize().unwrap_or_else(|_| out.clone());
    println!("JSON report: {}", shown.display());
    if let Some(log) = &measured.stopped.seaweed_log {
        println!("SeaweedFS log: {}", log.display());
    }
    Ok(())
}
