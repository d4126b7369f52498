//! An OTLP/HTTP receiver on a free loopback port: what an OpenTelemetry
//! exporter sends to `/v1/traces` and `/v1/metrics` (protobuf), decoded with
//! the official protobuf definitions (`opentelemetry-proto`), kept for the
//! test to read. A real collector binary is not installable here; this is
//! the protocol's receiving end, nothing more.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    /// Bodies that were not protobuf of the expected message.
    bad: usize,
}

/// The receiver; stops when dropped.
pub struct OtlpReceiver {
    addr: std::net::SocketAddr,
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn protobuf(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"))
}

async fn traces(State(r): State<Arc<Mutex<Received>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut r = r.lock().unwrap();
    match ExportTraceServiceRequest::decode(body) {
        Ok(req) if protobuf(&headers) => {
            r.traces.push(req);
            StatusCode::OK
        }
        _ => {
            r.bad += 1;
            StatusCode::BAD_REQUEST
        }
    }
}

async fn metrics(State(r): State<Arc<Mutex<Received>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut r = r.lock().unwrap();
    match ExportMetricsServiceRequest::decode(body) {
        Ok(req) if protobuf(&headers) => {
            r.metrics.push(req);
            StatusCode::OK
        }
        _ => {
            r.bad += 1;
            StatusCode::BAD_REQUEST
        }
    }
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let received = Arc::new(Mutex::new(Received::default()));
        let app = axum::Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/metrics", post(metrics))
            // Logs are not exported by the example; accept and drop them.
            .route("/v1/logs", post(|| async { StatusCode::OK }))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        OtlpReceiver { addr, received, task }
    }

    /// `http://127.0.0.1:PORT`, the OTLP/HTTP endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        let r = self.received.lock().unwrap();
        r.traces
            .iter()
            .flat_map(|req| &req.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| ss.spans.clone())
            .collect()
    }

    /// Every metric received so far.
    pub fn metrics(&self) -> Vec<Metric> {
        let r = self.received.lock().unwrap();
        r.metrics
            .iter()
            .flat_map(|req| &req.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| sm.metrics.clone())
            .collect()
    }

    /// How many bodies could not be decoded.
    pub fn bad_requests(&self) -> usize {
        self.received.lock().unwrap().bad
    }

    /// Wait (at most `limit`) until `ready` holds.
    pub async fn wait_for(&self, limit: Duration, ready: impl Fn(&OtlpReceiver) -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if ready(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ready(self)
    }

    /// Everything received as text (names, attribute keys and values, span
    /// events, resource attributes): for checks that a value never left.
    pub fn all_text(&self) -> String {
        let r = self.received.lock().unwrap();
        format!("{:?}\n{:?}", r.traces, r.metrics)
    }
}

/// A string attribute of a span.
pub fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match &kv.value {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => Some(s.as_str()),
            _ => None,
        })
}

/// A counter's value summed over the data points whose attributes include
/// `with`, in the latest export that has it (sums are cumulative).
pub fn counter_sum(metrics: &[Metric], name: &str, with: &[(&str, &str)]) -> u64 {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    metrics
        .iter()
        .filter(|m| m.name == name)
        .filter_map(|m| match &m.data {
            Some(metric::Data::Sum(sum)) => Some(sum),
            _ => None,
        })
        .map(|sum| {
            sum.data_points
                .iter()
                .filter(|p| with.iter().all(|(k, v)| attribute(&p.attributes, k) == Some(*v)))
                .map(|p| match p.value {
                    Some(Value::AsInt(i)) => i as u64,
                    Some(Value::AsDouble(d)) => d as u64,
                    None => 0,
                })
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
}
