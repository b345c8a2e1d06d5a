//! Prometheus metrics of a node, served at `GET /metrics` in the OpenMetrics text
//! format.
//!
//! - `berth_http_requests` (counter): every answered request, by endpoint, method
//!   and status.
//! - `berth_http_request_duration_seconds` (histogram): time to the response head,
//!   by endpoint and method. An upload's body is read before the answer, so it is in
//!   it; a blob GET's body streams after the head, so its transfer is not.
//! - `berth_http_requests_in_flight` (gauge).
//! - `berth_http_response_body_bytes` (counter): body bytes of answers, by endpoint,
//!   as declared by `Content-Length` (a client that hangs up early is counted whole).
//! - `berth_raft_*` (gauges, read at each scrape): this node's state, term, whether
//!   it knows a leader, its log, commit, apply and snapshot indexes, the members.
//!
//! Endpoints are the typed `/v2/` endpoints (`manifest`, `blob`, `upload`, …) and, for
//! the rest, `health`, `admin`, `metrics` or `other`: no label comes from a client's
//! input, so the number of series stays bounded.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::header;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use berth_registry::ClusterStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::EncodeLabelValue;
use prometheus_client::encoding::LabelValueEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

use crate::AppState;

/// The name of the endpoint a response answered, set by the `/v2/` dispatcher on
/// the response so the middleware can label it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EndpointName(pub &'static str);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    method: &'static str,
    status: Status,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    endpoint: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// An HTTP status code as a label value ("200").
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Status(u16);

impl EncodeLabelValue for Status {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}

/// Raft states a node reports, in the order of `berth_raft_state`'s series.
const RAFT_STATES: [&str; 4] = ["leader", "follower", "candidate", "learner"];

type DurationFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 100 µs … ~52 s, doubling.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 20))
}

/// The node's metrics: the registry that encodes them, and handles to record into.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: DurationFamily,
    in_flight: Gauge,
    body_bytes: Family<EndpointLabels, Counter>,
    raft_state: Family<StateLabels, Gauge>,
    raft_term: Gauge,
    raft_leader_known: Gauge,
    raft_last_log_index: Gauge,
    raft_committed_index: Gauge,
    raft_applied_index: Gauge,
    raft_snapshot_index: Gauge,
    raft_members: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("berth");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: DurationFamily = Family::new_with_constructor(duration_histogram);
        let in_flight = Gauge::default();
        let body_bytes = Family::<EndpointLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time from a request to its response head",
            durations.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being handled",
            in_flight.clone(),
        );
        registry.register(
            "http_response_body_bytes",
            "Body bytes of answers, as declared by Content-Length",
            body_bytes.clone(),
        );
        let raft_state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "raft_state",
            "1 for this node's Raft state, 0 for the others",
            raft_state.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let raft_term = gauge(&mut registry, "raft_term", "Current Raft term");
        let raft_leader_known = gauge(&mut registry, "raft_leader_known", "1 when this node knows a leader");
        let raft_last_log_index = gauge(&mut registry, "raft_last_log_index", "Index of the last log entry");
        let raft_committed_index = gauge(
            &mut registry,
            "raft_committed_index",
            "Commit index (as known to the leader's replication)",
        );
        let raft_applied_index = gauge(
            &mut registry,
            "raft_applied_index",
            "Index of the last entry applied to the state machine",
        );
        let raft_snapshot_index = gauge(
            &mut registry,
            "raft_snapshot_index",
            "Last index covered by the newest snapshot",
        );
        let raft_members = gauge(&mut registry, "raft_members", "Members of the cluster");
        Metrics {
            registry,
            requests,
            durations,
            in_flight,
            body_bytes,
            raft_state,
            raft_term,
            raft_leader_known,
            raft_last_log_index,
            raft_committed_index,
            raft_applied_index,
            raft_snapshot_index,
            raft_members,
        }
    }

    /// Count one answered request.
    fn record(&self, endpoint: &'static str, method: &Method, response: &Response, started: Instant) {
        let method = method_label(method);
        self.requests
            .get_or_create(&RequestLabels {
                endpoint,
                method,
                status: Status(response.status().as_u16()),
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels { endpoint, method })
            .observe(started.elapsed().as_secs_f64());
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(bytes) = declared.filter(|_| method != "HEAD") {
            self.body_bytes
                .get_or_create(&EndpointLabels { endpoint })
                .inc_by(bytes);
        }
    }

    /// Set the Raft gauges from this node's view of the cluster.
    fn observe_cluster(&self, status: &ClusterStatus) {
        let state = status.state.to_ascii_lowercase();
        for s in RAFT_STATES {
            self.raft_state
                .get_or_create(&StateLabels { state: s })
                .set(i64::from(state == s));
        }
        let index = |i: Option<u64>| i.map_or(0, |i| i64::try_from(i).unwrap_or(i64::MAX));
        self.raft_term.set(index(Some(status.term)));
        self.raft_leader_known.set(i64::from(status.leader.is_some()));
        self.raft_last_log_index.set(index(status.last_log_index));
        self.raft_committed_index.set(index(status.committed_index));
        self.raft_applied_index.set(index(status.applied_index));
        self.raft_snapshot_index.set(index(status.snapshot_index));
        self.raft_members
            .set(i64::try_from(status.members.len()).unwrap_or(i64::MAX));
    }

    /// Everything, in the OpenMetrics text format.
    fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The label of a request outside `/v2/` (whose endpoints name themselves).
fn route_label(path: &str) -> &'static str {
    match path {
        "/healthz" | "/readyz" => "health",
        "/metrics" => "metrics",
        p if p == "/admin" || p.starts_with("/admin/") => "admin",
        _ => "other",
    }
}

/// Middleware: time and count every request.
pub(crate) async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let fallback = route_label(req.uri().path());
    metrics.in_flight.inc();
    // Counted down however the handler ends (a client that hangs up drops it).
    let _in_flight = InFlight(&metrics.in_flight);
    let response = next.run(req).await;
    let endpoint = response.extensions().get::<EndpointName>().map_or(fallback, |e| e.0);
    metrics.record(endpoint, &method, &response, started);
    response
}

struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `GET /metrics`.
pub(crate) async fn scrape(State(state): State<AppState>) -> Response {
    state
        .metrics
        .observe_cluster(&state.registry.recent_cluster_status().await);
    match state.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::body::Body;
    use axum::http::StatusCode;

    use super::*;

    fn response(status: StatusCode, length: Option<&str>) -> Response {
        let mut r = Response::builder().status(status);
        if let Some(l) = length {
            r = r.header(header::CONTENT_LENGTH, l);
        }
        r.body(Body::empty()).unwrap()
    }

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
    }

    #[test]
    fn requests_are_counted_by_endpoint_method_and_status_and_bytes_by_endpoint() {
        let m = Metrics::new();
        let t = Instant::now();
        m.record("blob", &Method::GET, &response(StatusCode::OK, Some("1048576")), t);
        m.record("blob", &Method::GET, &response(StatusCode::OK, Some("10")), t);
        m.record("blob", &Method::HEAD, &response(StatusCode::OK, Some("4096")), t);
        m.record("manifest", &Method::GET, &response(StatusCode::NOT_FOUND, None), t);
        let text = m.encode().unwrap();
        assert_eq!(
            sample(
                &text,
                r#"berth_http_requests_total{endpoint="blob",method="GET",status="200"}"#
            ),
            Some("2")
        );
        assert_eq!(
            sample(
                &text,
                r#"berth_http_requests_total{endpoint="manifest",method="GET",status="404"}"#
            ),
            Some("1")
        );
        assert_eq!(
            sample(&text, r#"berth_http_response_body_bytes_total{endpoint="blob"}"#),
            Some("1048586"),
            "HEAD declares a length but sends no body"
        );
        assert_eq!(
            sample(
                &text,
                r#"berth_http_request_duration_seconds_count{endpoint="blob",method="GET"}"#
            ),
            Some("2")
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn raft_gauges_follow_the_cluster_status() {
        let m = Metrics::new();
        let status = ClusterStatus {
            id: 2,
            state: "Follower".into(),
            leader: Some(1),
            term: 7,
            last_log_index: Some(120),
            committed_index: None,
            applied_index: Some(119),
            snapshot_index: None,
            leader_has_quorum: Some(true),
            members: BTreeMap::new(),
        };
        m.observe_cluster(&status);
        let text = m.encode().unwrap();
        assert_eq!(sample(&text, r#"berth_raft_state{state="follower"}"#), Some("1"));
        assert_eq!(sample(&text, r#"berth_raft_state{state="leader"}"#), Some("0"));
        assert_eq!(sample(&text, "berth_raft_term"), Some("7"));
        assert_eq!(sample(&text, "berth_raft_leader_known"), Some("1"));
        assert_eq!(sample(&text, "berth_raft_applied_index"), Some("119"));
        assert_eq!(sample(&text, "berth_raft_committed_index"), Some("0"));
    }

    #[test]
    fn paths_outside_v2_get_a_fixed_label() {
        assert_eq!(route_label("/healthz"), "health");
        assert_eq!(route_label("/readyz"), "health");
        assert_eq!(route_label("/admin/cluster/nodes/3"), "admin");
        assert_eq!(route_label("/administrator"), "other");
        assert_eq!(route_label("/metrics"), "metrics");
        assert_eq!(route_label("/favicon.ico"), "other");
    }
}
