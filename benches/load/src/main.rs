//! berth-bench: measures berth against CNCF Distribution side by side on loopback.
//!
//! One run: generate the data, measure the physical references (sha256 of one core,
//! loopback copy), start every selected system (and one shared SeaweedFS for the S3
//! ones), push the data to each, then run each scenario on each system in turn (so
//! the systems are compared minutes apart at most), sample the servers' RSS, stop
//! every process by PID, print the table and the target ratios and write the JSON.
//! Ctrl-C or SIGTERM stops every started process too. See `benches/README.md`.

mod cpulimit;
mod oci;
mod physical;
mod rawhttp;
mod report;
mod rss;
mod scenarios;
mod stats;
mod systems;

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use anyhow::Context;
use anyhow::bail;
use berth_testkit::SeaweedFs;
use clap::Parser;

use crate::oci::Pusher;
use crate::report::Report;
use crate::report::SystemInfo;
use crate::rss::RssTracker;
use crate::scenarios::Balance;
use crate::scenarios::Dataset;
use crate::scenarios::Params;
use crate::scenarios::Scenario;
use crate::stats::Measurement;
use crate::systems::LaunchSettings;
use crate::systems::Running;
use crate::systems::SystemKind;

/// Load harness: berth against CNCF Distribution 2.8.2, side by side on 127.0.0.1.
#[derive(Parser, Debug, Clone)]
#[command(name = "berth-bench", version, args_override_self = true)]
struct Args {
    /// Concurrent clients of the request scenarios (manifest, HEAD, small blob, push-small).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Concurrent clients of the large-blob GETs (1: one stream, like the loopback reference).
    #[arg(long, default_value_t = 1)]
    large_clients: usize,
    /// Measured time of each scenario (e.g. 6s, 500ms, 1m).
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before each read scenario.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Systems to measure, comma-separated (default: all but berth-s3-redirect).
    #[arg(long, value_enum, value_delimiter = ',')]
    systems: Vec<SystemKind>,
    /// Size of the small blob (KiB).
    #[arg(long, default_value_t = 1024)]
    small_blob_kib: u64,
    /// Size of the large blob (MiB).
    #[arg(long, default_value_t = 256)]
    large_blob_mib: u64,
    /// Size of the layer of the big push (MiB); also the size of the physical references.
    #[arg(long, default_value_t = 1024)]
    push_mib: u64,
    /// Big pushes per system (the median wall time is reported).
    #[arg(long, default_value_t = 1)]
    push_reps: usize,
    /// Layer size of each image in push-small (KiB).
    #[arg(long, default_value_t = 4)]
    image_layer_kib: u64,
    /// Tag writes per second.
    #[arg(long, default_value_t = 200)]
    tag_rate: u32,
    /// Tag reads per second alongside the tag writes (tag-writes-reads).
    #[arg(long, default_value_t = 2000)]
    tag_read_rate: u32,
    /// How long tag writes run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    tag_duration: Duration,
    /// Bound of any single request (the big push included).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Rounds of every scenario, the systems interleaved within each round; the
    /// report shows each system's median round (and every round's headline).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Repetitions of each physical reference (the median is used).
    #[arg(long, default_value_t = 3)]
    physical_reps: usize,
    /// The berth binary (default: $CARGO_TARGET_DIR/release/berth).
    #[arg(long, env = "BERTH_BENCH_BERTH_BIN")]
    berth_bin: Option<PathBuf>,
    /// CNCF Distribution's binary (Debian `docker-registry`).
    #[arg(long, default_value = "/usr/bin/docker-registry")]
    registry_bin: PathBuf,
    /// Log level of every server under test.
    #[arg(long, default_value = "warn")]
    server_log_level: String,
    /// berth's local blob cache in front of S3 (MiB).
    #[arg(long, default_value_t = 4096)]
    cache_mib: u64,
    /// CPU budget of every server process, in cores (e.g. 0.25), enforced by a
    /// cgroup each that the process starts in: emulates a machine per node (needs
    /// root). Default: no limit.
    #[arg(long)]
    server_cpus: Option<f64>,
    /// CFS period of those budgets (1ms to 1s): a server that has used its quota
    /// waits for the next period. Default: the kernel's 100ms.
    #[arg(long, value_parser = parse_duration)]
    cpu_period: Option<Duration>,
    /// How the clients of the closed-loop scenarios spread over a cluster's nodes:
    /// `request` (each client goes to the nodes in turn, an HTTP balancer) or
    /// `connection` (each client keeps to one node, a TCP balancer).
    #[arg(long, value_enum, default_value = "request")]
    balance: Balance,
    /// `[cluster] follower_lease` of the 3-node systems (e.g. 0s: read index per
    /// burst instead); default: the binary's (250ms).
    #[arg(long)]
    follower_lease: Option<String>,
    /// Where the JSON report goes (default: <repo>/target/bench/report.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the scenarios and systems and exit.
    #[arg(long)]
    list: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 8s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" | "min" => v * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.list {
        println!("scenarios:");
        for s in Scenario::ALL {
            println!("  {}", s.id());
        }
        println!("systems:");
        for k in SystemKind::ALL {
            println!("  {:<18} {}", k.name(), k.describe());
        }
        return std::process::ExitCode::SUCCESS;
    }
    // The client's runtime uses every core whatever TOKIO_WORKER_THREADS says: that
    // variable is left to size the servers' runtimes, which inherit the environment.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        // Dropping `run` (on a signal) drops every process handle: each kills its
        // child by PID.
        tokio::select! {
            r = run(args) => match r {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("berth-bench: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            },
            sig = interrupted() => {
                eprintln!("berth-bench: {sig}: stopping every started process");
                std::process::ExitCode::from(130)
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    code
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::SignalKind;
    use tokio::signal::unix::signal;
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "interrupted";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted (Ctrl-C)",
        _ = term.recv() => "terminated (SIGTERM)",
    }
}

fn repo_root() -> PathBuf {
    // benches/load → the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("..")
}

fn default_berth_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth-target"));
    target.join("release").join("berth")
}

fn machine_info() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned());
    let sha_ni = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "sha_ni"));
    let mem_kib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned));
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": model,
        "sha_ni": sha_ni,
        "mem_total_kib": mem_kib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "loadavg_at_start": read("/proc/loadavg").trim(),
    })
}

struct Live {
    kind: SystemKind,
    running: Running,
    /// Dropped after `running`: its cgroups go once the processes are gone.
    cpu_limit: Option<cpulimit::CpuLimit>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let scenarios: Vec<Scenario> = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        Scenario::ALL
            .into_iter()
            .filter(|s| args.scenarios.contains(s))
            .collect()
    };
    let kinds: Vec<SystemKind> = if args.systems.is_empty() {
        SystemKind::DEFAULT.to_vec()
    } else {
        SystemKind::ALL
            .into_iter()
            .filter(|k| args.systems.contains(k))
            .collect()
    };
    if args.clients == 0 || args.clients > 4096 {
        bail!("--clients must be between 1 and 4096");
    }
    if !(1..=9).contains(&args.rounds) {
        bail!("--rounds must be between 1 and 9");
    }
    let params = Params {
        clients: args.clients,
        large_clients: args.large_clients.clamp(1, 64),
        duration: args.duration,
        warmup: args.warmup,
        small_blob: args.small_blob_kib.max(2) * 1024,
        large_blob: args.large_blob_mib.max(1) * 1024 * 1024,
        push_size: args.push_mib.max(1) * 1024 * 1024,
        push_reps: args.push_reps.clamp(1, 20),
        image_layer: args.image_layer_kib.max(2) * 1024,
        tag_rate: args.tag_rate.clamp(1, 10_000),
        tag_read_rate: args.tag_read_rate.clamp(1, 100_000),
        tag_duration: args.tag_duration,
        request_timeout: args.request_timeout,
        server_cpus: args.server_cpus,
        cpu_period: args.cpu_period.unwrap_or(cpulimit::DEFAULT_PERIOD),
        balance: args.balance,
    };
    let settings = LaunchSettings {
        berth_bin: args.berth_bin.clone().unwrap_or_else(default_berth_bin),
        registry_bin: args.registry_bin.clone(),
        log_level: args.server_log_level.clone(),
        cache_max_bytes: args.cache_mib.saturating_mul(1024 * 1024),
        follower_lease: args.follower_lease.clone(),
    };
    let out_path = args
        .out
        .clone()
        .unwrap_or_else(|| repo_root().join("target").join("bench").join("report.json"));
    let started = Instant::now();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let machine = machine_info();

    println!(
        "berth-bench: {} scenario(s) × {} system(s); {} clients, {:?} per scenario",
        scenarios.len(),
        kinds.len(),
        params.clients,
        params.duration
    );
    println!(
        "preparing data (layers of {}, {}, {}) …",
        scenarios::size(params.small_blob),
        scenarios::size(params.large_blob),
        scenarios::size(params.push_size)
    );
    let nonce = now ^ u64::from(std::process::id()) << 32;
    let p2 = params.clone();
    let data = tokio::task::spawn_blocking(move || Dataset::generate(&p2, nonce))
        .await
        .context("data generation task")??;
    let data = std::sync::Arc::new(data);

    println!(
        "physical references ({} × {}) …",
        args.physical_reps,
        scenarios::size(params.push_size)
    );
    let d2 = data.clone();
    let reps = args.physical_reps;
    let physical = tokio::task::spawn_blocking(move || physical::measure(&d2.big.bytes, reps))
        .await
        .context("physical reference task")??;
    println!(
        "  sha256: {:.0} MiB/s, loopback copy: {:.0} MiB/s, disk write+fsync: {:.0} MiB/s",
        physical.sha256_mib_per_s, physical.loopback_mib_per_s, physical.disk_write_fsync_mib_per_s
    );

    let mut infos: Vec<SystemInfo> = Vec::new();
    let mut available = Vec::new();
    for &k in &kinds {
        match systems::availability(k, &settings) {
            Ok(()) => available.push(k),
            Err(why) => {
                println!("  {}: {why}", k.name());
                infos.push(SystemInfo {
                    name: k.name().into(),
                    description: k.describe().into(),
                    status: "not_available".into(),
                    note: Some(why),
                    pids: vec![],
                    peak_rss_mib: None,
                });
            }
        }
    }

    let rss = RssTracker::new();
    let sampler = rss.spawn_sampler(Duration::from_millis(100));

    // One SeaweedFS for every S3 system.
    let mut seaweed: Option<SeaweedFs> = None;
    let mut s3_error: Option<String> = None;
    if available.iter().any(|k| k.uses_s3()) {
        println!("starting SeaweedFS …");
        match SeaweedFs::start_with_bucket("bench").await {
            Ok(fs) => {
                rss.track(fs.pid());
                seaweed = Some(fs);
            }
            Err(e) => s3_error = Some(format!("SeaweedFS did not start: {e:#}")),
        }
    }
    let s3 = seaweed.as_ref().map(SeaweedFs::access);

    let pusher = Pusher::new(params.request_timeout)?;
    let mut live: Vec<Live> = Vec::new();
    for &k in &available {
        let failed = |why: String| SystemInfo {
            name: k.name().into(),
            description: k.describe().into(),
            status: "failed".into(),
            note: Some(why),
            pids: vec![],
            peak_rss_mib: None,
        };
        if k.uses_s3() && s3.is_none() {
            infos.push(failed(s3_error.clone().unwrap_or_else(|| "no SeaweedFS".into())));
            continue;
        }
        println!("starting {} ({}) …", k.name(), k.describe());
        let cpu_limit = match args
            .server_cpus
            .map(|c| cpulimit::prepare(k.nodes(), c, params.cpu_period))
        {
            None => None,
            Some(Ok(l)) => Some(l),
            Some(Err(e)) => {
                println!("  failed: CPU budget: {e:#}");
                infos.push(failed(format!("CPU budget: {e:#}")));
                continue;
            }
        };
        let cgroups = cpu_limit.as_ref().map(|l| l.dirs()).unwrap_or_default();
        let mut running = match systems::start(k, &settings, s3.as_ref(), cgroups).await {
            Ok(r) => r,
            Err(e) => {
                println!("  failed: {e:#}");
                infos.push(failed(format!("{e:#}")));
                continue;
            }
        };
        for &pid in &running.server_pids {
            rss.track(pid);
        }
        let t0 = Instant::now();
        match scenarios::prepare(&running.endpoints, &data, &pusher).await {
            Ok(()) => {
                println!("  pushed and verified the data in {:.1} s", t0.elapsed().as_secs_f64());
                live.push(Live {
                    kind: k,
                    running,
                    cpu_limit,
                });
            }
            Err(e) => {
                println!("  preparing data failed: {e:#}");
                let why = format!("preparing data: {e:#}\n{}", running.log_hint());
                let _ = running.stop().await;
                infos.push(failed(why));
            }
        }
    }

    let mut results: Vec<Measurement> = Vec::new();
    let mut rounds: Vec<Measurement> = Vec::new();
    for &s in &scenarios {
        for &k in &kinds {
            if !live.iter().any(|l| l.kind == k) {
                let why = infos
                    .iter()
                    .find(|i| i.name == k.name())
                    .and_then(|i| i.note.clone())
                    .unwrap_or_else(|| "not running".into());
                let first_line = why.lines().next().unwrap_or("").to_owned();
                results.push(Measurement::not_available(s.id(), k.name(), first_line));
            }
        }
        let mut these: Vec<Measurement> = Vec::new();
        for round in 0..args.rounds {
            for l in &live {
                let mut m = measure(s, l, &params, &data, &pusher, &rss).await;
                let tag = if args.rounds > 1 {
                    m.round = Some(round);
                    format!(" (round {})", round + 1)
                } else {
                    String::new()
                };
                println!("  {:<34} {:<18} {}{tag}", s.title(&params), l.kind.name(), summary(&m));
                these.push(m);
                // Pushes leave SeaweedFS with garbage (upload parts, overwritten
                // blobs) it does not reclaim for a quarter of an hour: compact now, so
                // every system pushes into the same free space.
                if matches!(s, Scenario::PushLarge | Scenario::PushSmall)
                    && l.kind.uses_s3()
                    && let Some(fs) = &seaweed
                    && let Err(e) = fs.vacuum().await
                {
                    eprintln!("berth-bench: SeaweedFS vacuum failed: {e:#}");
                }
            }
        }
        if args.rounds > 1 {
            for l in &live {
                let of_system: Vec<Measurement> = these.iter().filter(|m| m.system == l.kind.name()).cloned().collect();
                results.extend(report::median_round(s, &of_system));
            }
            rounds.append(&mut these);
        } else {
            results.append(&mut these);
        }
    }

    // Stop everything by PID, gracefully, before writing the report.
    let seaweed_peak = seaweed.as_ref().and_then(|fs| rss.overall_mib(fs.pid()));
    for mut l in live {
        let peak = l
            .running
            .server_pids
            .iter()
            .filter_map(|&p| rss.overall_mib(p))
            .reduce(|a, b| a + b);
        let stop = l.running.stop().await;
        infos.push(SystemInfo {
            name: l.kind.name().into(),
            description: l.kind.describe().into(),
            status: "ran".into(),
            note: stop.err().map(|e| format!("stop: {e:#}")),
            pids: l.running.server_pids.clone(),
            peak_rss_mib: peak,
        });
    }
    // SeaweedFS's own log goes with the report: its temp dir does not outlive the
    // run, and a failed S3 request is only explained there.
    let seaweed_log = seaweed.as_ref().and_then(|fs| {
        let dst = out_path.with_extension("seaweedfs.log");
        match fs.keep_log(&dst) {
            Ok(()) => Some(dst),
            Err(e) => {
                eprintln!("berth-bench: SeaweedFS's log not kept: {e:#}");
                None
            }
        }
    });
    if let Some(mut fs) = seaweed.take()
        && let Err(e) = fs.stop().await
    {
        eprintln!("berth-bench: stopping SeaweedFS: {e:#}");
    }
    sampler.abort();
    infos.sort_by_key(|i| kinds.iter().position(|k| k.name() == i.name));

    let mut rep = Report {
        generated_unix: now,
        generated_utc: report::utc(now),
        machine,
        note: match args.server_cpus {
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
        },
        params: params.clone(),
        scenarios: scenarios.iter().map(|s| s.id().to_owned()).collect(),
        physical: Some(physical),
        systems: infos,
        seaweedfs_peak_rss_mib: seaweed_peak,
        results,
        rounds,
        targets: vec![],
    };
    rep.targets = report::targets(&rep);
    let text = report::render(&rep, &kinds, &scenarios);
    println!();
    println!("{text}");
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out_path, serde_json::to_vec_pretty(&rep)?)
        .with_context(|| format!("writing {}", out_path.display()))?;
    std::fs::write(out_path.with_extension("txt"), &text)
        .with_context(|| format!("writing the table next to {}", out_path.display()))?;
    let shown = out_path.canonicalize().unwrap_or(out_path);
    println!("JSON report: {}", shown.display());
    if let Some(log) = seaweed_log {
        println!("SeaweedFS log: {}", log.display());
    }
    println!("total time: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("8s").unwrap(), Duration::from_secs(8));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn cli_parses_lists() {
        let a = Args::try_parse_from([
            "berth-bench",
            "--systems",
            "berth-fs,dist-fs",
            "--scenarios",
            "manifest-tag,push-large",
        ])
        .unwrap();
        assert_eq!(a.systems, vec![SystemKind::BerthFs, SystemKind::DistFs]);
        assert_eq!(a.scenarios, vec![Scenario::ManifestTag, Scenario::PushLarge]);
    }
}
