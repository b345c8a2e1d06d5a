//! The report: a table per scenario and system, the target ratios, and the JSON.

use std::fmt::Write as _;

use serde::Deserialize;
use serde::Serialize;

use crate::physical::Physical;
use crate::scenarios::Params;
use crate::scenarios::Scenario;
use crate::stats::Measurement;
use crate::stats::Outcome;
use crate::systems::SystemKind;

/// 150 MB (the RSS bound) in MiB.
pub const RSS_LIMIT_MIB: f64 = 150.0 * 1e6 / (1024.0 * 1024.0);
/// Peak-RSS difference between small and big transfers still counted as "no growth".
pub const RSS_GROWTH_SLACK_MIB: f64 = 16.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemInfo {
    pub name: String,
    pub description: String,
    /// `ran`, `not_available` or `failed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub pids: Vec<u32>,
    /// Run-wide peak RSS of the server process(es), MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Verdict {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "MISS")]
    Miss,
    /// Not measurable in this run (a system or scenario missing).
    #[serde(rename = "N/A")]
    NotAvailable,
    /// Shown for context; not one of the targets.
    #[serde(rename = "info")]
    Info,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetLine {
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub verdict: Verdict,
    /// The printed line.
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub generated_unix: u64,
    pub generated_utc: String,
    pub machine: serde_json::Value,
    pub note: String,
    pub params: Params,
    pub scenarios: Vec<String>,
    pub physical: Option<Physical>,
    pub systems: Vec<SystemInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seaweedfs_peak_rss_mib: Option<f64>,
    pub results: Vec<Measurement>,
    /// With `--rounds` above 1, every round's measurement; `results` holds the
    /// median round of each scenario and system.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<Measurement>,
    #[serde(default)]
    pub targets: Vec<TargetLine>,
}

impl Report {
    pub fn find(&self, s: Scenario, system: SystemKind) -> Option<&Measurement> {
        self.results
            .iter()
            .find(|m| m.scenario == s.id() && m.system == system.name() && m.outcome == Outcome::Ok)
    }
}

/// The number a scenario is judged by (its first table row), and whether more
/// of it is better.
pub fn headline(s: Scenario, m: &Measurement) -> Option<(f64, bool)> {
    use Scenario as S;
    match s {
        S::ManifestTag | S::ManifestDigest | S::HeadBlob | S::TagWriteMax | S::PushSmall => {
            m.ops_per_s.map(|v| (v, true))
        }
        S::BlobGetSmall | S::BlobGetSmallRange | S::BlobGetLarge | S::BlobGetLargeRange => {
            m.mib_per_s.map(|v| (v, true))
        }
        S::TagWrites | S::TagWritesReads => m.p99_ms.map(|v| (v, false)),
        S::PushLarge => m.wall_s.map(|v| (v, false)),
    }
}

/// Of one system's measurements of scenario `s` over the rounds, the one with the
/// median headline; of an even count, the worse of the two middle ones. A round
/// without a headline (failed, not available) counts only when no round has one.
pub fn median_round(s: Scenario, rounds: &[Measurement]) -> Option<Measurement> {
    let judged: Vec<(f64, &Measurement)> = rounds
        .iter()
        .filter(|m| m.outcome == Outcome::Ok)
        .filter_map(|m| headline(s, m).map(|(v, more_is_better)| (if more_is_better { v } else { -v }, m)))
        .collect();
    worse_middle(judged).or_else(|| rounds.first()).cloned()
}

/// The median of items scored so that more is better; of an even count, the worse
/// of the two middle ones.
fn worse_middle<T>(mut scored: Vec<(f64, T)>) -> Option<T> {
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let middle = scored.len().checked_sub(1)? / 2;
    scored.into_iter().nth(middle).map(|(_, item)| item)
}

fn f(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 100.0 {
        format!("{v:.1}")
    } else if v >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// One table cell of `pick` from the measurement, or why there is none.
fn cell(m: Option<&Measurement>, pick: &dyn Fn(&Measurement) -> Option<String>) -> String {
    match m {
        None => "-".into(),
        Some(m) => match m.outcome {
            Outcome::NotAvailable => "n/a".into(),
            Outcome::Error => "ERR".into(),
            Outcome::Ok => {
                let v = pick(m).unwrap_or_else(|| "-".into());
                if m.errors > 0 { format!("{v}!") } else { v }
            }
        },
    }
}

type Pick = Box<dyn Fn(&Measurement) -> Option<String>>;

fn rows_for(s: Scenario) -> Vec<(&'static str, Pick)> {
    let rps: Pick = Box::new(|m| m.ops_per_s.map(f));
    let mibs: Pick = Box::new(|m| m.mib_per_s.map(f));
    let lat: Pick = Box::new(|m| Some(format!("{}/{}", f(m.p50_ms?), f(m.p99_ms?))));
    match s {
        Scenario::ManifestTag | Scenario::ManifestDigest | Scenario::HeadBlob => {
            vec![("req/s", rps), ("p50/p99 ms", lat)]
        }
        Scenario::BlobGetSmall | Scenario::BlobGetSmallRange => {
            vec![("MiB/s", mibs), ("req/s", rps), ("p50/p99 ms", lat)]
        }
        Scenario::BlobGetLarge | Scenario::BlobGetLargeRange => vec![("MiB/s", mibs), ("p50/p99 ms", lat)],
        Scenario::TagWrites => vec![
            ("p50/p99 ms", lat),
            (
                "ok/dropped",
                Box::new(|m| Some(format!("{}/{}", m.ops, m.dropped.unwrap_or(0)))),
            ),
        ],
        Scenario::TagWritesReads => vec![
            ("write p50/p99 ms", lat),
            (
                "ok/dropped",
                Box::new(|m| Some(format!("{}/{}", m.ops, m.dropped.unwrap_or(0)))),
            ),
            ("reads/s", Box::new(|m| m.reads_per_s.map(f))),
            (
                "read p50/p99 ms",
                Box::new(|m| Some(format!("{}/{}", f(m.read_p50_ms?), f(m.read_p99_ms?)))),
            ),
        ],
        Scenario::TagWriteMax => vec![("writes/s", rps), ("p50/p99 ms", lat)],
        Scenario::PushSmall => vec![("images/s", rps), ("p50/p99 ms", lat)],
        Scenario::PushLarge => vec![
            ("wall s", Box::new(|m| m.wall_s.map(f))),
            ("push MiB/s", mibs),
            ("read-back MiB/s", Box::new(|m| m.readback_mib_per_s.map(f))),
        ],
    }
}

/// The printed report: physical references, the table, per-scenario peak RSS,
/// errors, the target lines.
pub fn render(r: &Report, systems: &[SystemKind], scenarios: &[Scenario]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "berth-bench report ({})", r.generated_utc);
    let _ = writeln!(out, "{}", r.note);
    if let Some(p) = &r.physical {
        let n = crate::scenarios::size(p.bytes);
        let _ = writeln!(
            out,
            "physical ({n}): sha256 one core {} MiB/s ({} s); loopback copy {} MiB/s ({} s); \
             disk write+fsync {} MiB/s ({} s); page-cache send {} MiB/s ({} s)",
            f(p.sha256_mib_per_s),
            f(p.sha256_s),
            f(p.loopback_mib_per_s),
            f(p.loopback_s),
            f(p.disk_write_fsync_mib_per_s),
            f(p.disk_write_fsync_s),
            f(p.page_cache_send_mib_per_s),
            f(p.page_cache_send_s),
        );
    }
    let _ = writeln!(out);
    let first = scenarios
        .iter()
        .map(|s| s.title(&r.params).len())
        .max()
        .unwrap_or(10)
        .max(24);
    let second = 16;
    let widths: Vec<usize> = systems.iter().map(|s| s.name().len().max(11)).collect();
    let header = |out: &mut String, title: &str| {
        let _ = write!(out, "{:<first$}  {:<second$}", title, "");
        for (s, w) in systems.iter().zip(&widths) {
            let _ = write!(out, "  {:>w$}", s.name());
        }
        let _ = writeln!(out);
        let total = first + 2 + second + widths.iter().map(|w| w + 2).sum::<usize>();
        let _ = writeln!(out, "{}", "-".repeat(total));
    };
    // One row: a scenario's title and metric, then one cell per system.
    let row =
        |out: &mut String, s: Scenario, title: &str, metric: &str, pick: &dyn Fn(&Measurement) -> Option<String>| {
            let _ = write!(out, "{title:<first$}  {metric:<second$}");
            for (sys, w) in systems.iter().zip(&widths) {
                let m = r
                    .results
                    .iter()
                    .find(|m| m.scenario == s.id() && m.system == sys.name());
                let _ = write!(out, "  {:>w$}", cell(m, pick));
            }
            let _ = writeln!(out);
        };
    header(&mut out, "scenario");
    for &s in scenarios {
        for (i, (metric, pick)) in rows_for(s).into_iter().enumerate() {
            let title = if i == 0 { s.title(&r.params) } else { String::new() };
            row(&mut out, s, &title, metric, &pick);
        }
    }
    let _ = writeln!(out);
    header(&mut out, "peak RSS, MiB");
    for &s in scenarios {
        let rss = |m: &Measurement| m.peak_rss_mib.map(|v| format!("{v:.1}"));
        row(&mut out, s, &s.title(&r.params), "during", &rss);
    }
    let _ = write!(out, "{:<first$}  {:<second$}", "whole run", "server");
    for (sys, w) in systems.iter().zip(&widths) {
        let info = r.systems.iter().find(|i| i.name == sys.name());
        let v = match info {
            Some(i) if i.status == "ran" => i.peak_rss_mib.map_or("-".into(), |v| format!("{v:.1}")),
            Some(i) if i.status == "failed" => "ERR".into(),
            _ => "n/a".into(),
        };
        let _ = write!(out, "  {v:>w$}");
    }
    let _ = writeln!(out);
    if let Some(v) = r.seaweedfs_peak_rss_mib {
        let _ = writeln!(
            out,
            "{:<first$}  {:<second$}  {v:.1} (shared by the S3 systems)",
            "whole run", "seaweedfs"
        );
    }
    let _ = writeln!(out);
    header(&mut out, "server CPU µs/op");
    let throttled = r.results.iter().any(|m| m.throttled_share.is_some());
    for &s in scenarios {
        let cpu = |m: &Measurement| m.cpu_us_per_op.map(|v| format!("{v:.1}"));
        row(&mut out, s, &s.title(&r.params), "user+system", &cpu);
        if throttled {
            let share = |m: &Measurement| m.throttled_share.map(|v| format!("{:.0}%", v * 100.0));
            row(&mut out, s, "", "least throttled", &share);
        }
    }
    if throttled {
        let _ = writeln!(
            out,
            "least throttled: of the CFS periods of the scenario, the share in which the least busy \
             server used its whole CPU budget (100%: all servers saturated)."
        );
    }
    let _ = writeln!(out);
    if !r.rounds.is_empty() {
        let _ = writeln!(
            out,
            "rounds (systems interleaved within each round; the tables show the median round):"
        );
        for &s in scenarios {
            for sys in systems {
                let values: Vec<String> = r
                    .rounds
                    .iter()
                    .filter(|m| m.scenario == s.id() && m.system == sys.name())
                    .map(|m| headline(s, m).map_or_else(|| cell(Some(m), &|_| None), |(v, _)| f(v)))
                    .collect();
                if !values.is_empty() {
                    let metric = rows_for(s).first().map_or("", |(name, _)| *name);
                    let _ = writeln!(
                        out,
                        "  {:<first$}  {:<18} {metric}: {}",
                        s.title(&r.params),
                        sys.name(),
                        values.join(", ")
                    );
                }
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "n/a: not available (see below); ERR: failed; '!': some requests failed (see JSON)."
    );
    for i in &r.systems {
        if let Some(note) = &i.note {
            let _ = writeln!(out, "  {}: {} ({})", i.name, i.status.replace('_', " "), note);
        }
    }
    for m in &r.results {
        if m.outcome == Outcome::Error || m.errors > 0 {
            let why = m.note.clone().or_else(|| m.first_error.clone()).unwrap_or_default();
            let why: String = why.chars().take(300).collect();
            let _ = writeln!(out, "  {} on {}: {} errors: {}", m.scenario, m.system, m.errors, why);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "targets (ratios within this run):");
    for t in &r.targets {
        let _ = writeln!(out, "  {}", t.text);
    }
    out
}

struct Targets<'a> {
    r: &'a Report,
    lines: Vec<TargetLine>,
}

impl Targets<'_> {
    fn push(&mut self, target: &str, value: Option<f64>, verdict: Verdict, text: String) {
        self.lines.push(TargetLine {
            target: target.to_owned(),
            value,
            verdict,
            text,
        });
    }

    fn why_missing(&self, s: Scenario, systems: &[SystemKind]) -> String {
        for &sys in systems {
            if self.r.find(s, sys).is_none() {
                let info = self.r.systems.iter().find(|i| i.name == sys.name());
                return match info {
                    Some(i) if i.status != "ran" => format!("{}: {}", sys.name(), i.status.replace('_', " ")),
                    None => format!("{} not selected", sys.name()),
                    _ => format!("{} on {} not measured", s.id(), sys.name()),
                };
            }
        }
        "not measured".into()
    }

    /// `num/den` of a metric in each round both systems have a number for, in round
    /// order (empty without rounds).
    fn paired_ratios(
        &self,
        s: Scenario,
        num: SystemKind,
        den: SystemKind,
        metric: fn(&Measurement) -> Option<f64>,
    ) -> Vec<f64> {
        let of = |sys: SystemKind, round: u32| {
            self.r
                .rounds
                .iter()
                .find(|m| {
                    m.scenario == s.id() && m.system == sys.name() && m.round == Some(round) && m.outcome == Outcome::Ok
                })
                .and_then(metric)
        };
        let last = self.r.rounds.iter().filter_map(|m| m.round).max();
        (0..last.map_or(0, |l| l + 1))
            .filter_map(|round| match (of(num, round), of(den, round)) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            })
            .collect()
    }

    /// `num/den` of a metric, with `≥ want` (or `≤ want` when `at_most`).
    #[allow(clippy::too_many_arguments)]
    fn ratio(
        &mut self,
        label: &str,
        s: Scenario,
        num: SystemKind,
        den: SystemKind,
        metric: fn(&Measurement) -> Option<f64>,
        want: f64,
        at_most: bool,
    ) {
        let a = self.r.find(s, num).and_then(metric);
        let b = self.r.find(s, den).and_then(metric);
        let op = if at_most { "≤" } else { "≥" };
        let name = format!("{label}: {}/{}", num.name(), den.name());
        // With rounds, the two systems ran one after the other within each round:
        // the ratio of each round cancels what drifted between rounds, and their
        // median (of an even count, the worse middle one) is judged.
        let paired = self.paired_ratios(s, num, den, metric);
        let of_rounds = worse_middle(paired.iter().map(|&x| (if at_most { -x } else { x }, x)).collect());
        match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => {
                let v = of_rounds.unwrap_or(a / b);
                let rounds_text = if of_rounds.is_some() {
                    let each: Vec<String> = paired.iter().map(|x| format!("{x:.2}")).collect();
                    format!(", median of the rounds' ratios {}", each.join(", "))
                } else {
                    String::new()
                };
                let ok = if at_most { v <= want } else { v >= want };
                let verdict = if ok { Verdict::Pass } else { Verdict::Miss };
                // Nodes that share the machine's cores cannot sum to more than one
                // node: scaling is judged in a run that gives each server its own CPU
                // budget (`--server-cpus`, the scaling phase of benches/run.sh).
                let shared = num.nodes() > 1 && self.r.params.server_cpus.is_none();
                let (verdict, why) = match verdict {
                    Verdict::Miss if shared => (
                        Verdict::Info,
                        "; every server shares this machine's cores: see the run with --server-cpus",
                    ),
                    v => (v, ""),
                };
                let text = format!(
                    "{name} = {v:.2}x (target {op} {want}x{why}{rounds_text}) {}",
                    verdict_str(&verdict)
                );
                self.push(&name, Some(v), verdict, text);
            }
            _ => {
                let why = self.why_missing(s, &[num, den]);
                self.push(
                    &name,
                    None,
                    Verdict::NotAvailable,
                    format!("{name}: N/A (target {op} {want}x; {why})"),
                );
            }
        }
    }
}

fn verdict_str(v: &Verdict) -> &'static str {
    match v {
        Verdict::Pass => "PASS",
        Verdict::Miss => "MISS",
        Verdict::NotAvailable => "N/A",
        Verdict::Info => "info",
    }
}

/// The targets, computed from this run's numbers.
pub fn targets(r: &Report) -> Vec<TargetLine> {
    use Scenario as S;
    use SystemKind as K;
    let mut t = Targets { r, lines: Vec::new() };
    let rps: fn(&Measurement) -> Option<f64> = |m| m.ops_per_s;
    let mibs: fn(&Measurement) -> Option<f64> = |m| m.mib_per_s;

    t.ratio(
        "manifest GET by tag",
        S::ManifestTag,
        K::BerthFs,
        K::DistFs,
        rps,
        3.0,
        false,
    );
    let spread = match r.params.balance {
        crate::scenarios::Balance::Request => "round robin by request",
        crate::scenarios::Balance::Connection => "round robin by connection",
    };
    t.ratio(
        &format!("manifest GET by tag, 3 nodes {spread} vs one node"),
        S::ManifestTag,
        K::BerthCluster3,
        K::BerthS3,
        rps,
        2.5,
        false,
    );
    t.ratio(
        "manifest GET by tag, 3 nodes with local tag reads vs one node",
        S::ManifestTag,
        K::BerthCluster3Local,
        K::BerthS3,
        rps,
        2.5,
        false,
    );
    // Context for the scaling targets: all nodes share this machine's cores, so
    // their sum cannot exceed one node's throughput; what scales with machines is
    // the CPU a request costs the whole cluster.
    for k in [K::BerthCluster3, K::BerthCluster3Local] {
        let cpu = |k| r.find(S::ManifestTag, k).and_then(|m| m.cpu_us_per_op);
        if let (Some(c), Some(one)) = (cpu(k), cpu(K::BerthS3)) {
            let name = format!(
                "manifest GET by tag: server CPU per request, {} (all nodes) vs berth-s3",
                k.name()
            );
            let text = format!("{name} = {c:.1} µs / {one:.1} µs = {:.2}x info", c / one);
            t.push(&name, Some(c / one), Verdict::Info, text);
        }
    }
    t.ratio(
        "HEAD blob on S3",
        S::HeadBlob,
        K::BerthS3,
        K::DistS3Redirect,
        rps,
        5.0,
        false,
    );
    t.ratio(
        "HEAD blob on S3",
        S::HeadBlob,
        K::BerthS3,
        K::DistS3Proxy,
        rps,
        5.0,
        false,
    );

    // Blob GET of the large blob against one loopback stream.
    let loopback = r.physical.as_ref().map(|p| p.loopback_mib_per_s);
    for (sys, verdict_kind) in [(K::BerthS3, true), (K::BerthFs, false)] {
        let name = format!(
            "blob GET {}: {}/loopback copy{}",
            crate::scenarios::size(r.params.large_blob),
            sys.name(),
            if verdict_kind { " (proxy mode, warm cache)" } else { "" }
        );
        match (r.find(S::BlobGetLarge, sys).and_then(mibs), loopback) {
            (Some(v), Some(l)) if l > 0.0 => {
                let x = v / l;
                let verdict = match (verdict_kind, x >= 0.9) {
                    (false, _) => Verdict::Info,
                    (true, true) => Verdict::Pass,
                    (true, false) => Verdict::Miss,
                };
                let text = format!(
                    "{name} = {:.0}% ({} of {} MiB/s; target ≥ 90%) {}",
                    x * 100.0,
                    f(v),
                    f(l),
                    verdict_str(&verdict)
                );
                t.push(&name, Some(x), verdict, text);
            }
            _ => {
                let why = t.why_missing(S::BlobGetLarge, &[sys]);
                t.push(
                    &name,
                    None,
                    Verdict::NotAvailable,
                    format!("{name}: N/A (target ≥ 90%; {why})"),
                );
            }
        }
        // Against what this machine sends from the page cache at best (information).
        let cached = r.physical.as_ref().map(|p| p.page_cache_send_mib_per_s);
        if let (Some(v), Some(c)) = (r.find(S::BlobGetLarge, sys).and_then(mibs), cached)
            && c > 0.0
        {
            let name = format!(
                "blob GET {}: {}/page-cache send",
                crate::scenarios::size(r.params.large_blob),
                sys.name()
            );
            let text = format!(
                "{name} = {:.0}% ({} of {} MiB/s sent from memory maps of a cached file, no HTTP) info",
                v / c * 100.0,
                f(v),
                f(c)
            );
            t.push(&name, Some(v / c), Verdict::Info, text);
        }
    }

    // The big push against hashing plus copying the same bytes.
    let push = crate::scenarios::size(r.params.push_size);
    let name = format!("push {push} (local disk): berth-fs wall / (sha256 + loopback copy of {push})");
    let reference = r
        .physical
        .as_ref()
        .filter(|p| p.bytes == r.params.push_size)
        .map(|p| p.sha256_s + p.loopback_s);
    match (r.find(S::PushLarge, K::BerthFs).and_then(|m| m.wall_s), reference) {
        (Some(w), Some(refs)) if refs > 0.0 => {
            let x = w / refs;
            let verdict = if x <= 1.2 { Verdict::Pass } else { Verdict::Miss };
            let text = format!(
                "{name} = {w:.2} s / {refs:.2} s = {x:.2}x (target ≤ 1.2x) {}",
                verdict_str(&verdict)
            );
            t.push(&name, Some(x), verdict, text);
        }
        _ => {
            let why = t.why_missing(S::PushLarge, &[K::BerthFs]);
            t.push(
                &name,
                None,
                Verdict::NotAvailable,
                format!("{name}: N/A (target ≤ 1.2x; {why})"),
            );
        }
    }
    // Context: the same push against the disk alone (a durable push must fsync).
    let disk = r
        .physical
        .as_ref()
        .filter(|p| p.bytes == r.params.push_size)
        .map(|p| p.disk_write_fsync_s);
    if let (Some(w), Some(d)) = (r.find(S::PushLarge, K::BerthFs).and_then(|m| m.wall_s), disk)
        && d > 0.0
    {
        let name = format!("push {push} (local disk): berth-fs wall / disk write+fsync of {push}");
        let text = format!("{name} = {w:.2} s / {d:.2} s = {:.2}x info", w / d);
        t.push(&name, Some(w / d), Verdict::Info, text);
    }
    let wall: fn(&Measurement) -> Option<f64> = |m| m.wall_s;
    let dist_best = [K::DistS3Redirect, K::DistS3Proxy]
        .into_iter()
        .filter_map(|k| r.find(S::PushLarge, k).and_then(wall).map(|w| (k, w)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let name = format!("push {push} on S3: berth-s3 wall vs Distribution on S3 (faster mode)");
    match (r.find(S::PushLarge, K::BerthS3).and_then(wall), dist_best) {
        (Some(b), Some((k, d))) => {
            let verdict = if b < d { Verdict::Pass } else { Verdict::Miss };
            let text = format!(
                "{name} = {b:.2} s vs {d:.2} s ({}) = {:.2}x (target < 1x) {}",
                k.name(),
                b / d,
                verdict_str(&verdict)
            );
            t.push(&name, Some(b / d), verdict, text);
        }
        _ => {
            let why = t.why_missing(S::PushLarge, &[K::BerthS3, K::DistS3Proxy]);
            t.push(
                &name,
                None,
                Verdict::NotAvailable,
                format!("{name}: N/A (target < 1x; {why})"),
            );
        }
    }

    // Tag writes: the target is on the cluster; single nodes for context. Under
    // reads, the cluster's followers hold leases, which writes wait for.
    let rate = r.params.tag_rate;
    let reads = r.params.tag_read_rate;
    for (scenario, sys, is_target) in [
        (S::TagWrites, K::BerthCluster3, true),
        (S::TagWritesReads, K::BerthCluster3, true),
        (S::TagWrites, K::BerthFs, false),
        (S::TagWrites, K::BerthS3, false),
    ] {
        let during = if scenario == S::TagWritesReads {
            format!(" with {reads} reads/s")
        } else {
            String::new()
        };
        let name = format!("tag write p99 at {rate}/s{during} on {}", sys.name());
        match r.find(scenario, sys).and_then(|m| m.p99_ms) {
            Some(p99) => {
                let verdict = match (is_target, p99 < 20.0) {
                    (false, _) => Verdict::Info,
                    (true, true) => Verdict::Pass,
                    (true, false) => Verdict::Miss,
                };
                let text = format!("{name} = {p99:.2} ms (target < 20 ms) {}", verdict_str(&verdict));
                t.push(&name, Some(p99), verdict, text);
            }
            None if is_target => {
                let why = t.why_missing(scenario, &[sys]);
                t.push(
                    &name,
                    None,
                    Verdict::NotAvailable,
                    format!("{name}: N/A (target < 20 ms; {why})"),
                );
            }
            None => {}
        }
    }

    // Memory while streaming the big blob, and growth with blob size.
    for sys in [K::BerthFs, K::BerthS3] {
        let name = format!("{} peak RSS while pushing and reading back {push}", sys.name());
        match r.find(S::PushLarge, sys).and_then(|m| m.peak_rss_mib) {
            Some(v) => {
                let verdict = if v < RSS_LIMIT_MIB {
                    Verdict::Pass
                } else {
                    Verdict::Miss
                };
                let text = format!(
                    "{name} = {v:.1} MiB (target < 150 MB = {RSS_LIMIT_MIB:.0} MiB) {}",
                    verdict_str(&verdict)
                );
                t.push(&name, Some(v), verdict, text);
            }
            None => {
                let why = t.why_missing(S::PushLarge, &[sys]);
                t.push(
                    &name,
                    None,
                    Verdict::NotAvailable,
                    format!("{name}: N/A (target < 150 MB; {why})"),
                );
            }
        }
        // Growth while streaming big blobs: peak minus the RSS at the scenario's start.
        let name = format!("{} RSS growth while streaming big blobs", sys.name());
        let growth = [S::BlobGetLarge, S::PushLarge]
            .into_iter()
            .filter_map(|s| {
                let m = r.find(s, sys)?;
                Some((s, m.peak_rss_mib? - m.start_rss_mib?))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match growth {
            Some((s, g)) => {
                let verdict = if g <= RSS_GROWTH_SLACK_MIB {
                    Verdict::Pass
                } else {
                    Verdict::Miss
                };
                let text = format!(
                    "{name} = {g:+.1} MiB in {} (peak minus RSS at its start; target ≤ +{RSS_GROWTH_SLACK_MIB} MiB) {}",
                    s.id(),
                    verdict_str(&verdict)
                );
                t.push(&name, Some(g), verdict, text);
            }
            None => {
                let why = t.why_missing(S::PushLarge, &[sys]);
                t.push(&name, None, Verdict::NotAvailable, format!("{name}: N/A ({why})"));
            }
        }
    }
    t.lines
}

/// "YYYY-MM-DDTHH:MM:SSZ" of a Unix time.
pub fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn params() -> Params {
        Params {
            clients: 1,
            large_clients: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            small_blob: 1 << 20,
            large_blob: 256 << 20,
            push_size: 1 << 30,
            push_reps: 1,
            image_layer: 4096,
            tag_rate: 200,
            tag_read_rate: 2000,
            tag_duration: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            server_cpus: None,
            cpu_period: crate::cpulimit::DEFAULT_PERIOD,
            balance: crate::scenarios::Balance::Request,
        }
    }

    fn m(s: Scenario, k: SystemKind, rps: f64) -> Measurement {
        let mut m = Measurement::new(s.id(), k.name());
        m.ops_per_s = Some(rps);
        m.ops = 10;
        m
    }

    fn report(results: Vec<Measurement>) -> Report {
        Report {
            generated_unix: 0,
            generated_utc: utc(0),
            machine: serde_json::json!({}),
            note: String::new(),
            params: params(),
            scenarios: vec![],
            physical: None,
            systems: vec![SystemInfo {
                name: "berth-cluster3".into(),
                description: String::new(),
                status: "not_available".into(),
                note: Some("not available yet".into()),
                pids: vec![],
                peak_rss_mib: None,
            }],
            seaweedfs_peak_rss_mib: None,
            results,
            rounds: vec![],
            targets: vec![],
        }
    }

    #[test]
    fn with_rounds_the_median_of_the_paired_ratios_is_judged() {
        let mut r = report(vec![]);
        r.params.server_cpus = Some(0.25);
        // The single node's median is its third round, the cluster's its second: the
        // ratio of those (3000/1200 = 2.5) would pass; the rounds' own ratios are
        // 3.1, 2.0 and 2.2, whose median misses.
        for (round, one, three) in [(0u32, 1000.0, 3100.0), (1, 1500.0, 3000.0), (2, 1200.0, 2640.0)] {
            for (k, v) in [(SystemKind::BerthS3, one), (SystemKind::BerthCluster3, three)] {
                let mut x = m(Scenario::ManifestTag, k, v);
                x.round = Some(round);
                r.rounds.push(x);
            }
        }
        for k in [SystemKind::BerthS3, SystemKind::BerthCluster3] {
            let of: Vec<Measurement> = r.rounds.iter().filter(|x| x.system == k.name()).cloned().collect();
            r.results.extend(median_round(Scenario::ManifestTag, &of));
        }
        let lines = targets(&r);
        let line = lines
            .iter()
            .find(|l| l.target.starts_with("manifest GET by tag, 3 nodes round robin"))
            .unwrap();
        assert!((line.value.unwrap() - 2.2).abs() < 1e-9, "{line:?}");
        assert_eq!(line.verdict, Verdict::Miss);
        assert!(line.text.contains("3.10, 2.00, 2.20"), "{}", line.text);
    }

    #[test]
    fn the_median_round_is_the_middle_by_headline_and_the_worse_middle_of_an_even_count() {
        let rounds: Vec<Measurement> = [300.0, 100.0, 200.0]
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let mut x = m(Scenario::ManifestTag, SystemKind::BerthS3, v);
                x.round = Some(i as u32);
                x
            })
            .collect();
        let mid = median_round(Scenario::ManifestTag, &rounds).unwrap();
        assert_eq!((mid.ops_per_s, mid.round), (Some(200.0), Some(2)));
        let mid = median_round(Scenario::ManifestTag, &rounds[..2]).unwrap();
        assert_eq!(mid.ops_per_s, Some(100.0), "of 300 and 100 req/s, the slower");

        // Lower is better for wall time: of 4 s and 6 s, the worse is 6 s.
        let walls: Vec<Measurement> = [4.0, 6.0]
            .iter()
            .map(|&w| {
                let mut x = Measurement::new(Scenario::PushLarge.id(), SystemKind::BerthFs.name());
                x.wall_s = Some(w);
                x
            })
            .collect();
        assert_eq!(median_round(Scenario::PushLarge, &walls).unwrap().wall_s, Some(6.0));

        // A failed round is passed over while another round has a number.
        let failed = Measurement::failed(Scenario::ManifestTag.id(), SystemKind::BerthS3.name(), "boom");
        let mixed = vec![failed.clone(), rounds[0].clone()];
        assert_eq!(
            median_round(Scenario::ManifestTag, &mixed).unwrap().ops_per_s,
            Some(300.0)
        );
        assert_eq!(
            median_round(Scenario::ManifestTag, std::slice::from_ref(&failed))
                .unwrap()
                .outcome,
            Outcome::Error
        );
    }

    #[test]
    fn ratio_lines_pass_miss_and_not_available() {
        let r = report(vec![
            m(Scenario::ManifestTag, SystemKind::BerthFs, 4100.0),
            m(Scenario::ManifestTag, SystemKind::DistFs, 1000.0),
            m(Scenario::HeadBlob, SystemKind::BerthS3, 2000.0),
            m(Scenario::HeadBlob, SystemKind::DistS3Proxy, 1000.0),
        ]);
        let lines = targets(&r);
        let tag = &lines[0];
        assert_eq!(tag.verdict, Verdict::Pass);
        assert!(
            tag.text.contains("berth-fs/dist-fs = 4.10x (target ≥ 3x) PASS"),
            "{}",
            tag.text
        );
        let cluster = &lines[1];
        assert_eq!(cluster.verdict, Verdict::NotAvailable);
        assert!(cluster.text.contains("not available"), "{}", cluster.text);
        let head_proxy = lines.iter().find(|l| l.target.contains("dist-s3-proxy")).unwrap();
        assert_eq!(head_proxy.verdict, Verdict::Miss);
    }

    #[test]
    fn the_big_get_is_judged_against_loopback_and_shown_against_the_page_cache() {
        let mut get = Measurement::new(Scenario::BlobGetLarge.id(), SystemKind::BerthS3.name());
        get.mib_per_s = Some(2500.0);
        get.ops = 10;
        let mut r = report(vec![get]);
        r.physical = Some(Physical {
            bytes: 1 << 30,
            repetitions: 3,
            sha256_mib_per_s: 1000.0,
            sha256_s: 1.024,
            loopback_mib_per_s: 5000.0,
            loopback_s: 0.2048,
            disk_write_fsync_mib_per_s: 500.0,
            disk_write_fsync_s: 2.048,
            page_cache_send_mib_per_s: 2600.0,
            page_cache_send_s: 0.3938,
        });
        let lines = targets(&r);
        let judged = lines
            .iter()
            .find(|l| l.target == "blob GET 256 MiB: berth-s3/loopback copy (proxy mode, warm cache)")
            .unwrap();
        assert_eq!((judged.verdict.clone(), judged.value), (Verdict::Miss, Some(0.5)));
        let info = lines
            .iter()
            .find(|l| l.target == "blob GET 256 MiB: berth-s3/page-cache send")
            .unwrap();
        assert_eq!(info.verdict, Verdict::Info);
        assert!(info.text.contains("= 96% (2500 of 2600 MiB/s"), "{}", info.text);
        assert!(
            !lines.iter().any(|l| l.target.contains("berth-fs/page-cache")),
            "no line without a measurement"
        );
    }

    #[test]
    fn scaling_is_judged_only_when_every_server_has_its_own_cpu_budget() {
        let results = || {
            vec![
                m(Scenario::ManifestTag, SystemKind::BerthS3, 1000.0),
                m(Scenario::ManifestTag, SystemKind::BerthCluster3, 900.0),
            ]
        };
        let line = |r: &Report| {
            targets(r)
                .into_iter()
                .find(|l| l.target.contains("berth-cluster3/berth-s3"))
                .unwrap()
        };
        let shared = line(&report(results()));
        assert_eq!(shared.verdict, Verdict::Info, "{}", shared.text);
        assert!(shared.text.contains("shares this machine's cores"), "{}", shared.text);
        let mut budgeted = report(results());
        budgeted.params.server_cpus = Some(0.25);
        assert_eq!(line(&budgeted).verdict, Verdict::Miss);
    }

    #[test]
    fn rss_lines_use_peak_and_growth_within_the_scenario() {
        let mut push = m(Scenario::PushLarge, SystemKind::BerthFs, 1.0);
        push.peak_rss_mib = Some(60.0);
        push.start_rss_mib = Some(50.0);
        let mut get = m(Scenario::BlobGetLarge, SystemKind::BerthFs, 1.0);
        get.peak_rss_mib = Some(52.0);
        get.start_rss_mib = Some(49.0);
        let lines = targets(&report(vec![push, get]));
        let peak = lines
            .iter()
            .find(|l| l.target.starts_with("berth-fs peak RSS"))
            .unwrap();
        assert_eq!((peak.verdict.clone(), peak.value), (Verdict::Pass, Some(60.0)));
        let growth = lines
            .iter()
            .find(|l| l.target.starts_with("berth-fs RSS growth"))
            .unwrap();
        assert_eq!((growth.verdict.clone(), growth.value), (Verdict::Pass, Some(10.0)));
        assert!(growth.text.contains("+10.0 MiB in push-large"), "{}", growth.text);
    }

    #[test]
    fn table_marks_missing_systems() {
        let r = report(vec![m(Scenario::ManifestTag, SystemKind::BerthFs, 10.0)]);
        let text = render(&r, &[SystemKind::BerthFs, SystemKind::DistFs], &[Scenario::ManifestTag]);
        assert!(text.contains("manifest GET by tag"), "{text}");
        assert!(text.contains("10.00"), "{text}");
    }

    #[test]
    fn recorded_reports_get_their_recorded_verdicts() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        for name in ["report-shared-cores", "report-scaling", "report-partial"] {
            let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
            let r: Report = serde_json::from_str(&text).unwrap();
            let got = targets(&r);
            let want: Vec<serde_json::Value> =
                serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.verdicts.json"))).unwrap())
                    .unwrap();
            assert_eq!(got.len(), want.len(), "{name}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.target, w["target"].as_str().unwrap(), "{name}");
                assert_eq!(serde_json::json!(g.verdict), w["verdict"], "{name}: {}", g.target);
                // JSON numbers come back within an ulp or so.
                match (g.value, w["value"].as_f64()) {
                    (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{}", g.target),
                    (a, b) => assert_eq!(a, b, "{name}: {}", g.target),
                }
            }
        }
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_795_737_600), "2026-11-27T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
