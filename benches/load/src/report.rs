//! The report: a table per scenario and system, the target lines (judged by
//! [`crate::targets`]), and the JSON.

use std::fmt::Write as _;

use serde::Deserialize;
use serde::Serialize;

use crate::physical::Physical;
use crate::scenarios::Params;
use crate::scenarios::Scenario;
use crate::stats::Measurement;
use crate::stats::Outcome;
use crate::systems::SystemKind;

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
pub(crate) fn worse_middle<T>(mut scored: Vec<(f64, T)>) -> Option<T> {
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let middle = scored.len().checked_sub(1)? / 2;
    scored.into_iter().nth(middle).map(|(_, item)| item)
}

/// A number with 3 significant digits or more (no decimals from 1000 on).
pub(crate) fn f(v: f64) -> String {
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
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    pub(crate) fn params() -> Params {
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

    /// A measurement of `rps` requests per second.
    pub(crate) fn m(s: Scenario, k: SystemKind, rps: f64) -> Measurement {
        let mut m = Measurement::new(s.id(), k.name());
        m.ops_per_s = Some(rps);
        m.ops = 10;
        m
    }

    /// A report of `results` in which berth-cluster3 was not available.
    pub(crate) fn report(results: Vec<Measurement>) -> Report {
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
    fn table_marks_missing_systems() {
        let r = report(vec![m(Scenario::ManifestTag, SystemKind::BerthFs, 10.0)]);
        let text = render(&r, &[SystemKind::BerthFs, SystemKind::DistFs], &[Scenario::ManifestTag]);
        assert!(text.contains("manifest GET by tag"), "{text}");
        assert!(text.contains("10.00"), "{text}");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_795_737_600), "2026-11-27T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
