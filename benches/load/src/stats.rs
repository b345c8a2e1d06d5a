//! Latency histograms and the per-scenario measurement that goes into the report.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Deserialize;
use serde::Serialize;

/// Latencies in microseconds, 1 µs .. 10 min, 3 significant digits.
#[derive(Clone)]
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Latencies {
        // Constant bounds that hdrhistogram accepts (low >= 1, high >= 2*low, sigfig <= 5).
        let hist = Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid");
        Latencies { hist }
    }

    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(us);
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides: `add` only fails on incompatible bounds.
        let _ = self.hist.add(&other.hist);
    }

    /// Percentile `q` (0..=100) in milliseconds, `None` without samples.
    pub fn pct_ms(&self, q: f64) -> Option<f64> {
        if self.hist.is_empty() {
            return None;
        }
        Some(self.hist.value_at_percentile(q) as f64 / 1000.0)
    }

    pub fn max_ms(&self) -> Option<f64> {
        if self.hist.is_empty() {
            return None;
        }
        Some(self.hist.max() as f64 / 1000.0)
    }
}

/// Outcome of one scenario on one system.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Ran; numbers are valid (there may still be a few errors, see `errors`).
    Ok,
    /// Could not be measured: every request failed, or the setup failed.
    Error,
    /// Not measured because the system is not available or not selected.
    NotAvailable,
}

/// The numbers of one scenario on one system. Fields that do not apply are `None`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub scenario: String,
    pub system: String,
    pub outcome: Outcome,
    /// Why it failed or is not available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Completed operations (requests, images, pushes) in the measured window.
    pub ops: u64,
    pub errors: u64,
    /// Length of the measured window, seconds.
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_per_s: Option<f64>,
    /// Payload bytes per second, MiB/s (blob transfers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mib_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    /// Wall time of one operation (the big push), seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<f64>,
    /// Read-back throughput of the big pushed blob, MiB/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readback_mib_per_s: Option<f64>,
    /// Peak RSS of the server process(es) while this scenario ran, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    /// Their RSS when the scenario began, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_rss_mib: Option<f64>,
    /// CPU time (user + system) the server process(es) used during the scenario,
    /// seconds, summed over processes (warm-up included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    /// That CPU time per counted operation (read scenarios: warm-up requests are not
    /// counted, so this slightly overstates), microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_op: Option<f64>,
    /// Operations that were due but could not start (open-loop scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// Reads alongside the writes (`tag-writes-reads`): per second, latency, errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_errors: Option<u64>,
    /// Redirects the read client followed (Distribution's redirect mode: to S3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirects: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// With `--server-cpus`: the smallest share, over the system's servers, of CFS
    /// periods that ended throttled while the scenario ran (1: every server used
    /// its whole budget all along).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttled_share: Option<f64>,
    /// With `--rounds` above 1: the round (from 0) this measurement comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
}

impl Measurement {
    pub fn new(scenario: &str, system: &str) -> Measurement {
        Measurement {
            scenario: scenario.to_owned(),
            system: system.to_owned(),
            outcome: Outcome::Ok,
            note: None,
            ops: 0,
            errors: 0,
            elapsed_s: 0.0,
            ops_per_s: None,
            mib_per_s: None,
            p50_ms: None,
            p99_ms: None,
            max_ms: None,
            wall_s: None,
            readback_mib_per_s: None,
            peak_rss_mib: None,
            start_rss_mib: None,
            server_cpu_s: None,
            cpu_us_per_op: None,
            dropped: None,
            reads_per_s: None,
            read_p50_ms: None,
            read_p99_ms: None,
            read_errors: None,
            redirects: None,
            first_error: None,
            throttled_share: None,
            round: None,
        }
    }

    pub fn failed(scenario: &str, system: &str, note: impl Into<String>) -> Measurement {
        let mut m = Measurement::new(scenario, system);
        m.outcome = Outcome::Error;
        m.note = Some(note.into());
        m
    }

    pub fn not_available(scenario: &str, system: &str, note: impl Into<String>) -> Measurement {
        let mut m = Measurement::new(scenario, system);
        m.outcome = Outcome::NotAvailable;
        m.note = Some(note.into());
        m
    }

    pub fn set_latencies(&mut self, lat: &Latencies) {
        self.p50_ms = lat.pct_ms(50.0);
        self.p99_ms = lat.pct_ms(99.0);
        self.max_ms = lat.max_ms();
    }
}

/// MiB/s of `bytes` moved in `elapsed`.
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> Option<f64> {
    let s = elapsed.as_secs_f64();
    if s <= 0.0 {
        return None;
    }
    Some(bytes as f64 / (1024.0 * 1024.0) / s)
}

/// Median of a non-empty slice (`None` when empty).
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    Some(values[values.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let mut l = Latencies::new();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        let p50 = l.pct_ms(50.0).unwrap();
        let p99 = l.pct_ms(99.0).unwrap();
        assert!((49.0..=51.0).contains(&p50), "{p50}");
        assert!((98.0..=100.5).contains(&p99), "{p99}");
        let mut other = Latencies::new();
        other.record(Duration::from_secs(2));
        l.merge(&other);
        assert!(l.max_ms().unwrap() >= 1999.0);
    }

    #[test]
    fn empty_histogram_has_no_percentiles() {
        assert_eq!(Latencies::new().pct_ms(50.0), None);
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
    }

    #[test]
    fn throughput_in_mib_per_second() {
        assert_eq!(mib_per_s(10 * 1024 * 1024, Duration::from_secs(2)), Some(5.0));
        assert_eq!(mib_per_s(1, Duration::ZERO), None);
    }
}
