//! Telemetry helpers shared by every crate that serves or calls across processes.
//!
//! `berth-telemetry` carries W3C trace context (`traceparent`/`tracestate`) from
//! incoming HTTP and gRPC requests into the spans that serve them and into the gRPC
//! calls a node makes to its peers, so one request is one trace across nodes. It is
//! used by `berth-api` (HTTP), `berth-cluster` (Raft and hand-over gRPC) and, next,
//! cross-site replication. It sets nothing up: the binary installs the tracer and the
//! propagator; without them every function here does nothing.

pub mod trace_context;
