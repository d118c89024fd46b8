//! Logging and OpenTelemetry tracing.
//!
//! * [`init_logging`]: `tracing` events to stderr, filtered by `RUST_LOG`.
//! * [`NodeTracer`]: one per node, each with its own `SdkTracerProvider` and
//!   `service.name`, so several nodes in one process (the demo: anchor + edges) export as
//!   separate services. The global tracer provider is not used for round spans.
//! * One trace per round across nodes: the coordinator starts the round span and sends
//!   its W3C `traceparent` with the round plan; participants start their spans from it
//!   ([`NodeTracer::start_span`]), so all spans of a round share one trace id.
//!
//! With an OTLP endpoint, finished spans go through a batch span processor (its own
//! thread, bounded queue: a full queue drops spans, never blocks the caller) to an
//! OTLP/HTTP protobuf exporter (blocking reqwest client, 5 s timeout per export).
//! Without an endpoint the provider has no processor: spans still get valid trace and
//! span ids, so the context propagates, but nothing is exported.

use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use tracing::warn;

/// Timeout of one OTLP export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of [`NodeTracer::shutdown`].
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Finished spans waiting for export; more are dropped.
const MAX_QUEUE: usize = 2048;
/// How often the batch processor exports.
const EXPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Errors building a [`NodeTracer`].
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP endpoint is not an `http://` or `https://` URL.
    #[error("invalid OTLP endpoint {0:?}: expected http://host:port")]
    InvalidEndpoint(String),
    /// The OTLP exporter could not be built.
    #[error("building the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// Installs the `tracing` subscriber: human-readable lines on stderr, filtered by
/// `RUST_LOG` if set (else by `default_filter`, e.g. `"info,fedd=debug"`). Idempotent:
/// later calls (and calls after another subscriber was installed) do nothing.
pub fn init_logging(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The OTLP endpoint from `OTEL_EXPORTER_OTLP_ENDPOINT` (trimmed; unset or empty gives
/// `None`).
pub fn otlp_endpoint_from_env() -> Option<String> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The OTLP/HTTP traces URL for a base endpoint: `http://h:4318` → `http://h:4318/v1/traces`.
/// (opentelemetry-otlp 0.33 uses `with_endpoint` verbatim, so the signal path is added
/// here; an endpoint that already ends in `/v1/traces` is kept.)
fn traces_url(endpoint: &str) -> Result<String, TelemetryError> {
    let e = endpoint.trim().trim_end_matches('/');
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .ok_or_else(|| TelemetryError::InvalidEndpoint(endpoint.to_string()))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(TelemetryError::InvalidEndpoint(endpoint.to_string()));
    }
    if e.ends_with("/v1/traces") {
        Ok(e.to_string())
    } else {
        Ok(format!("{e}/v1/traces"))
    }
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Parses a W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`,
/// lowercase hex, non-zero ids, version not `ff`) into a remote span context.
fn parse_traceparent(tp: &str) -> Option<SpanContext> {
    let mut parts = tp.trim().split('-');
    let version = parse_hex::<1>(parts.next()?)?;
    let trace_id = parse_hex::<16>(parts.next()?)?;
    let span_id = parse_hex::<8>(parts.next()?)?;
    let flags = parse_hex::<1>(parts.next()?)?;
    // Version 00 has exactly four fields; later versions may append more.
    if version[0] == 0xff || (version[0] == 0 && parts.next().is_some()) {
        return None;
    }
    let trace_id = TraceId::from_bytes(trace_id);
    let span_id = SpanId::from_bytes(span_id);
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags[0] & 0x01),
        true,
        TraceState::default(),
    ))
}

/// A node's tracer: its own provider (and exporter), its own `service.name`. Cheap to
/// clone; clones share the provider.
#[derive(Clone, Debug)]
pub struct NodeTracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl NodeTracer {
    /// Builds the tracer of one node. `resource` adds resource attributes (e.g.
    /// `peer.id`, `federation.id`) next to `service.name`. With `otlp_endpoint` (a base
    /// URL such as `http://127.0.0.1:4318`; `/v1/traces` is appended) spans are exported
    /// over OTLP/HTTP protobuf in batches; without, nothing is exported. Can be called
    /// inside or outside a tokio runtime.
    pub fn new(
        service_name: &str,
        otlp_endpoint: Option<&str>,
        resource: Vec<(String, String)>,
    ) -> Result<NodeTracer, TelemetryError> {
        let resource = Resource::builder()
            .with_attributes(resource.into_iter().map(|(k, v)| KeyValue::new(k, v)))
            .with_service_name(service_name.to_string())
            .build();
        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        if let Some(endpoint) = otlp_endpoint {
            let url = traces_url(endpoint)?;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .with_protocol(Protocol::HttpBinary)
                .with_timeout(EXPORT_TIMEOUT)
                .build()?;
            let config = BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUE)
                .with_scheduled_delay(EXPORT_INTERVAL)
                .build();
            let processor = BatchSpanProcessor::builder(exporter)
                .with_batch_config(config)
                .build();
            builder = builder.with_span_processor(processor);
        }
        let provider = builder.build();
        let tracer = provider.tracer("gossipfed");
        Ok(NodeTracer { provider, tracer })
    }

    /// Starts a span. With a valid W3C `parent_traceparent` the span joins that trace as
    /// a child of the remote span; with `None` or a malformed value it starts a new
    /// trace (a malformed value is logged at warn level).
    pub fn start_span(
        &self,
        name: &'static str,
        parent_traceparent: Option<&str>,
        attrs: Vec<(&'static str, String)>,
    ) -> NodeSpan {
        let parent = match parent_traceparent {
            None => Context::new(),
            Some(tp) => match parse_traceparent(tp) {
                Some(sc) => Context::new().with_remote_span_context(sc),
                None => {
                    warn!(
                        traceparent = tp,
                        span = name,
                        "malformed traceparent; starting a new trace"
                    );
                    Context::new()
                }
            },
        };
        let span = self
            .tracer
            .span_builder(name)
            .with_attributes(attrs.into_iter().map(|(k, v)| KeyValue::new(k, v)))
            .start_with_context(&self.tracer, &parent);
        NodeSpan { span }
    }

    /// Flushes pending spans and shuts the exporter down, waiting at most 5 s. Blocks
    /// the calling thread; from async code prefer `spawn_blocking`. Idempotent; spans
    /// started afterwards are not exported.
    pub fn shutdown(&self) {
        match self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            Ok(()) | Err(opentelemetry_sdk::error::OTelSdkError::AlreadyShutdown) => {}
            Err(e) => warn!(error = %e, "telemetry: tracer shutdown incomplete"),
        }
    }
}

/// A span of a [`NodeTracer`]. Ends (and is queued for export) on [`NodeSpan::end`] or
/// when dropped.
#[derive(Debug)]
pub struct NodeSpan {
    span: opentelemetry_sdk::trace::Span,
}

impl NodeSpan {
    /// The W3C `traceparent` of this span (`00-<trace id>-<span id>-<flags>`), to send to
    /// the peers whose spans should be its children.
    pub fn traceparent(&self) -> String {
        let sc = self.span.span_context();
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    }

    /// The trace id as 32 lowercase hex digits (for logs, MLflow tags, Jaeger links).
    pub fn trace_id_hex(&self) -> String {
        self.span.span_context().trace_id().to_string()
    }

    /// Sets (or overwrites) an attribute.
    pub fn set_attr(&mut self, k: &'static str, v: String) {
        self.span.set_attribute(KeyValue::new(k, v));
    }

    /// Ends the span now.
    pub fn end(mut self) {
        self.span.end();
    }
}

/// Whether `tp` is a well-formed W3C traceparent that [`NodeTracer::start_span`] would
/// join (for validating traceparents received in messages).
pub fn is_valid_traceparent(tp: &str) -> bool {
    parse_traceparent(tp).is_some()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    fn parts(tp: &str) -> (String, String, String) {
        let p: Vec<&str> = tp.split('-').collect();
        assert_eq!(p.len(), 4, "{tp}");
        assert_eq!(p[0], "00");
        assert_eq!(p[1].len(), 32);
        assert_eq!(p[2].len(), 16);
        (p[1].to_string(), p[2].to_string(), p[3].to_string())
    }

    #[test]
    fn child_joins_parent_trace_across_nodes() {
        let anchor = NodeTracer::new("anchor", None, vec![("peer.id".into(), "a".into())]).unwrap();
        let edge = NodeTracer::new("edge-1", None, vec![]).unwrap();
        let root = anchor.start_span("round", None, vec![("round", "7".into())]);
        let tp = root.traceparent();
        assert!(is_valid_traceparent(&tp));
        let (trace, root_span, flags) = parts(&tp);
        assert_eq!(trace, root.trace_id_hex());
        assert_eq!(flags, "01", "sampled");
        let mut child = edge.start_span("train", Some(&tp), vec![]);
        child.set_attr("samples", "123".into());
        let (child_trace, child_span, _) = parts(&child.traceparent());
        assert_eq!(child_trace, trace);
        assert_ne!(child_span, root_span);
        // Grandchild via the child's traceparent: still the same trace.
        let grandchild = anchor.start_span("aggregate", Some(&child.traceparent()), vec![]);
        assert_eq!(grandchild.trace_id_hex(), trace);
        // Another root is another trace.
        let other = anchor.start_span("round", None, vec![]);
        assert_ne!(other.trace_id_hex(), trace);
        grandchild.end();
        child.end();
        root.end();
        anchor.shutdown();
        edge.shutdown();
        edge.shutdown(); // idempotent
    }

    #[test]
    fn malformed_traceparents_start_new_roots() {
        let t = NodeTracer::new("n", None, vec![]).unwrap();
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            t.start_span("s", Some(good), vec![]).trace_id_hex(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let bad = [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-4bf92f3577b34da6a3ce929d0e0e47é6-00f067aa0ba902b7-01",
        ];
        for tp in bad {
            assert!(!is_valid_traceparent(tp), "{tp:?} accepted");
            let s = t.start_span("s", Some(tp), vec![]);
            let (trace, span, _) = parts(&s.traceparent());
            assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_ne!(trace, "0".repeat(32), "a new root has a valid trace id");
            assert_ne!(span, "0".repeat(16));
        }
        t.shutdown();
    }

    #[test]
    fn endpoint_urls() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://h:4318/").unwrap(),
            "http://h:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://h/v1/traces").unwrap(),
            "https://h/v1/traces"
        );
        assert!(traces_url("127.0.0.1:4318").is_err());
        assert!(traces_url("http://").is_err());
        assert!(NodeTracer::new("x", Some("not a url"), vec![]).is_err());
    }

    struct Received {
        request_line: String,
        content_type: String,
        body: Vec<u8>,
    }

    /// A tiny OTLP/HTTP sink on 127.0.0.1 answering 200 to every request.
    fn start_sink() -> (String, Arc<Mutex<Vec<Received>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = Arc::clone(&got);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head_end, head) = loop {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break (0, String::new());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break (p + 4, String::from_utf8_lossy(&buf[..p]).to_string());
                    }
                };
                if head.is_empty() {
                    continue;
                }
                let header = |name: &str| {
                    head.lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.trim().to_string())
                };
                let len: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = s.read(&mut chunk).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                g.lock().unwrap().push(Received {
                    request_line: head.lines().next().unwrap_or("").to_string(),
                    content_type: header("content-type").unwrap_or_default(),
                    body: buf[head_end..].to_vec(),
                });
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        (format!("http://{addr}"), got)
    }

    #[test]
    fn otlp_http_export_reaches_sink_on_shutdown() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
        use prost::Message;

        let (endpoint, got) = start_sink();
        let tracer = NodeTracer::new(
            "edge-7",
            Some(&endpoint),
            vec![("peer.id".into(), "12D3KooWtest".into())],
        )
        .unwrap();
        let root = tracer.start_span("round", None, vec![("round", "3".into())]);
        let child = tracer.start_span("local_train", Some(&root.traceparent()), vec![]);
        let trace_hex = root.trace_id_hex();
        child.end();
        root.end();
        tracer.shutdown();

        let got = got.lock().unwrap();
        assert!(!got.is_empty(), "the sink received nothing");
        let mut names = Vec::new();
        for r in got.iter() {
            assert_eq!(r.request_line, "POST /v1/traces HTTP/1.1");
            assert_eq!(r.content_type, "application/x-protobuf");
            let req = ExportTraceServiceRequest::decode(r.body.as_slice()).unwrap();
            for rs in &req.resource_spans {
                let attrs = &rs.resource.as_ref().unwrap().attributes;
                let attr = |k: &str| {
                    attrs
                        .iter()
                        .find(|a| a.key == k)
                        .and_then(|a| match &a.value {
                            Some(v) => match &v.value {
                                Some(AnyValue::StringValue(s)) => Some(s.clone()),
                                _ => None,
                            },
                            None => None,
                        })
                };
                assert_eq!(attr("service.name").as_deref(), Some("edge-7"));
                assert_eq!(attr("peer.id").as_deref(), Some("12D3KooWtest"));
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        assert_eq!(hex::encode(&s.trace_id), trace_hex);
                        names.push(s.name.clone());
                    }
                }
            }
        }
        names.sort();
        assert_eq!(names, vec!["local_train".to_string(), "round".to_string()]);
    }

    /// The daemon builds, uses, shuts down and drops tracers inside its tokio runtime
    /// (the blocking HTTP client must not be dropped on a runtime thread).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn export_works_inside_tokio_runtime() {
        let (endpoint, got) = start_sink();
        let tracer = NodeTracer::new("anchor", Some(&endpoint), vec![]).unwrap();
        let span = tracer.start_span("round", None, vec![]);
        tokio::task::yield_now().await;
        drop(span);
        let t = tracer.clone();
        tokio::task::spawn_blocking(move || t.shutdown())
            .await
            .unwrap();
        drop(tracer);
        assert!(
            got.lock()
                .unwrap()
                .iter()
                .any(|r| r.request_line == "POST /v1/traces HTTP/1.1")
        );
        // Dropped on a runtime thread without shutdown: the provider's drop flushes.
        let (endpoint2, got2) = start_sink();
        let dropped = NodeTracer::new("edge-2", Some(&endpoint2), vec![]).unwrap();
        dropped.start_span("round", None, vec![]).end();
        drop(dropped);
        assert_eq!(got2.lock().unwrap().len(), 1);
        // A tracer without endpoint dropped on a runtime thread, never shut down.
        let local = NodeTracer::new("edge", None, vec![]).unwrap();
        local.start_span("x", None, vec![]).end();
        drop(local);
    }
}
