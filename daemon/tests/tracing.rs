//! One OpenTelemetry trace per round across nodes, checked at the wire: a small OTLP/HTTP
//! receiver on 127.0.0.1 decodes what a demo federation (anchor + 3 edges in-process,
//! each exporting as its own service) sends, with the official OTLP protobuf definitions
//! (`opentelemetry-proto`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use fedd::demo::{DemoOptions, run_demo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request body the receiver accepts.
const MAX_BODY: usize = 16 << 20;

/// One exported span, flattened with its resource.
#[derive(Clone, Debug)]
struct SpanRecord {
    service: String,
    resource: BTreeMap<String, String>,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attrs: BTreeMap<String, String>,
}

fn string_attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some((kv.key.clone(), s.clone())),
            AnyValue::IntValue(i) => Some((kv.key.clone(), i.to_string())),
            _ => None,
        })
        .collect()
}

/// A minimal OTLP/HTTP (protobuf) trace receiver: HTTP/1.1 with keep-alive, bodies with
/// `Content-Length`, every `POST /v1/traces` decoded as an `ExportTraceServiceRequest`.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&spans);
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    if let Err(e) = serve(sock, sink).await {
                        eprintln!("otlp receiver: {e}");
                    }
                });
            }
        });
        Receiver { url, spans, task }
    }

    fn spans(&self) -> Vec<SpanRecord> {
        self.spans.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn respond(sock: &mut TcpStream, status: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await
}

async fn serve(mut sock: TcpStream, sink: Arc<Mutex<Vec<SpanRecord>>>) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Request head.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(()); // the client closed the connection
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.lines();
        let request_line = lines.next().unwrap_or_default().to_string();
        let headers: BTreeMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let Some(len) = headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n <= MAX_BODY)
        else {
            respond(&mut sock, "411 Length Required").await?;
            return Ok(());
        };
        while buf.len() < head_end + len {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body: Vec<u8> = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        assert_eq!(request_line, "POST /v1/traces HTTP/1.1");
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some("application/x-protobuf")
        );
        let req = ExportTraceServiceRequest::decode(body.as_slice())
            .expect("an OTLP ExportTraceServiceRequest");
        let mut got = Vec::new();
        for rs in req.resource_spans {
            let resource = string_attrs(
                &rs.resource
                    .as_ref()
                    .map(|r| r.attributes.clone())
                    .unwrap_or_default(),
            );
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(SpanRecord {
                        service: service.clone(),
                        resource: resource.clone(),
                        name: s.name,
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent_span_id: hex::encode(&s.parent_span_id),
                        attrs: string_attrs(&s.attributes),
                    });
                }
            }
        }
        sink.lock().unwrap().extend(got);
        respond(&mut sock, "200 OK").await?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_round_spans_anchor_and_edges_with_correct_parents() {
    let receiver = Receiver::start().await;
    let summary = run_demo(DemoOptions {
        edges: 3,
        rounds: 3,
        otlp_endpoint: Some(receiver.url.clone()),
        machines_per_edge: 8,
        timeout: Duration::from_secs(180),
        ..DemoOptions::default()
    })
    .await
    .expect("the demo federation completes");
    eprintln!("{summary}");
    // Every node flushed its exporter while stopping, before run_demo returned.
    let spans = receiver.spans();
    assert!(!spans.is_empty(), "the receiver got no spans");

    // Each node exports as its own service, with its peer id and the federation id.
    let mut peer_ids: BTreeMap<String, String> = BTreeMap::new();
    for s in &spans {
        assert_eq!(
            s.resource.get("federation.id").map(String::as_str),
            Some("demo"),
            "{s:?}"
        );
        let peer = s.resource.get("peer.id").cloned().unwrap_or_default();
        assert!(
            peer.starts_with("12D3KooW"),
            "peer.id {peer:?} of {}",
            s.service
        );
        let known = peer_ids.entry(s.service.clone()).or_insert(peer.clone());
        assert_eq!(*known, peer, "one peer id per service");
    }
    let services: BTreeSet<&str> = peer_ids.keys().map(String::as_str).collect();
    assert_eq!(
        services,
        BTreeSet::from(["fedd-anchor", "fedd-edge-0", "fedd-edge-1", "fedd-edge-2"]),
        "service names"
    );
    let distinct_peers: BTreeSet<&String> = peer_ids.values().collect();
    assert_eq!(distinct_peers.len(), 4, "{peer_ids:?}");

    for round in 1..=3u64 {
        let round_attr = round.to_string();
        // The coordinator's root span of the round.
        let roots: Vec<&SpanRecord> = spans
            .iter()
            .filter(|s| s.name == "round" && s.attrs.get("round") == Some(&round_attr))
            .collect();
        assert_eq!(roots.len(), 1, "round {round}: round spans {roots:?}");
        let root = roots[0];
        assert!(
            root.service.starts_with("fedd-edge-"),
            "the coordinator is an edge"
        );
        assert!(root.parent_span_id.is_empty(), "the round span is a root");
        let in_trace: Vec<&SpanRecord> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id && s.span_id != root.span_id)
            .collect();
        for s in &in_trace {
            assert_eq!(
                s.parent_span_id, root.span_id,
                "round {round}: {} of {} is not a child of the round span",
                s.name, s.service
            );
        }
        let names_of = |svc: &dyn Fn(&str) -> bool| -> BTreeMap<String, BTreeSet<String>> {
            let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for s in in_trace.iter().filter(|s| svc(&s.service)) {
                m.entry(s.name.clone())
                    .or_default()
                    .insert(s.service.clone());
            }
            m
        };
        let anchor = names_of(&|s| s == "fedd-anchor");
        for name in [
            "anchor.collect",
            "anchor.validate",
            "anchor.aggregate",
            "anchor.commit",
            "anchor.evaluate",
        ] {
            assert!(
                anchor.contains_key(name),
                "round {round}: no {name} span in the round's trace: {anchor:?}"
            );
        }
        let validations = in_trace
            .iter()
            .filter(|s| s.name == "anchor.validate")
            .count();
        assert_eq!(validations, 3, "one validation per update");
        let commit = in_trace.iter().find(|s| s.name == "anchor.commit").unwrap();
        assert_eq!(commit.attrs.get("round"), Some(&round_attr));
        assert_eq!(commit.attrs.get("version"), Some(&round_attr));
        let edges = names_of(&|s| s.starts_with("fedd-edge-"));
        for name in ["edge.train", "edge.push"] {
            let n = edges.get(name).map_or(0, BTreeSet::len);
            assert!(
                n >= 2,
                "round {round}: {name} spans from {n} edges in the round's trace: {edges:?}"
            );
        }
        if round == 1 {
            // Every edge fetches the genesis model within round 1.
            let n = edges.get("edge.fetch").map_or(0, BTreeSet::len);
            assert!(n >= 2, "round 1: edge.fetch from {n} edges: {edges:?}");
        }
        eprintln!(
            "round {round}: trace {} with {} spans: anchor {:?}, edges {:?}",
            root.trace_id,
            in_trace.len() + 1,
            anchor.keys().collect::<Vec<_>>(),
            edges
                .iter()
                .map(|(k, v)| (k.as_str(), v.len()))
                .collect::<Vec<_>>()
        );
    }
    // Rounds are separate traces.
    let traces: BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.name == "anchor.commit")
        .map(|s| s.trace_id.as_str())
        .collect();
    assert_eq!(traces.len(), 3, "one trace per round");
}
