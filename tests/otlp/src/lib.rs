//! azure-otlp: an OTLP/gRPC logs receiver for the tests of the filter's per-request usage
//! record (Envoy's `envoy.access_loggers.open_telemetry` exporting to it).
//!
//! It serves `opentelemetry.proto.collector.logs.v1.LogsService/Export` (HTTP/2, plaintext,
//! loopback) with the official protos of the `opentelemetry-proto` crate, keeps every log
//! record it receives with its resource attributes, and answers success. Like a collector it
//! can be told to refuse exports (gRPC UNAVAILABLE), to check that a failing sink never
//! affects requests.
//!
//! It also serves `opentelemetry.proto.collector.trace.v1.TraceService/Export` and keeps the
//! spans (Envoy's OpenTelemetry tracer exporting to it), for the GenAI spans.
//!
//! The server runs on its own thread and Tokio runtime; dropping [`OtlpReceiver`] stops it.

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
mod traces;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

/// One log record as received, attributes flattened to strings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReceivedLog {
    /// The record's body (a string body, or the debug form of another value).
    pub body: String,
    pub attributes: BTreeMap<String, String>,
    /// The attributes of the resource the record was sent under (Envoy's node, `log_name`).
    pub resource: BTreeMap<String, String>,
    pub time_unix_nano: u64,
}

impl ReceivedLog {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// One span as received, ids in hex, attributes flattened to strings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReceivedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, String>,
    /// The attribute values' kinds (`string`, `int`, ...), to tell typed values.
    pub kinds: BTreeMap<String, &'static str>,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn kind(v: &Option<AnyValue>) -> &'static str {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(_)) => "string",
        Some(any_value::Value::IntValue(_)) => "int",
        Some(any_value::Value::DoubleValue(_)) => "double",
        Some(any_value::Value::BoolValue(_)) => "bool",
        Some(_) => "other",
        None => "none",
    }
}

#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) spans: Mutex<Vec<ReceivedSpan>>,
    logs: Mutex<Vec<ReceivedLog>>,
    exports: Mutex<usize>,
    refuse: AtomicBool,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

pub(crate) fn flatten(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

struct Service(Arc<Shared>);

#[tonic::async_trait]
impl LogsService for Service {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        if self.0.refuse.load(Ordering::SeqCst) {
            return Err(Status::unavailable("azure-otlp: refusing exports"));
        }
        let mut received = Vec::new();
        for resource_logs in request.into_inner().resource_logs {
            let resource = resource_logs
                .resource
                .map(|r| flatten(&r.attributes))
                .unwrap_or_default();
            for scope in resource_logs.scope_logs {
                for record in scope.log_records {
                    received.push(ReceivedLog {
                        body: text(&record.body),
                        attributes: flatten(&record.attributes),
                        resource: resource.clone(),
                        time_unix_nano: record.time_unix_nano,
                    });
                }
            }
        }
        *self.0.exports.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(received);
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver on 127.0.0.1:<free port>.
pub struct OtlpReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    pub fn start() -> io::Result<OtlpReceiver> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("azure-otlp")
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared::default());
        let service = LogsServiceServer::new(Service(shared.clone()));
        let traces = traces::TraceServer(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("azure-otlp".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("azure-otlp: listener: {e}");
                            return;
                        }
                    };
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    let server = tonic::transport::Server::builder()
                        .add_service(service)
                        .add_service(traces)
                        .serve_with_incoming(incoming);
                    // No graceful shutdown: Envoy keeps its HTTP/2 connection open.
                    tokio::select! {
                        served = server => {
                            if let Err(e) = served {
                                eprintln!("azure-otlp: server stopped: {e}");
                            }
                        }
                        _ = rx => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_millis(200));
            })?;
        Ok(OtlpReceiver {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until at least `n` spans arrived (or `timeout`); returns what arrived.
    pub async fn wait_for_spans(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if spans.len() >= n || Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every record received so far, oldest first.
    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.shared
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Export calls answered successfully.
    pub fn exports(&self) -> usize {
        *self
            .shared
            .exports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// While set, exports are answered gRPC UNAVAILABLE and nothing is kept.
    pub fn set_refusing(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// Waits (polling, at most `timeout`) until at least `n` records arrived; returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedLog> {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.len() >= n || Instant::now() >= deadline {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        }
    }

    /// A real OTLP client (the crate's tonic client) exports two records; both are kept with
    /// their attributes; a refusing receiver answers UNAVAILABLE and keeps nothing.
    #[tokio::test]
    async fn receives_what_a_client_exports() {
        let receiver = OtlpReceiver::start().unwrap();
        let mut client =
            LogsServiceClient::connect(format!("http://127.0.0.1:{}", receiver.port()))
                .await
                .unwrap();
        let record = |model: &str| LogRecord {
            time_unix_nano: 7,
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(
                    "POST /v1/chat/completions".into(),
                )),
            }),
            attributes: vec![kv("gen_ai.request.model", model)],
            ..Default::default()
        };
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: vec![kv("log_name", "azure_llm_usage")],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![record("gpt-4o"), record("o3-mini")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        client.export(request.clone()).await.unwrap();
        let logs = receiver.wait_for(2, Duration::from_secs(2)).await;
        assert_eq!(logs.len(), 2);
        assert_eq!(logs[0].attr("gen_ai.request.model"), Some("gpt-4o"));
        assert_eq!(logs[1].attr("gen_ai.request.model"), Some("o3-mini"));
        assert_eq!(logs[0].body, "POST /v1/chat/completions");
        assert_eq!(
            logs[0].resource.get("log_name").map(String::as_str),
            Some("azure_llm_usage")
        );
        assert_eq!(logs[0].time_unix_nano, 7);
        receiver.set_refusing(true);
        let refused = client.export(request).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert_eq!(receiver.logs().len(), 2);
        assert_eq!(receiver.exports(), 1);
    }
}
