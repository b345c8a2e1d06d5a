//! OpenTelemetry export on the real binary: a 3-node cluster sends its spans to an
//! OTLP/gRPC collector run by the test, and a manifest PUT through a follower that
//! carries a W3C `traceparent` comes out as one trace spanning the follower and the
//! leader it forwarded the write to.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use berth_testkit::Registry;
use berth_testkit::random_bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

use crate::cluster::config_only_manifest;
use crate::start_cluster;

/// One exported span, flattened with the resource it came from.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    node: i64,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: Vec<(String, String)>,
}

impl Received {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn value_text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// An OTLP trace collector that keeps everything it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = Vec::new();
        for rs in req.into_inner().resource_spans {
            let resource: Vec<(String, String)> = rs
                .resource
                .map(|r| r.attributes.iter().map(|kv| (kv.key.clone(), value_text(kv))).collect())
                .unwrap_or_default();
            let find = |k: &str| resource.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let service = find("service.name").unwrap_or_default();
            let node = find("berth.node_id").and_then(|v| v.parse().ok()).unwrap_or(-1);
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                out.push(Received {
                    service: service.clone(),
                    node,
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent: hex::encode(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), value_text(kv)))
                        .collect(),
                });
            }
        }
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).extend(out);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serve on a loopback port; returns the endpoint to configure.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let addr = listener.local_addr().expect("collector address");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Received> {
        let spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }

    fn all(&self) -> Vec<Received> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_follower_is_one_trace_across_both_nodes() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    // The log shows warnings only: which spans are exported is set apart from it.
    let telemetry =
        format!("[log]\nlevel = \"warn\"\n[telemetry]\notlp_endpoint = \"{endpoint}\"\nflush_interval = \"100ms\"\n");
    let (nodes, _s3) = start_cluster(3, &telemetry).await;
    let status: serde_json::Value = reqwest::get(format!("{}/admin/cluster", nodes[0].base_url()))
        .await
        .expect("GET /admin/cluster")
        .json()
        .await
        .expect("cluster status");
    let leader = status["leader"].as_i64().expect("a leader");
    let follower = if leader == 1 { 2 } else { 1 };
    let base = nodes[follower as usize - 1].base_url();

    let config = random_bytes(300, 5);
    let digest = Registry::new(base.clone())
        .push_blob("traced/app", &config)
        .await
        .expect("push config");
    // The caller's own span: what a client or proxy with tracing would send.
    let trace_id = "5b8aa5a2d2c872e8321cf37308d69df2";
    let caller_span = "051581bf3cb55c13";
    let resp = reqwest::Client::new()
        .put(format!("{base}/v2/traced/app/manifests/v1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .body(config_only_manifest(&digest, config.len()))
        .send()
        .await
        .expect("PUT manifest");
    assert_eq!(resp.status(), 201);

    // Spans are flushed every 100 ms; the leader's span may come a little later.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (request, forwarded) = loop {
        let spans = collector.of_trace(trace_id);
        let request = spans
            .iter()
            .find(|s| s.node == follower && s.name == "PUT manifest" && s.parent == caller_span)
            .cloned();
        let forwarded = request.as_ref().and_then(|_| {
            let on_follower: Vec<&str> = spans
                .iter()
                .filter(|s| s.node == follower)
                .map(|s| s.span_id.as_str())
                .collect();
            spans
                .iter()
                .find(|s| s.node == leader && s.name == "grpc" && on_follower.contains(&s.parent.as_str()))
                .cloned()
        });
        if let (Some(r), Some(f)) = (&request, &forwarded) {
            break (r.clone(), f.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no follower→leader trace after 20 s; spans of the trace: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(request.service, "berth");
    assert_eq!(request.attr("http.request.method"), Some("PUT"), "{request:?}");
    assert_eq!(request.attr("url.path"), Some("/v2/traced/app/manifests/v1"));
    assert_eq!(request.attr("repo"), Some("traced/app"), "{request:?}");
    assert_eq!(request.attr("http.response.status_code"), Some("201"), "{request:?}");
    assert_eq!(
        forwarded.attr("rpc.method"),
        Some("/berth.cluster.v1.RaftService/Propose"),
        "{forwarded:?}"
    );
    // Raft's own traffic carries no trace context and starts no exported trace.
    let untraced_grpc: Vec<Received> = collector
        .all()
        .into_iter()
        .filter(|s| s.name == "grpc" && s.parent.is_empty())
        .collect();
    assert!(untraced_grpc.is_empty(), "heartbeats were exported: {untraced_grpc:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_cannot_be_reached_is_reported_in_the_log_and_serving_goes_on() {
    // A port that nothing listens on.
    let port = berth_testkit::node::free_port().expect("free port");
    let node = berth_testkit::BerthNode::start_with(berth_testkit::NodeOptions {
        binary: crate::berth_binary().into(),
        extra_toml: format!("[telemetry]\notlp_endpoint = \"http://127.0.0.1:{port}\"\nflush_interval = \"100ms\"\n"),
        ..Default::default()
    })
    .await
    .expect("starting berth");
    let base = node.base_url();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = reqwest::get(format!("{base}/v2/")).await.expect("GET /v2/");
        assert_eq!(resp.status(), 200);
        let log = node.log_tail(200);
        if log.contains("BatchSpanProcessor.ExportError") {
            break;
        }
        assert!(Instant::now() < deadline, "no export error logged after 30 s:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Spans still queued at a SIGTERM are sent during the shutdown: with an hour
/// between scheduled exports, only the shutdown's flush can deliver the request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_queued_are_sent_when_the_node_stops() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let mut node = berth_testkit::BerthNode::start_with(berth_testkit::NodeOptions {
        binary: crate::berth_binary().into(),
        extra_toml: format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\nflush_interval = \"1h\"\n"),
        ..Default::default()
    })
    .await
    .expect("starting berth");
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let resp = reqwest::Client::new()
        .get(format!("{}/v2/", node.base_url()))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .expect("GET /v2/");
    assert_eq!(resp.status(), 200);
    assert!(collector.of_trace(trace_id).is_empty(), "exported before the shutdown");
    node.stop().await.expect("graceful stop");
    let spans = collector.of_trace(trace_id);
    assert!(spans.iter().any(|s| s.node == 1), "{spans:#?}");
    let log = node.log_tail(40);
    assert!(log.contains("shutdown: telemetry flushed"), "{log}");
}
