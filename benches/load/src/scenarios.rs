//! The scenarios: what is sent, how it is timed, what counts as success.
//!
//! Read scenarios are closed loops: `clients` tasks each send the next request when
//! the previous one is answered, for `duration` after an unmeasured warm-up, with the
//! lean client of [`crate::rawhttp`]. Tag writes are an open loop at a fixed rate
//! (latency counted from the scheduled start, so a slow server cannot hide queueing).
//! Pushes use reqwest with the request sequence skopeo sends. Every loop is bounded
//! in time and in count.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use berth_testkit::image::random_tar_layer;
use berth_testkit::sha256_digest;
use reqwest::Url;
use serde::Deserialize;
use serde::Serialize;

use crate::oci::Blob;
use crate::oci::Image;
use crate::oci::Pusher;
use crate::rawhttp::RawClient;
use crate::stats::Latencies;
use crate::stats::Measurement;
use crate::stats::Outcome;
use crate::stats::mib_per_s;

pub const APP_REPO: &str = "bench/app";
pub const APP_TAG: &str = "v1";
pub const TAG_REPO: &str = "bench/tags";
pub const BIG_REPO: &str = "bench/big";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Upper bound of requests per client in one loop (the time bound comes first).
const MAX_OPS_PER_CLIENT: u64 = 50_000_000;
/// A client stops after this many errors in one loop.
const MAX_ERRORS_PER_CLIENT: u64 = 1_000;
/// Open-loop requests in flight at most; later ones are counted as dropped.
const MAX_IN_FLIGHT: usize = 1_000;

/// How the clients of the closed-loop scenarios spread their requests over a
/// system's nodes (the open-loop tag scenarios always go request by request).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each client sends its requests to the nodes in turn, as an HTTP load
    /// balancer does.
    #[default]
    Request,
    /// Each client keeps to one node and the clients are dealt over the nodes in
    /// turn, as a TCP load balancer (a Kubernetes Service, DNS round robin) does.
    Connection,
}

impl Balance {
    /// The node (index into `nodes`) of `client`'s `request`-th request.
    pub fn node(self, client: usize, request: u64, nodes: usize) -> usize {
        let turn = match self {
            Balance::Request => request as usize,
            Balance::Connection => 0,
        };
        client.wrapping_add(turn) % nodes.max(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// GET a manifest by tag.
    ManifestTag,
    /// GET a manifest by digest.
    ManifestDigest,
    /// HEAD the small blob.
    HeadBlob,
    /// GET the small blob (1 MiB by default).
    BlobGetSmall,
    /// GET the middle half of the small blob with Range.
    BlobGetSmallRange,
    /// GET the large blob (256 MiB by default).
    BlobGetLarge,
    /// GET the middle half of the large blob with Range.
    BlobGetLargeRange,
    /// Move tags at a steady rate (PUT manifest by tag).
    TagWrites,
    /// The same tag writes while tags are read at a steady rate, spread over the nodes
    /// (on a cluster: followers read under leases, which writes must wait for).
    TagWritesReads,
    /// Tag writes from `clients` writers back to back: the write throughput ceiling.
    TagWriteMax,
    /// Push many small images concurrently.
    PushSmall,
    /// Push one big layer (1 GiB by default): POST, one streamed PATCH, PUT; then read it back.
    PushLarge,
}

impl Scenario {
    /// Run order: reads first, writes after, the big push (heavy disk writeback) last.
    pub const ALL: [Scenario; 12] = [
        Scenario::ManifestTag,
        Scenario::ManifestDigest,
        Scenario::HeadBlob,
        Scenario::BlobGetSmall,
        Scenario::BlobGetSmallRange,
        Scenario::BlobGetLarge,
        Scenario::BlobGetLargeRange,
        Scenario::TagWrites,
        Scenario::TagWritesReads,
        Scenario::TagWriteMax,
        Scenario::PushSmall,
        Scenario::PushLarge,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Scenario::ManifestTag => "manifest-tag",
            Scenario::ManifestDigest => "manifest-digest",
            Scenario::HeadBlob => "head-blob",
            Scenario::BlobGetSmall => "blob-get-small",
            Scenario::BlobGetSmallRange => "blob-get-small-range",
            Scenario::BlobGetLarge => "blob-get-large",
            Scenario::BlobGetLargeRange => "blob-get-large-range",
            Scenario::TagWrites => "tag-writes",
            Scenario::TagWritesReads => "tag-writes-reads",
            Scenario::TagWriteMax => "tag-write-max",
            Scenario::PushSmall => "push-small",
            Scenario::PushLarge => "push-large",
        }
    }

    pub fn title(self, p: &Params) -> String {
        match self {
            Scenario::ManifestTag => "manifest GET by tag".into(),
            Scenario::ManifestDigest => "manifest GET by digest".into(),
            Scenario::HeadBlob => "HEAD blob".into(),
            Scenario::BlobGetSmall => format!("blob GET {}", size(p.small_blob)),
            Scenario::BlobGetSmallRange => format!("blob GET {}, Range {}", size(p.small_blob), size(p.small_blob / 2)),
            Scenario::BlobGetLarge => format!("blob GET {}", size(p.large_blob)),
            Scenario::BlobGetLargeRange => format!("blob GET {}, Range {}", size(p.large_blob), size(p.large_blob / 2)),
            Scenario::TagWrites => format!("tag writes at {}/s", p.tag_rate),
            Scenario::TagWritesReads => format!("tag writes at {}/s, reads at {}/s", p.tag_rate, p.tag_read_rate),
            Scenario::TagWriteMax => format!("tag writes, {} writers back to back", p.clients),
            Scenario::PushSmall => format!("push small images ({} layer)", size(p.image_layer)),
            Scenario::PushLarge => format!("push {} layer", size(p.push_size)),
        }
    }
}

/// "1 MiB", "256 MiB", "1 GiB", "4 KiB", "1000 B".
pub fn size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = KIB * 1024;
    const GIB: u64 = MIB * 1024;
    match bytes {
        b if b >= GIB && b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b if b >= KIB && b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} B"),
    }
}

/// Scenario settings (from the command line).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Params {
    pub clients: usize,
    pub large_clients: usize,
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub duration: Duration,
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub warmup: Duration,
    pub small_blob: u64,
    pub large_blob: u64,
    pub push_size: u64,
    pub push_reps: usize,
    pub image_layer: u64,
    pub tag_rate: u32,
    /// Tag reads per second during `tag-writes-reads`.
    pub tag_read_rate: u32,
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub tag_duration: Duration,
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub request_timeout: Duration,
    /// CPU budget of each server process in cores (`--server-cpus`), if any.
    pub server_cpus: Option<f64>,
    /// CFS period of those budgets (`--cpu-period`).
    #[serde(serialize_with = "secs", deserialize_with = "from_secs")]
    pub cpu_period: Duration,
    /// How closed-loop clients spread over the nodes (`--balance`).
    pub balance: Balance,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn from_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = f64::deserialize(d)?;
    Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
}

/// The data every system gets (generated once per run).
pub struct Dataset {
    /// config + small layer + large layer, tagged [`APP_TAG`] in [`APP_REPO`].
    pub app: Image,
    /// Two images sharing one layer, tagged `a` and `b` in [`TAG_REPO`]; tag writes
    /// move tags between their manifests.
    pub tag_a: Image,
    pub tag_b: Image,
    /// The layer of the big push.
    pub big: Blob,
    /// Makes push-small data unique to this run.
    pub nonce: u64,
}

impl Dataset {
    pub fn generate(p: &Params, nonce: u64) -> anyhow::Result<Dataset> {
        let small = random_tar_layer(p.small_blob, nonce ^ 1, "small.bin")?;
        let large = random_tar_layer(p.large_blob, nonce ^ 2, "large.bin")?;
        let app = Image::build(vec![small, large], "app")?;
        let shared = random_tar_layer(p.image_layer, nonce ^ 3, "tag.bin")?;
        let tag_a = Image::build(vec![shared.clone()], "tag-a")?;
        let tag_b = Image::build(vec![shared], "tag-b")?;
        let big = Blob::tar_layer(p.push_size, nonce ^ 4, "big.bin")?;
        Ok(Dataset {
            app,
            tag_a,
            tag_b,
            big,
            nonce,
        })
    }

    pub fn small_blob(&self) -> &Blob {
        &self.app.layers[0]
    }

    pub fn large_blob(&self) -> &Blob {
        &self.app.layers[1]
    }
}

/// Pushes the dataset's images to a system and reads everything back once, checking
/// digests (this also warms caches: reads are measured warm).
pub async fn prepare(endpoints: &[Url], data: &Dataset, pusher: &Pusher) -> anyhow::Result<()> {
    let base = endpoints.first().context("system without endpoint")?;
    pusher
        .push_image(base, APP_REPO, APP_TAG, &data.app, true)
        .await
        .context("pushing the app image")?;
    pusher
        .push_image(base, TAG_REPO, "a", &data.tag_a, false)
        .await
        .context("pushing tag image a")?;
    pusher
        .push_image(base, TAG_REPO, "b", &data.tag_b, false)
        .await
        .context("pushing tag image b")?;
    for ep in endpoints {
        let mut c = RawClient::new();
        let url = ep.join(&format!("v2/{APP_REPO}/manifests/{APP_TAG}"))?;
        let r = c.request("GET", &url, &[("Accept", OCI_MANIFEST)], true).await?;
        let body = r.body.unwrap_or_default();
        if r.status != 200 || sha256_digest(&body) != data.app.manifest.digest {
            bail!(
                "GET {url}: status {}, manifest digest differs from the pushed one",
                r.status
            );
        }
        for blob in &data.app.layers {
            let url = ep.join(&format!("v2/{APP_REPO}/blobs/{}", blob.digest))?;
            let r = c.request("GET", &url, &[], true).await?;
            let body = r.body.unwrap_or_default();
            if r.status != 200 || sha256_digest(&body) != blob.digest {
                bail!(
                    "GET {url}: status {}, {} bytes, content differs from the pushed blob",
                    r.status,
                    body.len()
                );
            }
        }
    }
    Ok(())
}

/// A read request and what a correct answer looks like.
#[derive(Clone)]
struct ReadReq {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    status: u16,
    /// Expected body length (GET) or Content-Length (HEAD).
    len: u64,
}

#[derive(Default)]
struct LoopOut {
    lat: Latencies,
    ops: u64,
    errors: u64,
    bytes: u64,
    redirects: u64,
    elapsed: Duration,
    first_error: Option<String>,
}

impl LoopOut {
    /// Count one operation started at `t0`: its latency, or its error.
    fn record<E: std::fmt::Display>(&mut self, t0: Instant, res: Result<(), E>) -> bool {
        match res {
            Ok(()) => {
                self.lat.record(t0.elapsed());
                self.ops += 1;
                true
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(format!("{e:#}"));
                false
            }
        }
    }

    fn absorb(&mut self, other: LoopOut) {
        self.lat.merge(&other.lat);
        self.ops += other.ops;
        self.errors += other.errors;
        self.bytes += other.bytes;
        self.redirects += other.redirects;
        self.elapsed = self.elapsed.max(other.elapsed);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn into_measurement(self, scenario: Scenario, system: &str) -> Measurement {
        let mut m = Measurement::new(scenario.id(), system);
        m.ops = self.ops;
        m.errors = self.errors;
        m.elapsed_s = self.elapsed.as_secs_f64();
        if self.ops > 0 && m.elapsed_s > 0.0 {
            m.ops_per_s = Some(self.ops as f64 / m.elapsed_s);
        }
        if self.bytes > 0 {
            m.mib_per_s = mib_per_s(self.bytes, self.elapsed);
        }
        m.set_latencies(&self.lat);
        m.redirects = (self.redirects > 0).then_some(self.redirects);
        m.first_error = self.first_error;
        if self.ops == 0 {
            m.outcome = Outcome::Error;
            m.note = Some("no request succeeded".into());
        }
        m
    }
}

/// The URL of `req` on every endpoint.
fn read_urls(endpoints: &[Url], req: &ReadReq) -> anyhow::Result<Vec<Url>> {
    let path = req.path.trim_start_matches('/');
    Ok(endpoints.iter().map(|e| e.join(path)).collect::<Result<_, _>>()?)
}

async fn closed_read_loop(
    endpoints: &[Url],
    balance: Balance,
    clients: usize,
    duration: Duration,
    timeout: Duration,
    req: &ReadReq,
) -> anyhow::Result<LoopOut> {
    let urls = Arc::new(read_urls(endpoints, req)?);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for worker in 0..clients.max(1) {
        let urls = urls.clone();
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = LoopOut::default();
            let mut reader = Reader::new(&req);
            for i in 0..MAX_OPS_PER_CLIENT {
                if Instant::now() >= deadline || out.errors >= MAX_ERRORS_PER_CLIENT {
                    break;
                }
                let url = &urls[balance.node(worker, i, urls.len())];
                let t0 = Instant::now();
                match reader.send(url, timeout).await {
                    Ok((n, redirects)) => {
                        out.lat.record(t0.elapsed());
                        out.ops += 1;
                        out.bytes += n;
                        out.redirects += redirects as u64;
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(e);
                        // No hot error loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            out.elapsed = start.elapsed();
            out
        }));
    }
    let mut total = LoopOut::default();
    for t in tasks {
        total.absorb(t.await.context("read client task failed")?);
    }
    Ok(total)
}

/// One connection sending a read request and checking each answer.
struct Reader<'r> {
    client: RawClient,
    req: &'r ReadReq,
    headers: Vec<(&'r str, &'r str)>,
}

impl<'r> Reader<'r> {
    fn new(req: &'r ReadReq) -> Self {
        Reader {
            client: RawClient::new(),
            req,
            headers: req.headers.iter().map(|(k, v)| (*k, v.as_str())).collect(),
        }
    }

    /// Send the request to `url`: the body length and redirects followed, or why
    /// the answer is wrong (the next request then goes on a fresh connection).
    async fn send(&mut self, url: &Url, timeout: Duration) -> Result<(u64, usize), String> {
        let method = self.req.method;
        let res = tokio::time::timeout(timeout, self.client.request(method, url, &self.headers, false)).await;
        let verdict = match res {
            Err(_) => Err(format!("{method} {url}: no answer within {timeout:?}")),
            Ok(Err(e)) => Err(format!("{method} {url}: {e:#}")),
            Ok(Ok(r)) => check(self.req, &r).map(|()| (r.body_len, r.redirects)),
        };
        if verdict.is_err() {
            self.client = RawClient::new();
        }
        verdict
    }
}

fn check(req: &ReadReq, r: &crate::rawhttp::RawResponse) -> Result<(), String> {
    if r.status != req.status {
        return Err(format!(
            "{} {}: status {} (expected {})",
            req.method, req.path, r.status, req.status
        ));
    }
    let got = if req.method == "HEAD" {
        r.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    } else {
        r.body_len
    };
    if got != req.len {
        return Err(format!(
            "{} {}: length {got} (expected {})",
            req.method, req.path, req.len
        ));
    }
    Ok(())
}

fn read_request(s: Scenario, data: &Dataset) -> Option<ReadReq> {
    let manifest = &data.app.manifest;
    let blob_path = |b: &Blob| format!("v2/{APP_REPO}/blobs/{}", b.digest);
    let range = |b: &Blob| {
        let (from, len) = (b.size() / 4, b.size() / 2);
        (format!("bytes={}-{}", from, from + len - 1), len)
    };
    let accept = vec![("Accept", OCI_MANIFEST.to_owned())];
    Some(match s {
        Scenario::ManifestTag => ReadReq {
            method: "GET",
            path: format!("v2/{APP_REPO}/manifests/{APP_TAG}"),
            headers: accept,
            status: 200,
            len: manifest.size(),
        },
        Scenario::ManifestDigest => ReadReq {
            method: "GET",
            path: format!("v2/{APP_REPO}/manifests/{}", manifest.digest),
            headers: accept,
            status: 200,
            len: manifest.size(),
        },
        Scenario::HeadBlob => ReadReq {
            method: "HEAD",
            path: blob_path(data.small_blob()),
            headers: vec![],
            status: 200,
            len: data.small_blob().size(),
        },
        Scenario::BlobGetSmall | Scenario::BlobGetLarge => {
            let b = if s == Scenario::BlobGetSmall {
                data.small_blob()
            } else {
                data.large_blob()
            };
            ReadReq {
                method: "GET",
                path: blob_path(b),
                headers: vec![],
                status: 200,
                len: b.size(),
            }
        }
        Scenario::BlobGetSmallRange | Scenario::BlobGetLargeRange => {
            let b = if s == Scenario::BlobGetSmallRange {
                data.small_blob()
            } else {
                data.large_blob()
            };
            let (spec, len) = range(b);
            ReadReq {
                method: "GET",
                path: blob_path(b),
                headers: vec![("Range", spec)],
                status: 206,
                len,
            }
        }
        Scenario::TagWrites
        | Scenario::TagWritesReads
        | Scenario::TagWriteMax
        | Scenario::PushSmall
        | Scenario::PushLarge => return None,
    })
}

/// Everything a scenario run needs about the system and the run.
pub struct Ctx<'a> {
    pub system: &'a str,
    pub endpoints: &'a [Url],
    /// The servers' processes: read scenarios count their CPU after the warm-up.
    pub server_pids: &'a [u32],
    pub params: &'a Params,
    pub data: &'a Dataset,
    pub pusher: &'a Pusher,
}

/// Runs one scenario on one system.
pub async fn run(s: Scenario, ctx: &Ctx<'_>) -> Measurement {
    let result = match s {
        Scenario::TagWrites => tag_writes(ctx, Scenario::TagWrites).await,
        Scenario::TagWritesReads => tag_writes_reads(ctx).await,
        Scenario::TagWriteMax => tag_write_max(ctx).await,
        Scenario::PushSmall => push_small(ctx).await,
        Scenario::PushLarge => push_large(ctx).await,
        _ => read_scenario(s, ctx).await,
    };
    result.unwrap_or_else(|e| Measurement::failed(s.id(), ctx.system, format!("{e:#}")))
}

async fn read_scenario(s: Scenario, ctx: &Ctx<'_>) -> anyhow::Result<Measurement> {
    let req = read_request(s, ctx.data).context("not a read scenario")?;
    let p = ctx.params;
    let clients = match s {
        Scenario::BlobGetLarge | Scenario::BlobGetLargeRange => p.large_clients,
        _ => p.clients,
    };
    if !p.warmup.is_zero() {
        // One request through every node first: a timed warm-up alone can end
        // before each node of a cluster has answered once (a big blob's first read
        // on a node can take longer than the warm-up), and then the measurement,
        // not the warm-up, pays that node's first read.
        for url in read_urls(ctx.endpoints, &req)? {
            if let Err(e) = Reader::new(&req).send(&url, p.request_timeout).await {
                bail!("warm-up request to {url}: {e}");
            }
        }
        closed_read_loop(ctx.endpoints, p.balance, clients, p.warmup, p.request_timeout, &req).await?;
    }
    let cpu_before = crate::rss::cpu_seconds_of(ctx.server_pids);
    let out = closed_read_loop(ctx.endpoints, p.balance, clients, p.duration, p.request_timeout, &req).await?;
    let mut m = out.into_measurement(s, ctx.system);
    // The same window as the operations counted, the warm-up left out.
    m.server_cpu_s = Some(crate::rss::cpu_seconds_of(ctx.server_pids) - cpu_before);
    if matches!(s, Scenario::ManifestTag | Scenario::ManifestDigest | Scenario::HeadBlob) {
        m.mib_per_s = None;
    }
    Ok(m)
}

/// PUT manifest by tag at `tag_rate` per second for `tag_duration`, alternating two
/// manifests so every write moves a tag; 16 tags.
async fn tag_writes(ctx: &Ctx<'_>, scenario: Scenario) -> anyhow::Result<Measurement> {
    let p = ctx.params;
    let rate = f64::from(p.tag_rate.max(1));
    let total = (rate * p.tag_duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let sem = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let manifests = [ctx.data.tag_a.manifest.clone(), ctx.data.tag_b.manifest.clone()];
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(total as usize);
    let mut dropped = 0u64;
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = sem.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let pusher = ctx.pusher.clone();
        let base = ctx.endpoints[(i as usize) % ctx.endpoints.len()].clone();
        let manifest = manifests[(i % 2) as usize].clone();
        let tag = format!("t{}", i % 16);
        tasks.push(tokio::spawn(async move {
            let res = pusher.put_manifest(&base, TAG_REPO, &tag, &manifest).await;
            drop(permit);
            (due.elapsed(), res)
        }));
    }
    let mut lat = Latencies::new();
    let mut m = Measurement::new(scenario.id(), ctx.system);
    for t in tasks {
        match t.await {
            Ok((d, Ok(()))) => {
                lat.record(d);
                m.ops += 1;
            }
            Ok((_, Err(e))) => {
                m.errors += 1;
                m.first_error.get_or_insert(format!("{e:#}"));
            }
            Err(e) => {
                m.errors += 1;
                m.first_error.get_or_insert(format!("task: {e}"));
            }
        }
    }
    m.elapsed_s = start.elapsed().as_secs_f64();
    m.ops_per_s = Some(m.ops as f64 / p.tag_duration.as_secs_f64().max(1e-9));
    m.dropped = Some(dropped);
    m.set_latencies(&lat);
    if m.ops == 0 {
        m.outcome = Outcome::Error;
        m.note = Some("no tag write succeeded".into());
    }
    Ok(m)
}

/// Readers of the open read loop: each sends every `READERS`-th request of the
/// schedule on its own connection.
const READERS: u64 = 8;

/// Tag writes as in `tag-writes`, while tags are read at `tag_read_rate` per
/// second (an open loop too, latency from the scheduled start) for as long.
async fn tag_writes_reads(ctx: &Ctx<'_>) -> anyhow::Result<Measurement> {
    let p = ctx.params;
    let req = read_request(Scenario::ManifestTag, ctx.data).context("tag read request")?;
    let urls: Vec<Url> = ctx
        .endpoints
        .iter()
        .map(|e| e.join(&req.path))
        .collect::<Result<_, _>>()?;
    let reads = tokio::spawn(open_read_loop(
        urls,
        p.tag_read_rate,
        p.tag_duration,
        p.request_timeout,
        req,
    ));
    let mut m = tag_writes(ctx, Scenario::TagWritesReads).await?;
    let reads = reads.await.context("read loop task failed")??;
    let secs = p.tag_duration.as_secs_f64().max(1e-9);
    m.reads_per_s = Some(reads.ops as f64 / secs);
    m.read_p50_ms = reads.lat.pct_ms(50.0);
    m.read_p99_ms = reads.lat.pct_ms(99.0);
    m.read_errors = Some(reads.errors);
    if m.first_error.is_none() {
        m.first_error = reads.first_error;
    }
    Ok(m)
}

/// `req` at `rate` per second for `duration`, round robin over `urls`, from
/// `READERS` connections; each request's latency counts from when it was due.
async fn open_read_loop(
    urls: Vec<Url>,
    rate: u32,
    duration: Duration,
    timeout: Duration,
    req: ReadReq,
) -> anyhow::Result<LoopOut> {
    let total = (f64::from(rate.max(1)) * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = Instant::now() + Duration::from_millis(20);
    let urls = Arc::new(urls);
    let mut tasks = Vec::new();
    for reader in 0..READERS {
        let urls = urls.clone();
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = LoopOut::default();
            let mut connection = Reader::new(&req);
            for i in (reader..total).step_by(READERS as usize) {
                let due = start + interval.mul_f64(i as f64);
                tokio::time::sleep_until(due.into()).await;
                let url = &urls[(i as usize) % urls.len()];
                let sent = connection.send(url, timeout).await.map(|_| ());
                out.record(due, sent);
            }
            out
        }));
    }
    let mut total = LoopOut::default();
    for t in tasks {
        total.absorb(t.await.context("read client task failed")?);
    }
    Ok(total)
}

/// `clients` writers each moving its own tags back to back for `tag_duration`.
async fn tag_write_max(ctx: &Ctx<'_>) -> anyhow::Result<Measurement> {
    let p = ctx.params;
    let start = Instant::now();
    let deadline = start + p.tag_duration;
    let manifests = [ctx.data.tag_a.manifest.clone(), ctx.data.tag_b.manifest.clone()];
    let mut tasks = Vec::new();
    for worker in 0..p.clients.max(1) {
        let pusher = ctx.pusher.clone();
        let endpoints: Vec<Url> = ctx.endpoints.to_vec();
        let balance = p.balance;
        let manifests = manifests.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = LoopOut::default();
            for i in 0..MAX_OPS_PER_CLIENT {
                if Instant::now() >= deadline || out.errors >= MAX_ERRORS_PER_CLIENT {
                    break;
                }
                let base = &endpoints[balance.node(worker, i, endpoints.len())];
                let tag = format!("w{worker}-{}", i % 4);
                let t0 = Instant::now();
                let res = pusher
                    .put_manifest(base, TAG_REPO, &tag, &manifests[(i % 2) as usize])
                    .await;
                out.record(t0, res);
            }
            out
        }));
    }
    let mut all = LoopOut::default();
    for t in tasks {
        all.absorb(t.await.context("tag writer task")?);
    }
    all.elapsed = start.elapsed();
    let mut m = all.into_measurement(Scenario::TagWriteMax, ctx.system);
    m.mib_per_s = None;
    Ok(m)
}

/// `clients` tasks each pushing fresh small images (HEAD, POST, PATCH, PUT for the
/// layer and the config, then PUT manifest) until the duration is over.
async fn push_small(ctx: &Ctx<'_>) -> anyhow::Result<Measurement> {
    let p = ctx.params;
    let start = Instant::now();
    let deadline = start + p.duration;
    let mut tasks = Vec::new();
    for worker in 0..p.clients.max(1) {
        let pusher = ctx.pusher.clone();
        let endpoints: Vec<Url> = ctx.endpoints.to_vec();
        let balance = p.balance;
        let (nonce, layer_size) = (ctx.data.nonce, p.image_layer);
        tasks.push(tokio::spawn(async move {
            let mut out = LoopOut::default();
            for i in 0..MAX_OPS_PER_CLIENT {
                if Instant::now() >= deadline || out.errors >= MAX_ERRORS_PER_CLIENT {
                    break;
                }
                let seed = nonce ^ ((worker as u64) << 40) ^ (i << 1) ^ 0x5555;
                let image = random_tar_layer(layer_size, seed, "layer.bin")
                    .and_then(|l| Image::build(vec![l], &format!("w{worker}-{i}")));
                let base = &endpoints[balance.node(worker, i, endpoints.len())];
                let t0 = Instant::now();
                let res = match image {
                    Ok(image) => {
                        let repo = format!("bench/many-{}", worker % 8);
                        pusher
                            .push_image(base, &repo, &format!("w{worker}-{i}"), &image, true)
                            .await
                    }
                    Err(e) => Err(e),
                };
                if !out.record(t0, res) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            out.elapsed = start.elapsed();
            out
        }));
    }
    let mut total = LoopOut::default();
    for t in tasks {
        total.absorb(t.await.context("push task failed")?);
    }
    Ok(total.into_measurement(Scenario::PushSmall, ctx.system))
}

/// One big layer per repetition: POST, one streamed PATCH, PUT ?digest= (timed),
/// then one GET of it (read-back throughput).
async fn push_large(ctx: &Ctx<'_>) -> anyhow::Result<Measurement> {
    let p = ctx.params;
    let base = ctx.endpoints.first().context("no endpoint")?;
    let blob = &ctx.data.big;
    let mut walls = Vec::new();
    let mut reads = Vec::new();
    let mut m = Measurement::new(Scenario::PushLarge.id(), ctx.system);
    let started = Instant::now();
    for rep in 0..p.push_reps.max(1) {
        let repo = format!("{BIG_REPO}-{rep}");
        let t0 = Instant::now();
        let res = tokio::time::timeout(p.request_timeout, ctx.pusher.push_blob(base, &repo, blob, false, true)).await;
        match res {
            Ok(Ok(())) => {
                walls.push(t0.elapsed().as_secs_f64());
                m.ops += 1;
            }
            Ok(Err(e)) => {
                m.errors += 1;
                m.first_error.get_or_insert(format!("{e:#}"));
                continue;
            }
            Err(_) => {
                m.errors += 1;
                m.first_error
                    .get_or_insert(format!("push not done within {:?}", p.request_timeout));
                continue;
            }
        }
        let url = base.join(&format!("v2/{repo}/blobs/{}", blob.digest))?;
        let mut client = RawClient::new();
        let t1 = Instant::now();
        match tokio::time::timeout(p.request_timeout, client.request("GET", &url, &[], false)).await {
            Ok(Ok(r)) if r.status == 200 && r.body_len == blob.size() => {
                if let Some(v) = mib_per_s(r.body_len, t1.elapsed()) {
                    reads.push(v);
                }
            }
            Ok(Ok(r)) => {
                m.errors += 1;
                m.first_error
                    .get_or_insert(format!("read back: status {}, {} bytes", r.status, r.body_len));
            }
            Ok(Err(e)) => {
                m.errors += 1;
                m.first_error.get_or_insert(format!("read back: {e:#}"));
            }
            Err(_) => {
                m.errors += 1;
                m.first_error.get_or_insert("read back timed out".into());
            }
        }
    }
    m.elapsed_s = started.elapsed().as_secs_f64();
    m.wall_s = crate::stats::median(&mut walls);
    m.mib_per_s = m
        .wall_s
        .and_then(|w| mib_per_s(blob.size(), Duration::from_secs_f64(w)));
    m.readback_mib_per_s = crate::stats::median(&mut reads);
    if m.ops == 0 {
        m.outcome = Outcome::Error;
        m.note = Some("the push did not succeed".into());
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_balance_turns_every_client_over_the_nodes_connection_balance_pins_it() {
        let nodes_of = |b: Balance, client| (0..6).map(|i| b.node(client, i, 3)).collect::<Vec<_>>();
        assert_eq!(nodes_of(Balance::Request, 0), [0, 1, 2, 0, 1, 2]);
        assert_eq!(nodes_of(Balance::Request, 1), [1, 2, 0, 1, 2, 0]);
        assert_eq!(nodes_of(Balance::Connection, 0), [0; 6]);
        assert_eq!(nodes_of(Balance::Connection, 4), [1; 6]);
        // Clients are dealt over the nodes evenly.
        let per_node = (0..96).fold([0; 3], |mut n, c| {
            n[Balance::Connection.node(c, 0, 3)] += 1;
            n
        });
        assert_eq!(per_node, [32, 32, 32]);
        assert_eq!(Balance::Request.node(5, 7, 1), 0, "one node takes everything");
    }

    fn params() -> Params {
        Params {
            clients: 2,
            large_clients: 1,
            duration: Duration::from_millis(200),
            warmup: Duration::ZERO,
            small_blob: 8192,
            large_blob: 65536,
            push_size: 16384,
            push_reps: 1,
            image_layer: 4096,
            tag_rate: 10,
            tag_read_rate: 100,
            tag_duration: Duration::from_millis(200),
            request_timeout: Duration::from_secs(5),
            server_cpus: None,
            cpu_period: crate::cpulimit::DEFAULT_PERIOD,
            balance: Balance::Request,
        }
    }

    #[test]
    fn sizes_print_in_binary_units() {
        assert_eq!(size(1 << 20), "1 MiB");
        assert_eq!(size(256 << 20), "256 MiB");
        assert_eq!(size(1 << 30), "1 GiB");
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(1000), "1000 B");
    }

    #[test]
    fn dataset_and_read_requests_match() {
        let p = params();
        let d = Dataset::generate(&p, 42).unwrap();
        assert_eq!(d.small_blob().size(), 8192);
        assert_eq!(d.large_blob().size(), 65536);
        assert_eq!(d.big.bytes.len(), 16384);
        assert_ne!(d.tag_a.manifest.digest, d.tag_b.manifest.digest);
        let r = read_request(Scenario::BlobGetLargeRange, &d).unwrap();
        assert_eq!(r.headers[0].1, "bytes=16384-49151");
        assert_eq!((r.status, r.len), (206, 32768));
        let h = read_request(Scenario::HeadBlob, &d).unwrap();
        assert_eq!((h.method, h.len), ("HEAD", 8192));
        assert!(read_request(Scenario::PushLarge, &d).is_none());
        for s in Scenario::ALL {
            assert!(!s.title(&p).is_empty());
        }
    }
}
