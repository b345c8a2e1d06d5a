//! Trace context across processes: W3C `traceparent`/`tracestate` headers read from
//! incoming HTTP and gRPC requests and written into the gRPC calls a node makes to
//! its peers, so a write forwarded from a follower to the leader is one trace.
//!
//! Everything goes through the globally installed OpenTelemetry propagator and the
//! `tracing-opentelemetry` layer: a node that exports no traces has neither, and
//! these functions then do nothing.

use opentelemetry::Context;
use opentelemetry::propagation::Extractor;
use opentelemetry::propagation::Injector;
use tonic::codegen::http::HeaderMap;
use tonic::metadata::MetadataKey;
use tonic::metadata::MetadataMap;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header that carries the parent span; without it a request starts a trace.
const TRACEPARENT: &str = "traceparent";

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Metadata<'a>(&'a mut MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator only writes valid lowercase ASCII names and values; anything
        // else is dropped rather than failing the call it rides on.
        if let (Ok(k), Ok(v)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value)) {
            self.0.insert(k, v);
        }
    }
}

/// Whether `headers` carry a trace context from the caller.
fn has_parent(headers: &HeaderMap) -> bool {
    headers.contains_key(TRACEPARENT)
}

/// Make `span` a child of the trace context in `headers`, if they carry one.
pub fn adopt_parent(span: &Span, headers: &HeaderMap) {
    if has_parent(headers) {
        set_parent_from(span, headers);
    }
}

/// Make `span` a child of the trace context that `headers` carry.
fn set_parent_from(span: &Span, headers: &HeaderMap) {
    let parent: Context = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    // Fails only when the span is disabled or no OpenTelemetry layer is installed:
    // then there is no trace to join.
    let _ = span.set_parent(parent);
}

/// Give `span`'s exported span the name `name()` (built only when the span is
/// recorded). Recording `otel.name` does not do it once the span has been entered:
/// by then its OpenTelemetry span is started.
pub fn rename(span: &Span, name: impl FnOnce() -> String) {
    use opentelemetry::trace::TraceContextExt;
    let cx = span.context();
    let otel = cx.span();
    if otel.is_recording() {
        otel.update_name(name());
    }
}

/// Write the current span's trace context into outgoing gRPC metadata.
fn inject_current(metadata: &mut MetadataMap) {
    let cx = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Metadata(metadata)));
}

/// A tonic interceptor that carries the caller's trace context to the peer.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateTrace;

impl Interceptor for PropagateTrace {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject_current(req.metadata_mut());
        Ok(req)
    }
}

/// The span of one incoming gRPC call. A call that carries a trace context joins
/// it at `INFO`; the rest (Raft heartbeats and replication, which nobody traced)
/// get a `DEBUG` span, so they neither flood the exported traces nor the log.
pub fn grpc_server_span(req: &tonic::codegen::http::Request<()>) -> Span {
    let rpc = req.uri().path();
    if has_parent(req.headers()) {
        let span = tracing::info_span!("grpc", otel.kind = "server", rpc.method = rpc);
        set_parent_from(&span, req.headers());
        span
    } else {
        tracing::debug_span!("grpc", otel.kind = "server", rpc.method = rpc)
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn request(traceparent: Option<&str>) -> tonic::codegen::http::Request<()> {
        let mut req = tonic::codegen::http::Request::builder()
            .uri("/berth.cluster.v1.RaftService/Propose")
            .body(())
            .unwrap();
        if let Some(t) = traceparent {
            req.headers_mut().insert(TRACEPARENT, t.parse().unwrap());
        }
        req
    }

    /// What the interceptor writes into a call made inside `span`.
    fn outgoing_traceparent(span: &Span) -> Option<String> {
        let _entered = span.enter();
        let req = PropagateTrace.call(tonic::Request::new(())).unwrap();
        req.metadata()
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    #[test]
    fn a_call_made_while_serving_a_traced_call_continues_its_trace() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = grpc_server_span(&request(Some(PARENT)));
            let cx = span.context();
            let sc = cx.span().span_context().clone();
            assert_eq!(format!("{}", sc.trace_id()), "4bf92f3577b34da6a3ce929d0e0e4736");
            let out = outgoing_traceparent(&span).expect("a traceparent is sent on");
            let parts: Vec<&str> = out.split('-').collect();
            assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "{out}");
            // The peer's parent is this node's span, not the caller's.
            assert_eq!(parts[2], format!("{}", sc.span_id()), "{out}");
            assert_ne!(parts[2], "00f067aa0ba902b7", "{out}");

            // An untraced call (a Raft heartbeat) starts no trace that is exported.
            let quiet = grpc_server_span(&request(None));
            assert!(quiet.is_disabled() || quiet.metadata().map(|m| *m.level()) == Some(tracing::Level::DEBUG));
        });
    }

    #[test]
    fn without_an_opentelemetry_layer_nothing_is_sent() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = grpc_server_span(&request(Some(PARENT)));
            assert_eq!(outgoing_traceparent(&span), None);
        });
    }
}
