//! berth-bench: measures berth against CNCF Distribution side by side on loopback.
//!
//! One run: generate the data, measure the physical references (sha256 of one core,
//! loopback copy), start every selected system (and one shared SeaweedFS for the S3
//! ones), push the data to each, then run each scenario on each system in turn (so
//! the systems are compared minutes apart at most), sample the servers' RSS, stop
//! every process by PID, print the table and the target lines and write the JSON.
//! The phases are in [`phases`]; the targets come from `benches/targets.toml` and are
//! judged by [`targets`]. Ctrl-C or SIGTERM stops every started process too. See
//! `benches/README.md`.

mod cpulimit;
mod oci;
mod phases;
mod physical;
mod rawhttp;
mod report;
mod rss;
mod scenarios;
mod stats;
mod systems;
mod targets;

use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use anyhow::bail;
use clap::Parser;

use crate::phases::Measured;
use crate::phases::Plan;
use crate::phases::Setup;
use crate::scenarios::Balance;
use crate::scenarios::Params;
use crate::scenarios::Scenario;
use crate::systems::LaunchSettings;
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
    /// The targets to judge (default: <repo>/benches/targets.toml).
    #[arg(long)]
    targets: Option<PathBuf>,
    /// Judge the targets against a recorded JSON report instead of running, and
    /// print their lines.
    #[arg(long, value_name = "REPORT")]
    judge: Option<PathBuf>,
    /// Print the scenarios, systems and metrics and exit.
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
        println!("metrics (of targets):");
        for m in targets::METRICS {
            println!("  {}", m.0);
        }
        return std::process::ExitCode::SUCCESS;
    }
    if let Some(report) = &args.judge {
        return match judge_recorded(&args, report) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth-bench: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
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

/// The scenarios, systems and parameters `args` select, and the targets to judge.
fn plan(args: &Args) -> anyhow::Result<Plan> {
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
    Ok(Plan {
        scenarios,
        kinds,
        params,
        settings,
        rounds: args.rounds,
        physical_reps: args.physical_reps,
        out_path: args
            .out
            .clone()
            .unwrap_or_else(|| repo_root().join("target").join("bench").join("report.json")),
        targets: targets::load(&targets_path(args))?,
    })
}

fn targets_path(args: &Args) -> PathBuf {
    args.targets
        .clone()
        .unwrap_or_else(|| repo_root().join("benches").join("targets.toml"))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let plan = plan(&args)?;
    let started = Instant::now();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let machine = machine_info();
    println!(
        "berth-bench: {} scenario(s) × {} system(s); {} clients, {:?} per scenario",
        plan.scenarios.len(),
        plan.kinds.len(),
        plan.params.clients,
        plan.params.duration
    );
    let nonce = now ^ u64::from(std::process::id()) << 32;
    let data = phases::prepare_data(&plan.params, nonce).await?;
    let physical = phases::physical_references(&data, plan.physical_reps).await?;
    let setup = Setup::start(&plan, &data).await?;
    let (results, rounds) = phases::measure_all(&plan, &setup, &data).await;
    let stopped = setup.stop(&plan.kinds, &plan.out_path).await;
    let measured = Measured {
        generated_unix: now,
        machine,
        physical,
        stopped,
        results,
        rounds,
    };
    phases::write_report(&plan, measured)?;
    println!("total time: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `--judge`: the targets' lines for a recorded report, as the run would print them.
fn judge_recorded(args: &Args, report: &std::path::Path) -> anyhow::Result<()> {
    let targets = targets::load(&targets_path(args))?;
    let r = targets::read_report(report)?;
    for line in targets::judge(&targets, &r) {
        println!("  {}", line.text);
    }
    Ok(())
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
