//! The targets: read from a TOML file (`benches/targets.toml`, `--targets`) and
//! judged against a report's measurements by one generic evaluator ([`judge`]).
//!
//! A target names a metric of one scenario on one system and compares it, or its
//! ratio to a reference (another system's same metric, the most demanding of
//! several systems, or a sum of physical references), with a threshold. The file
//! is checked as a whole when it is read ([`load`]): a scenario, system, metric or
//! physical reference that does not exist, a threshold in a unit that does not fit
//! the comparison, or an unknown `{placeholder}` is an error before anything runs.

use std::path::Path;

use anyhow::Context;
use anyhow::bail;
use anyhow::ensure;
use serde::Deserialize;

use crate::physical::Physical;
use crate::report::Report;
use crate::report::TargetLine;
use crate::report::Verdict;
use crate::report::worse_middle;
use crate::scenarios::Balance;
use crate::scenarios::Params;
use crate::scenarios::Scenario;
use crate::scenarios::size;
use crate::stats::Measurement;
use crate::stats::Outcome;
use crate::systems::SystemKind;

/// The file's shape: `[[target]]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    target: Vec<Target>,
}

/// One `[[target]]`: one line of the report's target section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The line's name (JSON `target`), with `{parameter}` placeholders.
    pub name: String,
    /// The scenario measured, or (`scenarios`) several, of which the worst counts.
    #[serde(default)]
    scenario: Option<Scenario>,
    #[serde(default)]
    scenarios: Vec<Scenario>,
    pub system: SystemKind,
    pub metric: Metric,
    /// What the metric is divided by; none: the metric itself is compared.
    #[serde(default)]
    against: Option<Against>,
    #[serde(default)]
    want: Option<Want>,
    /// How the value prints when there is no `want` (whose unit decides otherwise).
    #[serde(default)]
    unit: Option<Unit>,
    /// Shown for context: never PASS or MISS.
    #[serde(default)]
    pub info: bool,
    #[serde(default)]
    if_missing: IfMissing,
    /// Judged only when every server has a CPU budget of its own (`--server-cpus`):
    /// servers sharing this machine's cores cannot sum to more than one of them, so
    /// a miss without budgets is only information.
    #[serde(default)]
    needs_server_cpus: bool,
    /// Extra words in the line's parentheses.
    #[serde(default)]
    note: Option<String>,
}

/// The reference a target's metric is divided by.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Against {
    /// Another system's same metric on the same scenario.
    #[serde(default)]
    system: Option<SystemKind>,
    /// The most demanding of several systems' (the one that makes the ratio worst).
    #[serde(default)]
    systems: Vec<SystemKind>,
    /// The sum of physical references.
    #[serde(default)]
    physical: Vec<PhysicalRef>,
    /// The parameter (a size in bytes) the physical references must have been
    /// measured on: times of other amounts of bytes do not compare.
    #[serde(default)]
    of_bytes: Option<SizeParam>,
}

/// What a line is compared with, once the file is checked.
enum Reference<'a> {
    Absolute,
    Systems(&'a [SystemKind]),
    Physical(&'a [PhysicalRef], Option<SizeParam>),
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum IfMissing {
    /// An `N/A` line that says why.
    #[default]
    #[serde(rename = "n/a")]
    NotAvailable,
    /// No line.
    Skip,
}

/// A number of a [`Measurement`] that targets can name: its id in the file (the
/// report's JSON field, where there is one), how it is read, what it counts, and
/// whether a scenario yields it (when it succeeds).
pub struct MetricDef(
    pub &'static str,
    fn(&Measurement) -> Option<f64>,
    Quantity,
    fn(Scenario) -> bool,
);

fn any(_: Scenario) -> bool {
    true
}

fn not_push_large(s: Scenario) -> bool {
    s != Scenario::PushLarge
}

fn push_large(s: Scenario) -> bool {
    s == Scenario::PushLarge
}

fn tag_reads(s: Scenario) -> bool {
    s == Scenario::TagWritesReads
}

fn moves_blobs(s: Scenario) -> bool {
    use Scenario as S;
    matches!(
        s,
        S::BlobGetSmall | S::BlobGetSmallRange | S::BlobGetLarge | S::BlobGetLargeRange | S::PushLarge
    )
}

pub const METRICS: &[MetricDef] = &[
    MetricDef("ops_per_s", |m| m.ops_per_s, Quantity::PerSecond, not_push_large),
    MetricDef("mib_per_s", |m| m.mib_per_s, Quantity::MibPerSecond, moves_blobs),
    MetricDef("wall_s", |m| m.wall_s, Quantity::Seconds, push_large),
    MetricDef(
        "readback_mib_per_s",
        |m| m.readback_mib_per_s,
        Quantity::MibPerSecond,
        push_large,
    ),
    MetricDef("p50_ms", |m| m.p50_ms, Quantity::Millis, not_push_large),
    MetricDef("p99_ms", |m| m.p99_ms, Quantity::Millis, not_push_large),
    MetricDef("reads_per_s", |m| m.reads_per_s, Quantity::PerSecond, tag_reads),
    MetricDef("read_p99_ms", |m| m.read_p99_ms, Quantity::Millis, tag_reads),
    MetricDef("peak_rss_mib", |m| m.peak_rss_mib, Quantity::Mib, any),
    // Peak RSS minus the RSS at the scenario's start.
    MetricDef(
        "rss_growth_mib",
        |m| Some(m.peak_rss_mib? - m.start_rss_mib?),
        Quantity::Mib,
        any,
    ),
    MetricDef("cpu_us_per_op", |m| m.cpu_us_per_op, Quantity::Micros, any),
];

/// One of [`METRICS`], named by its id in the file.
#[derive(Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct Metric(&'static MetricDef);

impl TryFrom<String> for Metric {
    type Error = String;

    fn try_from(id: String) -> Result<Metric, String> {
        let known = METRICS.iter().find(|m| m.0 == id).map(Metric);
        known.ok_or_else(|| format!("unknown metric {id:?} (berth-bench --list prints them)"))
    }
}

impl std::fmt::Debug for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.0)
    }
}

impl Metric {
    pub fn id(self) -> &'static str {
        self.0.0
    }

    pub fn of(self, m: &Measurement) -> Option<f64> {
        (self.0.1)(m)
    }

    fn unit(self) -> Quantity {
        self.0.2
    }

    pub fn measured_by(self, s: Scenario) -> bool {
        (self.0.3)(s)
    }
}

/// A physical reference of [`Physical`], named by its field.
#[derive(Debug)]
pub struct PhysicalDef(&'static str, fn(&Physical) -> f64, Quantity);

/// One of [`PHYSICAL`], named by its field in the file.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct PhysicalRef(&'static PhysicalDef);

const PHYSICAL: &[PhysicalDef] = &[
    PhysicalDef("sha256_mib_per_s", |p| p.sha256_mib_per_s, Quantity::MibPerSecond),
    PhysicalDef("sha256_s", |p| p.sha256_s, Quantity::Seconds),
    PhysicalDef("loopback_mib_per_s", |p| p.loopback_mib_per_s, Quantity::MibPerSecond),
    PhysicalDef("loopback_s", |p| p.loopback_s, Quantity::Seconds),
    PhysicalDef(
        "disk_write_fsync_mib_per_s",
        |p| p.disk_write_fsync_mib_per_s,
        Quantity::MibPerSecond,
    ),
    PhysicalDef("disk_write_fsync_s", |p| p.disk_write_fsync_s, Quantity::Seconds),
    PhysicalDef(
        "page_cache_send_mib_per_s",
        |p| p.page_cache_send_mib_per_s,
        Quantity::MibPerSecond,
    ),
    PhysicalDef("page_cache_send_s", |p| p.page_cache_send_s, Quantity::Seconds),
];

impl TryFrom<String> for PhysicalRef {
    type Error = String;

    fn try_from(id: String) -> Result<PhysicalRef, String> {
        let known = PHYSICAL.iter().find(|p| p.0 == id).map(PhysicalRef);
        known.ok_or_else(|| format!("unknown physical reference {id:?}"))
    }
}

impl PhysicalRef {
    fn of(self, p: &Physical) -> f64 {
        (self.0.1)(p)
    }

    fn unit(self) -> Quantity {
        self.0.2
    }
}

/// A size parameter of the run, in bytes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum SizeParam {
    SmallBlob,
    LargeBlob,
    PushSize,
}

impl SizeParam {
    fn of(self, p: &Params) -> u64 {
        match self {
            SizeParam::SmallBlob => p.small_blob,
            SizeParam::LargeBlob => p.large_blob,
            SizeParam::PushSize => p.push_size,
        }
    }
}

/// What a metric or physical reference counts, and how its numbers print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantity {
    PerSecond,
    MibPerSecond,
    Seconds,
    Millis,
    Micros,
    Mib,
}

impl Quantity {
    fn show(self, v: f64) -> String {
        match self {
            Quantity::PerSecond => format!("{} req/s", crate::report::f(v)),
            Quantity::MibPerSecond => format!("{} MiB/s", crate::report::f(v)),
            Quantity::Seconds => format!("{v:.2} s"),
            Quantity::Millis => format!("{v:.2} ms"),
            Quantity::Micros => format!("{v:.1} µs"),
            Quantity::Mib => format!("{v:.1} MiB"),
        }
    }

    /// "a / b unit" (or "a of b unit") of two numbers of this quantity.
    fn show_pair(self, a: f64, b: f64, joint: &str) -> String {
        let a = self.show(a);
        let b = self.show(b);
        // The unit once, after the second number.
        let bare = a.split_once(' ').map_or(a.as_str(), |(n, _)| n);
        format!("{bare} {joint} {b}")
    }
}

/// How a line's value prints, and the unit its threshold is written in.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
enum Unit {
    /// A ratio, "2.50x".
    Times,
    /// A ratio as a share, "90%".
    Percent,
    Seconds,
    Millis,
    /// Megabytes (10^6) in a threshold; values print in MiB.
    Megabytes,
    Mebibytes,
}

impl TryFrom<String> for Unit {
    type Error = String;

    fn try_from(s: String) -> Result<Unit, String> {
        Ok(match s.as_str() {
            "x" => Unit::Times,
            "%" => Unit::Percent,
            "s" => Unit::Seconds,
            "ms" => Unit::Millis,
            "MB" => Unit::Megabytes,
            "MiB" => Unit::Mebibytes,
            _ => return Err(format!("unit {s:?} is none of x, %, s, ms, MB, MiB")),
        })
    }
}

impl Unit {
    fn is_ratio(self) -> bool {
        matches!(self, Unit::Times | Unit::Percent)
    }

    /// The quantity an absolute threshold in this unit compares with.
    fn quantity(self) -> Option<Quantity> {
        match self {
            Unit::Times | Unit::Percent => None,
            Unit::Seconds => Some(Quantity::Seconds),
            Unit::Millis => Some(Quantity::Millis),
            Unit::Megabytes | Unit::Mebibytes => Some(Quantity::Mib),
        }
    }

    /// `written` (a number in this unit) as the metric's or ratio's own number.
    fn internal(self, written: f64) -> f64 {
        match self {
            Unit::Percent => written / 100.0,
            Unit::Megabytes => written * 1e6 / (1024.0 * 1024.0),
            _ => written,
        }
    }

    fn show(self, v: f64, signed: bool) -> String {
        match self {
            Unit::Times => format!("{v:.2}x"),
            Unit::Percent => format!("{:.0}%", v * 100.0),
            Unit::Seconds => format!("{v:.2} s"),
            Unit::Millis => format!("{v:.2} ms"),
            Unit::Megabytes | Unit::Mebibytes if signed => format!("{v:+.1} MiB"),
            Unit::Megabytes | Unit::Mebibytes => format!("{v:.1} MiB"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    AtLeast,
    MoreThan,
    AtMost,
    LessThan,
}

impl Op {
    fn holds(self, v: f64, bound: f64) -> bool {
        match self {
            Op::AtLeast => v >= bound,
            Op::MoreThan => v > bound,
            Op::AtMost => v <= bound,
            Op::LessThan => v < bound,
        }
    }

    /// Whether a larger value is the better one.
    fn more_is_better(self) -> bool {
        matches!(self, Op::AtLeast | Op::MoreThan)
    }

    fn sign(self) -> &'static str {
        match self {
            Op::AtLeast => "≥",
            Op::MoreThan => ">",
            Op::AtMost => "≤",
            Op::LessThan => "<",
        }
    }
}

/// A comparison and threshold as written: ">= 3x", "< 150 MB".
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
struct Want {
    op: Op,
    written: f64,
    unit: Unit,
}

impl TryFrom<String> for Want {
    type Error = String;

    fn try_from(s: String) -> Result<Want, String> {
        let t = s.trim();
        let (op, rest) = [
            (">=", Op::AtLeast),
            ("≥", Op::AtLeast),
            ("<=", Op::AtMost),
            ("≤", Op::AtMost),
            (">", Op::MoreThan),
            ("<", Op::LessThan),
        ]
        .into_iter()
        .find_map(|(sign, op)| t.strip_prefix(sign).map(|rest| (op, rest.trim())))
        .ok_or_else(|| format!("want {s:?}: starts with none of >=, <=, >, <"))?;
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, unit) = (&rest[..split], rest[split..].trim());
        let written: f64 = number
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| format!("want {s:?}: no number"))?;
        let unit = Unit::try_from(unit.to_owned()).map_err(|e| format!("want {s:?}: {e}"))?;
        Ok(Want { op, written, unit })
    }
}

impl Want {
    fn bound(&self) -> f64 {
        self.unit.internal(self.written)
    }

    fn holds(&self, v: f64) -> bool {
        self.op.holds(v, self.bound())
    }

    /// "target ≥ 3x", "target < 150 MB = 143 MiB".
    fn show(&self) -> String {
        let unit = match self.unit {
            Unit::Times => "x",
            Unit::Percent => "%",
            Unit::Seconds => " s",
            Unit::Millis => " ms",
            Unit::Megabytes => " MB",
            Unit::Mebibytes => " MiB",
        };
        let converted = match self.unit {
            Unit::Megabytes => format!(" = {:.0} MiB", self.bound()),
            _ => String::new(),
        };
        format!("target {} {}{unit}{converted}", self.op.sign(), self.written)
    }
}

/// The targets of `path`, checked (see the module docs).
pub fn load(path: &Path) -> anyhow::Result<Vec<Target>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the targets {}", path.display()))?;
    parse(&text).with_context(|| format!("targets file {}", path.display()))
}

/// The targets of a file's text, checked.
pub fn parse(text: &str) -> anyhow::Result<Vec<Target>> {
    let file: TargetFile = toml::from_str(text)?;
    for t in &file.target {
        t.check().with_context(|| format!("target {:?}", t.name))?;
    }
    Ok(file.target)
}

impl Target {
    fn scenarios(&self) -> Vec<Scenario> {
        self.scenario
            .iter()
            .copied()
            .chain(self.scenarios.iter().copied())
            .collect()
    }

    fn reference(&self) -> Reference<'_> {
        match &self.against {
            None => Reference::Absolute,
            Some(a) if !a.physical.is_empty() => Reference::Physical(&a.physical, a.of_bytes),
            Some(a) => match &a.system {
                Some(one) => Reference::Systems(std::slice::from_ref(one)),
                None => Reference::Systems(&a.systems),
            },
        }
    }

    /// The unit the value prints in.
    fn unit(&self) -> Unit {
        let own = match self.metric.unit() {
            Quantity::Seconds => Unit::Seconds,
            Quantity::Millis => Unit::Millis,
            Quantity::Mib => Unit::Mebibytes,
            _ => Unit::Times,
        };
        let default = if self.against.is_some() { Unit::Times } else { own };
        self.want.as_ref().map(|w| w.unit).or(self.unit).unwrap_or(default)
    }

    fn check(&self) -> anyhow::Result<()> {
        let scenarios = self.scenarios();
        ensure!(
            !scenarios.is_empty() && (self.scenario.is_none() || self.scenarios.is_empty()),
            "give either `scenario` or `scenarios`"
        );
        for s in &scenarios {
            ensure!(
                self.metric.measured_by(*s),
                "scenario {} does not measure {}",
                s.id(),
                self.metric.id()
            );
        }
        ensure!(
            self.want.is_some() || self.info,
            "a target without `want` must be `info`"
        );
        if let Some(a) = &self.against {
            let kinds = usize::from(a.system.is_some())
                + usize::from(!a.systems.is_empty())
                + usize::from(!a.physical.is_empty());
            ensure!(kinds == 1, "`against` takes one of `system`, `systems`, `physical`");
            ensure!(
                a.of_bytes.is_none() || !a.physical.is_empty(),
                "`of_bytes` belongs to `physical`"
            );
            for p in &a.physical {
                ensure!(
                    p.unit() == self.metric.unit(),
                    "a physical reference in other units than {}",
                    self.metric.id()
                );
            }
            ensure!(self.unit().is_ratio(), "a ratio is shown in x or %");
        } else {
            ensure!(
                self.unit.is_none(),
                "`unit` is for ratios (a threshold's unit decides otherwise)"
            );
            ensure!(
                self.unit().quantity() == Some(self.metric.unit()),
                "the threshold's unit does not measure {}",
                self.metric.id()
            );
        }
        let rest = PLACEHOLDERS
            .iter()
            .fold(self.name.clone(), |n, (token, _)| n.replace(token, ""));
        ensure!(!rest.contains(['{', '}']), "unknown placeholder in {:?}", self.name);
        Ok(())
    }
}

/// A run parameter as a name shows it.
type Shown = fn(&Params) -> String;

/// The `{placeholders}` of names and the run parameters they stand for.
const PLACEHOLDERS: &[(&str, Shown)] = &[
    ("{small_blob}", |p| size(p.small_blob)),
    ("{large_blob}", |p| size(p.large_blob)),
    ("{push}", |p| size(p.push_size)),
    ("{tag_rate}", |p| p.tag_rate.to_string()),
    ("{tag_read_rate}", |p| p.tag_read_rate.to_string()),
    ("{clients}", |p| p.clients.to_string()),
    ("{balance}", |p| match p.balance {
        Balance::Request => "request".into(),
        Balance::Connection => "connection".into(),
    }),
];

/// `name` with the run's parameters put in.
fn expand(name: &str, p: &Params) -> String {
    PLACEHOLDERS
        .iter()
        .fold(name.to_owned(), |n, (token, value)| n.replace(token, &value(p)))
}

/// A line's measured value and what it was computed from.
struct Value {
    v: f64,
    /// The scenario it comes from, when the target looks at several.
    scenario: Scenario,
    /// "a / b unit" of a ratio (absent when the value is a median of rounds).
    numbers: Option<String>,
    /// The reference system chosen among several.
    chosen: Option<SystemKind>,
    /// The rounds' ratios whose median `v` is.
    rounds: Vec<f64>,
}

/// Every target's line for the report `r`, in the file's order.
pub fn judge(targets: &[Target], r: &Report) -> Vec<TargetLine> {
    targets.iter().filter_map(|t| line(t, r)).collect()
}

fn line(t: &Target, r: &Report) -> Option<TargetLine> {
    let name = expand(&t.name, &r.params);
    let more_is_better = t.want.as_ref().is_none_or(|w| w.op.more_is_better());
    // Of several scenarios, the worst value counts.
    let value = t.scenarios().into_iter().filter_map(|s| value(t, r, s)).reduce(|a, b| {
        let b_worse = if more_is_better { b.v < a.v } else { b.v > a.v };
        if b_worse { b } else { a }
    });
    let target_text = t.want.as_ref().map(Want::show);
    let Some(value) = value else {
        if t.if_missing == IfMissing::Skip {
            return None;
        }
        let why = why_missing(r, &t.scenarios(), &involved(t));
        let text = match &target_text {
            Some(w) => format!("{name}: N/A ({w}; {why})"),
            None => format!("{name}: N/A ({why})"),
        };
        return Some(TargetLine {
            target: name,
            value: None,
            verdict: Verdict::NotAvailable,
            text,
        });
    };
    let met = t.want.as_ref().map(|w| w.holds(value.v));
    let shared = t.needs_server_cpus && r.params.server_cpus.is_none();
    let verdict = match met {
        _ if t.info => Verdict::Info,
        None => Verdict::Info,
        Some(true) => Verdict::Pass,
        Some(false) if shared => Verdict::Info,
        Some(false) => Verdict::Miss,
    };
    let mut parts: Vec<String> = Vec::new();
    if let Some(n) = &value.numbers {
        let of = value.chosen.map_or(String::new(), |k| format!(" against {}", k.name()));
        parts.push(format!("{n}{of}"));
    }
    if t.scenarios().len() > 1 {
        parts.push(format!("in {}", value.scenario.id()));
    }
    parts.extend(t.note.clone());
    parts.extend(target_text);
    if shared && met == Some(false) && !t.info {
        parts.push("every server shares this machine's cores: see the run with --server-cpus".into());
    }
    if !value.rounds.is_empty() {
        let each: Vec<String> = value.rounds.iter().map(|x| format!("{x:.2}")).collect();
        parts.push(format!("median of the rounds' ratios {}", each.join(", ")));
    }
    let signed = t.metric.id() == "rss_growth_mib";
    let shown = t.unit().show(value.v, signed);
    let text = if parts.is_empty() {
        format!("{name} = {shown} {}", verdict_str(&verdict))
    } else {
        format!("{name} = {shown} ({}) {}", parts.join("; "), verdict_str(&verdict))
    };
    Some(TargetLine {
        target: name,
        value: Some(value.v),
        verdict,
        text,
    })
}

/// The systems whose absence explains a missing line.
fn involved(t: &Target) -> Vec<SystemKind> {
    let mut all = vec![t.system];
    if let Reference::Systems(others) = t.reference() {
        all.extend_from_slice(others);
    }
    all
}

/// The value of target `t` in scenario `s`, if everything it needs was measured.
fn value(t: &Target, r: &Report, s: Scenario) -> Option<Value> {
    let a = r.find(s, t.system).and_then(|m| t.metric.of(m))?;
    let more_is_better = t.want.as_ref().is_none_or(|w| w.op.more_is_better());
    let (b, chosen) = match t.reference() {
        Reference::Absolute => {
            return Some(Value {
                v: a,
                scenario: s,
                numbers: None,
                chosen: None,
                rounds: vec![],
            });
        }
        Reference::Physical(refs, of_bytes) => {
            let p = r.physical.as_ref()?;
            if of_bytes.is_some_and(|param| param.of(&r.params) != p.bytes) {
                return None;
            }
            (refs.iter().map(|x| x.of(p)).sum::<f64>(), None)
        }
        Reference::Systems(systems) => {
            let found = systems
                .iter()
                .filter_map(|&k| r.find(s, k).and_then(|m| t.metric.of(m)).map(|v| (k, v)));
            let (k, b) = most_demanding(found, more_is_better)?;
            (b, (systems.len() > 1).then_some(k))
        }
    };
    if b <= 0.0 {
        return None;
    }
    // With rounds, the systems ran one after the other within each round: the ratio
    // of each round cancels what drifted between rounds, and their median (of an
    // even count, the worse middle one) is judged.
    let rounds = match t.reference() {
        Reference::Systems(systems) => paired_ratios(r, s, t.system, systems, t.metric, more_is_better),
        _ => vec![],
    };
    let of_rounds = worse_middle(
        rounds
            .iter()
            .map(|&x| (if more_is_better { x } else { -x }, x))
            .collect(),
    );
    let joint = if t.unit() == Unit::Percent { "of" } else { "/" };
    Some(Value {
        v: of_rounds.unwrap_or(a / b),
        scenario: s,
        numbers: of_rounds.is_none().then(|| t.metric.unit().show_pair(a, b, joint)),
        chosen,
        rounds: if of_rounds.is_some() { rounds } else { vec![] },
    })
}

/// Of `(system, value)` references, the one that makes the ratio worst: the
/// largest when more is better, else the smallest.
fn most_demanding(found: impl Iterator<Item = (SystemKind, f64)>, more_is_better: bool) -> Option<(SystemKind, f64)> {
    found.reduce(|a, b| {
        let b_harder = if more_is_better { b.1 > a.1 } else { b.1 < a.1 };
        if b_harder { b } else { a }
    })
}

/// `num`'s metric over the reference's in each round both have a number for, in
/// round order (empty without rounds).
fn paired_ratios(
    r: &Report,
    s: Scenario,
    num: SystemKind,
    den: &[SystemKind],
    metric: Metric,
    more_is_better: bool,
) -> Vec<f64> {
    let of = |sys: SystemKind, round: u32| {
        r.rounds
            .iter()
            .find(|m| {
                m.scenario == s.id() && m.system == sys.name() && m.round == Some(round) && m.outcome == Outcome::Ok
            })
            .and_then(|m| metric.of(m))
    };
    let last = r.rounds.iter().filter_map(|m| m.round).max();
    (0..last.map_or(0, |l| l + 1))
        .filter_map(|round| {
            let a = of(num, round)?;
            let found = den.iter().filter_map(|&k| of(k, round).map(|v| (k, v)));
            let (_, b) = most_demanding(found, more_is_better)?;
            (b > 0.0).then(|| a / b)
        })
        .collect()
}

/// Why no value: the first system of `systems` not measured in the first scenario
/// that lacks one.
fn why_missing(r: &Report, scenarios: &[Scenario], systems: &[SystemKind]) -> String {
    for &s in scenarios {
        for &sys in systems {
            if r.find(s, sys).is_none() {
                let info = r.systems.iter().find(|i| i.name == sys.name());
                return match info {
                    Some(i) if i.status != "ran" => format!("{}: {}", sys.name(), i.status.replace('_', " ")),
                    None => format!("{} not selected", sys.name()),
                    _ => format!("{} on {} not measured", s.id(), sys.name()),
                };
            }
        }
    }
    "not measured".into()
}

fn verdict_str(v: &Verdict) -> &'static str {
    match v {
        Verdict::Pass => "PASS",
        Verdict::Miss => "MISS",
        Verdict::NotAvailable => "N/A",
        Verdict::Info => "info",
    }
}

/// A report read back from its JSON (`--judge`).
pub fn read_report(path: &Path) -> anyhow::Result<Report> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let r: Report =
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not a berth-bench report", path.display()))?;
    if r.results.is_empty() {
        bail!("{} holds no measurements", path.display());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::median_round;
    use crate::report::tests::m;
    use crate::report::tests::params;
    use crate::report::tests::report;

    const SHIPPED: &str = include_str!("../../targets.toml");

    fn shipped() -> Vec<Target> {
        parse(SHIPPED).expect("the shipped targets parse")
    }

    fn judged(r: &Report) -> Vec<TargetLine> {
        judge(&shipped(), r)
    }

    fn find<'a>(lines: &'a [TargetLine], starts: &str) -> &'a TargetLine {
        lines
            .iter()
            .find(|l| l.target.starts_with(starts))
            .unwrap_or_else(|| panic!("no line {starts:?} in {lines:#?}"))
    }

    #[test]
    fn the_shipped_targets_parse_and_name_only_what_exists() {
        let targets = shipped();
        assert_eq!(targets.len(), 22);
        let names: std::collections::BTreeSet<String> = targets.iter().map(|t| expand(&t.name, &params())).collect();
        assert_eq!(names.len(), targets.len(), "every line has its own name");
        for t in &targets {
            assert!(!expand(&t.name, &params()).contains('{'), "{}", t.name);
            for s in t.scenarios() {
                assert!(Scenario::ALL.contains(&s));
                assert!(t.metric.measured_by(s), "{}: {} in {}", t.name, t.metric.id(), s.id());
            }
            assert!(SystemKind::ALL.contains(&t.system));
            assert!(METRICS.iter().any(|m| m.0 == t.metric.id()));
        }
    }

    #[test]
    fn names_take_the_run_parameters() {
        let mut p = params();
        p.balance = Balance::Connection;
        p.large_blob = 32 << 20;
        assert_eq!(
            expand("GET {large_blob}, {tag_rate}/s, by {balance}, push {push}", &p),
            "GET 32 MiB, 200/s, by connection, push 1 GiB"
        );
    }

    /// (target, value, verdict) of every line the judging code gave for a recorded
    /// report before the targets moved into `benches/targets.toml`.
    fn recorded_verdicts(name: &str) -> Vec<(String, Option<f64>, Verdict)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let text = std::fs::read_to_string(dir.join(format!("{name}.verdicts.json"))).unwrap();
        let lines: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        lines
            .into_iter()
            .map(|l| {
                (
                    l["target"].as_str().unwrap().to_owned(),
                    l["value"].as_f64(),
                    serde_json::from_value(l["verdict"].clone()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn recorded_reports_are_judged_as_the_code_before_the_targets_file_judged_them() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        for name in ["report-shared-cores", "report-scaling", "report-partial"] {
            let r = read_report(&dir.join(format!("{name}.json"))).unwrap();
            let got: Vec<(String, Option<f64>, Verdict)> =
                judged(&r).into_iter().map(|l| (l.target, l.value, l.verdict)).collect();
            let want = recorded_verdicts(name);
            assert_eq!(got.len(), want.len(), "{name}: {got:#?}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((&g.0, &g.2), (&w.0, &w.2), "{name}");
                match (g.1, w.1) {
                    (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{name}: {g:?} vs {w:?}"),
                    (a, b) => assert_eq!(a, b, "{name}: {}", g.0),
                }
            }
        }
    }

    #[test]
    fn the_recorded_reports_cover_every_verdict() {
        let mut seen = Vec::new();
        for name in ["report-shared-cores", "report-scaling", "report-partial"] {
            for (_, _, v) in recorded_verdicts(name) {
                if !seen.contains(&v) {
                    seen.push(v);
                }
            }
        }
        for v in [Verdict::Pass, Verdict::Miss, Verdict::NotAvailable, Verdict::Info] {
            assert!(seen.contains(&v), "no {v:?} line");
        }
    }

    #[test]
    fn a_threshold_holds_at_its_bound_only_when_it_allows_equality() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let lines = judged(&read_report(&dir.join("report-shared-cores.json")).unwrap());
        // 12000 / 4000 req/s: exactly 3x, and the target is ≥ 3x.
        let tag = find(&lines, "manifest GET by tag: berth-fs/dist-fs");
        assert_eq!((tag.value, tag.verdict.clone()), (Some(3.0), Verdict::Pass));
        assert!(
            tag.text.contains("= 3.00x (12000 / 4000 req/s; target ≥ 3x) PASS"),
            "{}",
            tag.text
        );
        // p99 of exactly 20 ms, and the target is < 20 ms.
        let p99 = find(&lines, "tag write p99 at 200/s on berth-cluster3");
        assert_eq!((p99.value, p99.verdict.clone()), (Some(20.0), Verdict::Miss));
        assert_eq!(
            p99.text,
            "tag write p99 at 200/s on berth-cluster3 = 20.00 ms (target < 20 ms) MISS"
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
        let lines = judged(&r);
        let tag = &lines[0];
        assert_eq!(tag.verdict, Verdict::Pass);
        assert!(
            tag.text
                .contains("berth-fs/dist-fs = 4.10x (4100 / 1000 req/s; target ≥ 3x) PASS"),
            "{}",
            tag.text
        );
        let cluster = &lines[1];
        assert_eq!(cluster.verdict, Verdict::NotAvailable);
        assert!(
            cluster.text.contains("berth-cluster3: not available"),
            "{}",
            cluster.text
        );
        let head_proxy = lines.iter().find(|l| l.target.contains("dist-s3-proxy")).unwrap();
        assert_eq!(head_proxy.verdict, Verdict::Miss);
        let head_redirect = find(&lines, "HEAD blob on S3: berth-s3/dist-s3-redirect");
        assert_eq!(head_redirect.verdict, Verdict::NotAvailable);
        assert!(
            head_redirect.text.contains("dist-s3-redirect not selected"),
            "{}",
            head_redirect.text
        );
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
        let lines = judged(&r);
        let line = find(&lines, "manifest GET by tag, 3 nodes round robin by request");
        assert!((line.value.unwrap() - 2.2).abs() < 1e-9, "{line:?}");
        assert_eq!(line.verdict, Verdict::Miss);
        assert!(line.text.contains("3.10, 2.00, 2.20"), "{}", line.text);
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
        let lines = judged(&r);
        let judged = find(
            &lines,
            "blob GET 256 MiB: berth-s3/loopback copy (proxy mode, warm cache)",
        );
        assert_eq!((judged.verdict.clone(), judged.value), (Verdict::Miss, Some(0.5)));
        assert!(
            judged.text.contains("= 50% (2500 of 5000 MiB/s; target ≥ 90%) MISS"),
            "{}",
            judged.text
        );
        let info = find(&lines, "blob GET 256 MiB: berth-s3/page-cache send");
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
            judged(r)
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
        let lines = judged(&report(vec![push, get]));
        let peak = find(&lines, "berth-fs peak RSS");
        assert_eq!((peak.verdict.clone(), peak.value), (Verdict::Pass, Some(60.0)));
        assert!(
            peak.text.contains("= 60.0 MiB (target < 150 MB = 143 MiB) PASS"),
            "{}",
            peak.text
        );
        let growth = find(&lines, "berth-fs RSS growth");
        assert_eq!((growth.verdict.clone(), growth.value), (Verdict::Pass, Some(10.0)));
        assert!(growth.text.contains("= +10.0 MiB (in push-large;"), "{}", growth.text);
    }

    #[test]
    fn the_most_demanding_of_several_systems_is_the_reference() {
        let wall = |k: SystemKind, w: f64| {
            let mut x = Measurement::new(Scenario::PushLarge.id(), k.name());
            x.wall_s = Some(w);
            x.ops = 1;
            x
        };
        let lines = judged(&report(vec![
            wall(SystemKind::BerthS3, 9.0),
            wall(SystemKind::DistS3Redirect, 10.0),
            wall(SystemKind::DistS3Proxy, 8.0),
        ]));
        let line = find(&lines, "push 1 GiB on S3");
        assert_eq!((line.value, line.verdict.clone()), (Some(9.0 / 8.0), Verdict::Miss));
        assert!(
            line.text.contains("9.00 / 8.00 s against dist-s3-proxy"),
            "{}",
            line.text
        );
    }

    fn parse_err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn a_target_that_cannot_be_judged_is_refused_when_read() {
        let base = "[[target]]\nname = \"x\"\nsystem = \"berth-fs\"\n";
        let ok = format!(
            "{base}scenario = \"manifest-tag\"\nmetric = \"ops_per_s\"\nagainst = {{ system = \"dist-fs\" }}\nwant = \">= 3x\"\n"
        );
        assert_eq!(parse(&ok).unwrap().len(), 1);
        let unknown_scenario = ok.replace("manifest-tag", "manifest-tags");
        assert!(
            parse_err(&unknown_scenario).contains("manifest-tags"),
            "{}",
            parse_err(&unknown_scenario)
        );
        let unknown_metric = ok.replace("ops_per_s", "ops_per_minute");
        assert!(parse_err(&unknown_metric).contains("ops_per_minute"));
        let not_measured = ok.replace("ops_per_s", "wall_s");
        assert!(parse_err(&not_measured).contains("does not measure wall_s"));
        let bad_unit = ok.replace(">= 3x", ">= 3 ms");
        assert!(parse_err(&bad_unit).contains("ratio"), "{}", parse_err(&bad_unit));
        let bad_op = ok.replace(">= 3x", "about 3x");
        assert!(parse_err(&bad_op).contains("starts with none of"));
        let no_want = ok.replace("want = \">= 3x\"\n", "");
        assert!(parse_err(&no_want).contains("must be `info`"));
        let placeholder = ok.replace("name = \"x\"", "name = \"x {nope}\"");
        assert!(parse_err(&placeholder).contains("unknown placeholder"));
        let unknown_key = format!("{ok}wnat = \"< 1x\"\n");
        assert!(parse_err(&unknown_key).contains("wnat"));
        let absolute = format!("{base}scenario = \"tag-writes\"\nmetric = \"p99_ms\"\nwant = \"< 20 MB\"\n");
        assert!(parse_err(&absolute).contains("does not measure p99_ms"));
        let both = ok.replace(
            "system = \"dist-fs\"",
            "system = \"dist-fs\", physical = [\"loopback_s\"]",
        );
        assert!(parse_err(&both).contains("one of"));
    }
}
