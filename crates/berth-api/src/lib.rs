//! The HTTP face of a berth node.
//!
//! `berth-api` is an axum router: the OCI Distribution API under `/v2/`, health
//! (`/healthz`, `/readyz`), Prometheus metrics (`/metrics`) and the admin JSON API
//! (`/admin/…`). Every `/v2/` request is parsed into a typed
//! [`endpoint::Endpoint`] first; handlers only translate HTTP to one
//! `berth-registry` use-case and its result back to HTTP. This is the only crate that
//! maps errors to HTTP statuses and the spec's error bodies. It knows nothing of
//! storage: no handler touches RocksDB or the blob store.

mod admin;
mod body;
mod endpoint;
mod error;
mod handlers;
mod metrics;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use berth_registry::Registry;
pub use endpoint::Endpoint;
pub use error::ApiError;
pub use metrics::Metrics;
use tower_http::trace::TraceLayer;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
}

/// The complete router of a node.
pub fn router(registry: Registry) -> Router {
    let metrics = Arc::new(Metrics::new());
    let state = AppState {
        registry,
        metrics: metrics.clone(),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/admin/cluster", get(admin::cluster_status))
        .route("/admin/cluster/nodes", axum::routing::post(admin::add_node))
        .route("/admin/cluster/nodes/{id}", axum::routing::delete(admin::remove_node))
        .route("/admin/workers", get(admin::workers))
        .fallback(handlers::dispatch)
        .layer(axum::middleware::from_fn(api_version_header))
        .layer(axum::middleware::from_fn_with_state(metrics, metrics::track))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(record_response),
        )
        .with_state(state)
}

/// The span of one HTTP request, with OpenTelemetry's semantic field names. It joins
/// the caller's trace when the request carries a W3C `traceparent` (sent by a
/// client or a proxy in front of the node).
fn request_span(req: &Request) -> tracing::Span {
    let span = tracing::info_span!(
        "http",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %req.method(),
        url.path = %req.uri().path(),
        endpoint = tracing::field::Empty,
        repo = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    berth_telemetry::trace_context::adopt_parent(&span, req.headers());
    span
}

/// Puts the status on the request's span (a 5xx marks the span as failed).
fn record_response(resp: &Response, latency: std::time::Duration, span: &tracing::Span) {
    let status = resp.status().as_u16();
    span.record("http.response.status_code", status);
    if resp.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    tracing::debug!(status, latency_us = latency.as_micros() as u64, "response head sent");
}

async fn api_version_header(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.registry.check_ready().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")).into_response(),
    }
}
