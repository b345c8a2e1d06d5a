//! Logs and traces: the `tracing` subscriber of the process, and, when configured, an
//! OpenTelemetry layer that exports the same spans over OTLP/gRPC.

use anyhow::Context;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::BatchConfigBuilder;
use opentelemetry_sdk::trace::BatchSpanProcessor;
use opentelemetry_sdk::trace::Sampler;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::Config;
use crate::config::LogFormat;
use crate::config::TelemetryConfig;

/// The standard variables that turn export on without a `[telemetry]` section.
const OTLP_ENV: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// Keeps the span exporter of the process; [`Telemetry::shutdown`] sends what is
/// still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Send the spans still queued and stop exporting.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
    }
}

/// Install the process's subscriber: the log on stderr, filtered by `RUST_LOG` or
/// `log.level`, and the OTLP exporter when one is configured. Must run inside the
/// Tokio runtime (the exporter's gRPC channel lives on it).
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    let log_filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(&config.log.level),
    }
    .with_context(|| format!("log.level: {:?} is not a valid filter", config.log.level))?;
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = match config.log.format {
        LogFormat::Text => log.with_filter(log_filter).boxed(),
        LogFormat::Json => log.json().with_filter(log_filter).boxed(),
    };
    let cfg = &config.telemetry;
    // Traces have their own filter: a node may log only warnings and still export
    // every request's span.
    let mut ratio = 1.0;
    let (provider, otel) = if exports(cfg) {
        let trace_filter = EnvFilter::try_new(&cfg.level)
            .with_context(|| format!("telemetry.level: {:?} is not a valid filter", cfg.level))?;
        ratio = sample_ratio(cfg, std::env::var)?;
        let provider = tracer_provider(config, ratio)?;
        // Per span, source locations, thread names and busy/idle clocks cost more than
        // they tell about a request; the context is only read by our own propagation
        // (`OpenTelemetrySpanExt::context`), so it need not be activated on each poll.
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("berth"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(trace_filter);
        (Some(provider), Some(layer))
    } else {
        (None, None)
    };
    tracing_subscriber::registry()
        .with(log)
        .with(otel)
        .try_init()
        .context("installing the tracing subscriber")?;
    if provider.is_some() {
        tracing::info!(
            endpoint = endpoint_description(cfg),
            sample_ratio = ratio,
            "exporting traces over OTLP"
        );
    }
    Ok(Telemetry { provider })
}

fn exports(cfg: &TelemetryConfig) -> bool {
    cfg.otlp_endpoint.is_some()
        || OTLP_ENV
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// The ratio of new traces to record: `[telemetry] sample_ratio`, else the standard
/// `OTEL_TRACES_SAMPLER_ARG` when `OTEL_TRACES_SAMPLER` is unset or a ratio sampler,
/// else all.
fn sample_ratio<E>(cfg: &TelemetryConfig, env: impl Fn(&'static str) -> Result<String, E>) -> anyhow::Result<f64> {
    if let Some(r) = cfg.sample_ratio {
        return Ok(r);
    }
    let ratio_sampler = match env("OTEL_TRACES_SAMPLER") {
        Ok(s) => matches!(s.as_str(), "traceidratio" | "parentbased_traceidratio"),
        Err(_) => true,
    };
    match env("OTEL_TRACES_SAMPLER_ARG") {
        Ok(arg) if ratio_sampler => match arg.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => anyhow::bail!("OTEL_TRACES_SAMPLER_ARG: {arg:?} is not a ratio between 0.0 and 1.0"),
        },
        _ => Ok(1.0),
    }
}

fn endpoint_description(cfg: &TelemetryConfig) -> String {
    cfg.otlp_endpoint
        .clone()
        .unwrap_or_else(|| "from OTEL_EXPORTER_OTLP_* environment".into())
}

fn tracer_provider(config: &Config, ratio: f64) -> anyhow::Result<SdkTracerProvider> {
    let cfg = &config.telemetry;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = &cfg.otlp_endpoint {
        exporter = exporter.with_endpoint(endpoint.clone());
    }
    let exporter = exporter
        .build()
        .with_context(|| format!("telemetry.otlp_endpoint: {}", endpoint_description(cfg)))?;
    let batches = BatchConfigBuilder::default()
        .with_scheduled_delay(cfg.flush_interval)
        .build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
    // Traces a caller started keep the caller's decision; new ones are sampled here.
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)));
    let node_id = config.cluster.node_id;
    let mut resource = Resource::builder()
        .with_service_name(cfg.service_name.clone())
        .with_attribute(KeyValue::new("service.instance.id", format!("node-{node_id}")))
        .with_attribute(KeyValue::new(
            "berth.node_id",
            i64::try_from(node_id).unwrap_or(i64::MAX),
        ));
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        resource = resource.with_attribute(KeyValue::new("host.name", host.trim().to_string()));
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(resource.build())
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'static str, &'a str)]) -> impl Fn(&'static str) -> Result<String, ()> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()).ok_or(())
    }

    #[test]
    fn the_sample_ratio_comes_from_the_config_then_the_standard_environment() {
        let mut cfg = TelemetryConfig::default();
        assert_eq!(sample_ratio(&cfg, env(&[])).unwrap(), 1.0);
        assert_eq!(
            sample_ratio(&cfg, env(&[("OTEL_TRACES_SAMPLER_ARG", "0.1")])).unwrap(),
            0.1
        );
        let other_sampler = [("OTEL_TRACES_SAMPLER", "always_on"), ("OTEL_TRACES_SAMPLER_ARG", "0.1")];
        assert_eq!(sample_ratio(&cfg, env(&other_sampler)).unwrap(), 1.0);
        assert!(sample_ratio(&cfg, env(&[("OTEL_TRACES_SAMPLER_ARG", "2")])).is_err());
        cfg.sample_ratio = Some(0.5);
        assert_eq!(
            sample_ratio(&cfg, env(&[("OTEL_TRACES_SAMPLER_ARG", "0.1")])).unwrap(),
            0.5
        );
    }
}
