//! OTLP/HTTP trace export: spans from strata-core's [`SpanExporter`] port, batched and posted
//! as protobuf (`application/x-protobuf`) to `<endpoint>/v1/traces`, the way the
//! OpenTelemetry Collector, Jaeger, Tempo and the vendors' agents receive them.
//!
//! Requests never wait for it: spans go into a bounded queue (`QUEUE_SPANS`), and a full queue
//! drops and counts them. One task drains the queue in batches of up to `BATCH_SPANS` or every
//! `FLUSH_EVERY`, and retries a batch that met a throttling or unavailable collector (429,
//! 502, 503, 504, no answer) twice with back-off before dropping it. On shutdown it sends what
//! is queued. The HTTP goes through strata-core's [`WebhookSender`] port (the webhook sender:
//! plain or TLS, one deadline per request), so this crate holds no HTTP stack of its own.
//!
//! Depends on strata-core only.

use std::sync::Arc;
use std::time::Duration;

use strata_core::trace::{AttributeValue, Span, SpanExporter, SpanKind, TraceObserver};
use strata_core::webhooks::{SendOutcome, WebhookRequest, WebhookSender, WebhookUrl};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Spans waiting for export at most; OpenTelemetry SDKs default to 2048 too.
pub const QUEUE_SPANS: usize = 2048;
/// Spans per export request at most (the SDKs' default).
pub const BATCH_SPANS: usize = 512;
/// A partial batch waits at most this long.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Each export request's deadline, connect to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPTS: u32 = 3;
const RETRY_MAX_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct OtlpSettings {
    /// `STRATA_OTLP_ENDPOINT`: the collector's base URL (`http://collector:4318`), or the full
    /// traces URL when it already ends in `/v1/traces`.
    pub endpoint: String,
    pub service_name: String,
    pub service_version: String,
    /// `service.instance.id`: tells this process's spans from its replicas'.
    pub instance_id: String,
}

impl OtlpSettings {
    /// The URL spans are posted to.
    pub fn traces_url(&self) -> Result<WebhookUrl, String> {
        let base = self.endpoint.trim_end_matches('/');
        let url = if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") };
        WebhookUrl::parse(&url).map_err(|e| format!("STRATA_OTLP_ENDPOINT: {}", e.message))
    }
}

/// The [`SpanExporter`] requests hand their spans to.
pub struct OtlpExporter {
    queue: mpsc::Sender<Span>,
    observer: Arc<dyn TraceObserver>,
}

impl SpanExporter for OtlpExporter {
    fn export(&self, spans: Vec<Span>) {
        let mut dropped = 0;
        for span in spans {
            if self.queue.try_send(span).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.observer.dropped("queue_full", dropped);
        }
    }
}

/// Starts the export task: it runs until `shutdown` turns true (or its sender goes away),
/// then sends what is queued and ends.
pub fn start(
    settings: &OtlpSettings,
    sender: Arc<dyn WebhookSender>,
    observer: Arc<dyn TraceObserver>,
    shutdown: watch::Receiver<bool>,
) -> Result<(Arc<OtlpExporter>, JoinHandle<()>), String> {
    let url = settings.traces_url()?;
    let (queue, spans) = mpsc::channel(QUEUE_SPANS);
    let resource = resource(settings);
    let task = Export { url, sender, observer: observer.clone(), resource, healthy: true };
    let handle = tokio::spawn(task.run(spans, shutdown));
    Ok((Arc::new(OtlpExporter { queue, observer }), handle))
}

struct Export {
    url: WebhookUrl,
    sender: Arc<dyn WebhookSender>,
    observer: Arc<dyn TraceObserver>,
    resource: proto::Resource,
    /// Whether the last export went through: failures are logged when they start and when
    /// they end, not once per batch.
    healthy: bool,
}

impl Export {
    async fn run(mut self, mut spans: mpsc::Receiver<Span>, mut shutdown: watch::Receiver<bool>) {
        loop {
            // Biased to the queue: spans already queued go into this batch before a shutdown
            // is noticed.
            let first = tokio::select! {
                biased;
                span = spans.recv() => span,
                _ = shutdown.wait_for(|stop| *stop) => None,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            let flush_at = tokio::time::Instant::now() + FLUSH_EVERY;
            while batch.len() < BATCH_SPANS {
                tokio::select! {
                    biased;
                    span = spans.recv() => match span {
                        Some(span) => batch.push(span),
                        None => break,
                    },
                    () = tokio::time::sleep_until(flush_at) => break,
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
            }
            self.send(batch).await;
        }
        // Shutting down: what is queued goes out; nothing new comes in.
        spans.close();
        let mut batch = Vec::new();
        while let Ok(span) = spans.try_recv() {
            batch.push(span);
            if batch.len() == BATCH_SPANS {
                self.send(std::mem::take(&mut batch)).await;
            }
        }
        if !batch.is_empty() {
            self.send(batch).await;
        }
    }

    async fn send(&mut self, batch: Vec<Span>) {
        let count = batch.len();
        let body = encode(&self.resource, &batch);
        let request = WebhookRequest {
            url: self.url.clone(),
            headers: vec![("content-type".into(), "application/x-protobuf".into())],
            body,
            timeout: REQUEST_TIMEOUT,
        };
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            let why = match self.sender.send(&request).await {
                SendOutcome::Answered { status: 200..=299, .. } => {
                    if !self.healthy {
                        tracing::info!(url = self.url.as_str(), "trace export works again");
                        self.healthy = true;
                    }
                    self.observer.exported(count);
                    return;
                }
                SendOutcome::Answered { status: status @ (429 | 502 | 503 | 504), retry_after } => {
                    wait = retry_after.unwrap_or(wait).min(RETRY_MAX_WAIT);
                    format!("collector answered {status}")
                }
                SendOutcome::Answered { status, .. } => {
                    // 4xx: the collector refuses this batch; sending it again changes nothing.
                    self.failed(format!("collector refused the batch with {status}"));
                    self.observer.dropped("rejected", count);
                    return;
                }
                SendOutcome::Failed(why) => why,
            };
            if attempt == ATTEMPTS {
                self.failed(why);
                break;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX_WAIT);
        }
        self.observer.dropped("unreachable", count);
    }

    fn failed(&mut self, why: String) {
        if self.healthy {
            tracing::warn!(url = self.url.as_str(), error = %why, "trace export failing; spans are dropped until it works");
            self.healthy = false;
        } else {
            tracing::debug!(error = %why, "trace export failed");
        }
    }
}

fn string_attribute(key: &str, value: &str) -> proto::KeyValue {
    proto::KeyValue {
        key: key.to_owned(),
        value: Some(proto::AnyValue { value: Some(proto::any_value::Value::StringValue(value.to_owned())) }),
    }
}

fn resource(settings: &OtlpSettings) -> proto::Resource {
    proto::Resource {
        attributes: vec![
            string_attribute("service.name", &settings.service_name),
            string_attribute("service.version", &settings.service_version),
            string_attribute("service.instance.id", &settings.instance_id),
            string_attribute("telemetry.sdk.name", "strata"),
            string_attribute("telemetry.sdk.language", "rust"),
        ],
        dropped_attributes_count: 0,
    }
}

/// An `ExportTraceServiceRequest` holding `spans`, protobuf-encoded.
pub fn encode(resource: &proto::Resource, spans: &[Span]) -> Vec<u8> {
    use prost::Message as _;
    let spans = spans.iter().map(span).collect();
    let request = proto::ExportTraceServiceRequest {
        resource_spans: vec![proto::ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![proto::ScopeSpans {
                scope: Some(proto::InstrumentationScope {
                    name: "strata".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    request.encode_to_vec()
}

fn span(s: &Span) -> proto::Span {
    let attributes = s
        .attributes
        .iter()
        .map(|(key, value)| proto::KeyValue {
            key: (*key).to_owned(),
            value: Some(proto::AnyValue {
                value: Some(match value {
                    AttributeValue::Str(v) => proto::any_value::Value::StringValue(v.to_string()),
                    AttributeValue::Int(v) => proto::any_value::Value::IntValue(*v),
                }),
            }),
        })
        .collect();
    proto::Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: String::new(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        // Bit 8 (0x100): whether the parent is remote is known; bit 9: it is. Collectors use
        // it to tell a service's entry span from an in-process child.
        flags: match (s.kind, s.parent_span_id) {
            (SpanKind::Server, Some(_)) => 0x301,
            _ => 0x101,
        },
        name: s.name.to_string(),
        kind: match s.kind {
            SpanKind::Internal => proto::SpanKind::Internal,
            SpanKind::Server => proto::SpanKind::Server,
            SpanKind::Client => proto::SpanKind::Client,
        } as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes,
        dropped_attributes_count: 0,
        status: Some(proto::Status {
            message: String::new(),
            code: if s.error { proto::StatusCode::Error } else { proto::StatusCode::Unset } as i32,
        }),
    }
}

/// The OTLP messages Strata sends, with opentelemetry-proto's field numbers
/// (`opentelemetry/proto/collector/trace/v1/trace_service.proto`, `trace/v1/trace.proto`,
/// `common/v1/common.proto`, `resource/v1/resource.proto`). Fields Strata never sets (events,
/// links, trace state on resources, array values) are left out: protobuf readers skip absent
/// fields.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "2")]
        pub dropped_attributes_count: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(fixed32, tag = "16")]
        pub flags: u32,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(enumeration = "SpanKind", tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(uint32, tag = "10")]
        pub dropped_attributes_count: u32,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum SpanKind {
        Unspecified = 0,
        Internal = 1,
        Server = 2,
        Client = 3,
        Producer = 4,
        Consumer = 5,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(enumeration = "StatusCode", tag = "3")]
        pub code: i32,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum StatusCode {
        Unset = 0,
        Ok = 1,
        Error = 2,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "any_value::Value", tags = "1, 3")]
        pub value: Option<any_value::Value>,
    }

    pub mod any_value {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            StringValue(String),
            #[prost(int64, tag = "3")]
            IntValue(i64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use std::borrow::Cow;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers with the scripted statuses in order (then 200), keeping every request.
    #[derive(Default)]
    struct Collector {
        script: Mutex<Vec<u16>>,
        bodies: Mutex<Vec<Vec<u8>>>,
    }

    #[async_trait::async_trait]
    impl WebhookSender for Collector {
        async fn send(&self, request: &WebhookRequest) -> SendOutcome {
            assert_eq!(request.url.as_str(), "http://127.0.0.1:4318/v1/traces");
            assert!(request.headers.contains(&("content-type".into(), "application/x-protobuf".into())));
            self.bodies.lock().unwrap().push(request.body.clone());
            let mut script = self.script.lock().unwrap();
            let status = if script.is_empty() { 200 } else { script.remove(0) };
            SendOutcome::Answered { status, retry_after: None }
        }
    }

    #[derive(Default)]
    struct Counts {
        exported: AtomicUsize,
        dropped: Mutex<Vec<(&'static str, usize)>>,
    }

    impl TraceObserver for Counts {
        fn exported(&self, spans: usize) {
            self.exported.fetch_add(spans, Ordering::Relaxed);
        }
        fn dropped(&self, reason: &'static str, spans: usize) {
            self.dropped.lock().unwrap().push((reason, spans));
        }
    }

    fn settings(endpoint: &str) -> OtlpSettings {
        OtlpSettings {
            endpoint: endpoint.into(),
            service_name: "strata".into(),
            service_version: "0.1.0".into(),
            instance_id: "test-1".into(),
        }
    }

    fn a_span(n: u8) -> Span {
        Span {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: None,
            name: Cow::Borrowed("GET /healthz"),
            kind: SpanKind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![("http.response.status_code", AttributeValue::Int(200))],
            error: false,
        }
    }

    #[test]
    fn the_endpoint_is_a_base_or_the_traces_url() {
        for e in ["http://c:4318", "http://c:4318/", "http://c:4318/v1/traces"] {
            assert_eq!(settings(e).traces_url().unwrap().as_str(), "http://c:4318/v1/traces");
        }
        assert!(settings("ftp://c").traces_url().is_err());
    }

    async fn run(script: Vec<u16>, spans: Vec<Span>) -> (Arc<Collector>, Arc<Counts>) {
        let collector = Arc::new(Collector { script: Mutex::new(script), ..Collector::default() });
        let counts = Arc::new(Counts::default());
        let (stop, stopping) = watch::channel(false);
        let (exporter, task) =
            start(&settings("http://127.0.0.1:4318"), collector.clone(), counts.clone(), stopping).unwrap();
        exporter.export(spans);
        stop.send(true).unwrap();
        task.await.unwrap();
        (collector, counts)
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_one_protobuf_request_and_goes_out_on_shutdown() {
        let (collector, counts) = run(vec![], vec![a_span(1), a_span(2)]).await;
        let bodies = collector.bodies.lock().unwrap();
        assert_eq!(bodies.len(), 1);
        let req = proto::ExportTraceServiceRequest::decode(bodies[0].as_slice()).unwrap();
        let resource = req.resource_spans[0].resource.as_ref().unwrap();
        assert!(resource.attributes.contains(&string_attribute("service.name", "strata")));
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].trace_id, vec![1; 16]);
        assert_eq!(spans[0].kind, proto::SpanKind::Server as i32);
        assert_eq!(counts.exported.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_is_retried_and_refused_is_dropped() {
        let (collector, counts) = run(vec![503, 429], vec![a_span(1)]).await;
        assert_eq!(collector.bodies.lock().unwrap().len(), 3, "two retries");
        assert_eq!(counts.exported.load(Ordering::Relaxed), 1);

        let (collector, counts) = run(vec![503, 503, 503], vec![a_span(1)]).await;
        assert_eq!(collector.bodies.lock().unwrap().len(), 3);
        assert_eq!(*counts.dropped.lock().unwrap(), vec![("unreachable", 1)]);

        let (collector, counts) = run(vec![400], vec![a_span(1)]).await;
        assert_eq!(collector.bodies.lock().unwrap().len(), 1, "a refusal is not retried");
        assert_eq!(*counts.dropped.lock().unwrap(), vec![("rejected", 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let spans: Vec<Span> = (0..QUEUE_SPANS + 10).map(|n| a_span(n as u8)).collect();
        let (collector, counts) = run(vec![], spans).await;
        assert_eq!(*counts.dropped.lock().unwrap(), vec![("queue_full", 10)]);
        assert_eq!(counts.exported.load(Ordering::Relaxed), QUEUE_SPANS);
        assert_eq!(collector.bodies.lock().unwrap().len(), QUEUE_SPANS / BATCH_SPANS);
    }
}
