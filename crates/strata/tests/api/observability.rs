//! Issue 14: traces over OTLP to a real receiver (decoded with the OpenTelemetry project's
//! own protobuf definitions, from PyPI), Tokio runtime metrics, and the Grafana dashboard and
//! Prometheus rules in `deploy/` using only metrics that `/metrics` serves.

use std::collections::{BTreeSet, HashMap};

use parking_lot::Mutex;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;

use super::*;

/// An OTLP/HTTP receiver on a spare loopback port: keeps the body of every POST to
/// `/v1/traces` and answers 200.
struct Collector {
    port: u16,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let Some((head, body)) = read_request(&mut conn).await else { return };
                    let head = head.to_ascii_lowercase();
                    assert!(head.starts_with("post /v1/traces "), "{head}");
                    assert!(head.contains("content-type: application/x-protobuf"), "{head}");
                    kept.lock().push(body);
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                });
            }
        });
        Collector { port, bodies }
    }
}

/// Decodes OTLP `ExportTraceServiceRequest` bodies with opentelemetry-proto's generated
/// Python classes, flattened to one JSON object per span (ids in hex).
const DECODE: &str = r#"
import json, sys
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
def value(v):
    return getattr(v, v.WhichOneof("value"))
out = []
for path in sys.argv[1:]:
    req = ExportTraceServiceRequest()
    req.ParseFromString(open(path, "rb").read())
    for rs in req.resource_spans:
        resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "resource": resource, "scope": ss.scope.name,
                    "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(), "name": s.name, "kind": s.kind,
                    "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                    "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                    "status": s.status.code,
                })
print(json.dumps(out))
"#;

const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_B: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACE_OFF: &str = "11111111111111111111111111111111";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn traces_reach_an_otlp_collector_with_parents_and_attributes() {
    let Some(python) = python_with(
        "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        "traces_reach_an_otlp_collector",
        "otlp-proto",
        "no Python with opentelemetry-proto (pip install opentelemetry-proto)",
    ) else {
        return;
    };
    let collector = Collector::start().await;
    let endpoint = format!("http://127.0.0.1:{}", collector.port);
    // Ratio 0: only callers that sampled their own trace are recorded (parent-based).
    let app = spawn(Backend::Sqlite, "otlp", |c| {
        c.tracing.otlp_endpoint = endpoint;
        c.tracing.sample_ratio = 0.0;
    })
    .await
    .unwrap();
    app.register("traced@example.com", "Traced").await;
    let tp = |trace: &str, flags: &str| format!("00-{trace}-{CALLER_SPAN}-{flags}");
    let login_tp = tp(TRACE_A, "01");
    let body = Bytes::from(json!({"email": "traced@example.com", "password": PASSWORD}).to_string());
    let r = app
        .send(
            Method::POST,
            "/v1/sessions",
            &[("content-type", "application/json"), ("traceparent", &login_tp)],
            Some(body),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let token = r.body["token"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {token}");
    let whoami_tp = tp(TRACE_B, "01");
    for _ in 0..2 {
        let r = app
            .send(Method::GET, "/v1/sessions/current", &[("authorization", &auth), ("traceparent", &whoami_tp)], None)
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let unsampled = tp(TRACE_OFF, "00");
    let r = app
        .send(Method::GET, "/v1/sessions/current", &[("authorization", &auth), ("traceparent", &unsampled)], None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Shutdown flushes the exporter's queue.
    app.stop().await;

    let dir = std::env::temp_dir().join(format!("strata-otlp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<String> = collector
        .bodies
        .lock()
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let path = dir.join(format!("{i}.pb"));
            std::fs::write(&path, body).unwrap();
            path.to_string_lossy().into_owned()
        })
        .collect();
    assert!(!files.is_empty(), "the collector received no export request");
    let out = std::process::Command::new(&python).arg("-c").arg(DECODE).args(&files).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "decode failed: {}", String::from_utf8_lossy(&out.stderr));
    let spans: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();

    // Nothing from the unsampled caller, nor from the request without a context (ratio 0).
    assert!(spans.iter().all(|s| s["trace_id"] == TRACE_A || s["trace_id"] == TRACE_B), "{spans:#?}");
    assert!(spans.iter().all(|s| s["resource"]["service.name"] == "strata" && s["scope"] == "strata"));

    let of = |trace: &str| spans.iter().filter(|s| s["trace_id"] == trace).collect::<Vec<_>>();
    let login = of(TRACE_A);
    let server: Vec<_> = login.iter().filter(|s| s["kind"] == 2).collect();
    assert_eq!(server.len(), 1, "one SERVER span for the login: {login:#?}");
    let server = server[0];
    assert_eq!(server["name"], "POST /v1/sessions");
    assert_eq!(server["parent_span_id"], CALLER_SPAN, "the caller's span is the parent");
    assert_eq!(server["attributes"]["http.request.method"], "POST");
    assert_eq!(server["attributes"]["http.route"], "/v1/sessions");
    assert_eq!(server["attributes"]["http.response.status_code"], 201);
    assert_eq!(server["status"], 0, "unset: not an error");
    let children: Vec<_> = login.iter().filter(|s| s["kind"] != 2).collect();
    for child in &children {
        assert_eq!(child["parent_span_id"], server["span_id"], "{child}");
        assert!(child["start"].as_u64() >= server["start"].as_u64(), "{child}");
        assert!(child["end"].as_u64() <= server["end"].as_u64(), "{child}");
    }
    let names: BTreeSet<&str> = children.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.contains("password verify"), "{names:?}");
    let db: Vec<_> = children.iter().filter(|s| s["name"].as_str().unwrap().starts_with("db ")).collect();
    assert!(!db.is_empty(), "{names:?}");
    for span in db {
        assert_eq!(span["kind"], 3, "storage calls are CLIENT spans");
        assert_eq!(span["attributes"]["db.system.name"], "sqlite");
        assert!(span["name"].as_str().unwrap().ends_with(span["attributes"]["db.operation.name"].as_str().unwrap()));
    }

    // Two who-am-I calls under one caller span: two server spans, each with its own children;
    // the second is answered from the cache.
    let whoami = of(TRACE_B);
    let servers: Vec<_> = whoami.iter().filter(|s| s["kind"] == 2).collect();
    assert_eq!(servers.len(), 2);
    for server in &servers {
        assert_eq!(server["name"], "GET /v1/sessions/current");
        assert_eq!(server["parent_span_id"], CALLER_SPAN);
    }
    let ids: HashMap<&str, usize> = servers.iter().map(|s| (s["span_id"].as_str().unwrap(), 0)).collect();
    assert_eq!(ids.len(), 2, "distinct span ids");
    let cache_gets = whoami.iter().filter(|s| s["name"] == "cache get").count();
    assert!(cache_gets >= 2, "every check asks the cache first: {whoami:#?}");
}

#[tokio::test]
async fn tracing_is_off_by_default_and_costs_no_exporter() {
    let app = spawn(Backend::Sqlite, "untraced", |_| {}).await.unwrap();
    let r = app.get("/metrics", None).await;
    let text = String::from_utf8_lossy(&r.raw);
    let exported = text.lines().find(|l| l.starts_with("strata_trace_spans_exported_total")).unwrap();
    assert!(exported.ends_with(" 0"), "{exported}");
    app.stop().await;
}

/// Every sample name `/metrics` can produce: counters get `_total`, histograms
/// `_bucket`/`_sum`/`_count` (from the `# TYPE` lines, so families with no series yet count).
fn served_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// `strata_…` identifiers in `text` (PromQL expressions, YAML).
fn metric_references(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("strata_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            found.insert(text[start..end].to_owned());
        }
        i = end;
    }
    found
}

fn expressions(panel: &Value, out: &mut Vec<String>) {
    match panel {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(e)) => out.push(e.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn dashboard_and_alert_rules_use_only_served_metrics() {
    let app = spawn(Backend::Sqlite, "dashboards", |_| {}).await.unwrap();
    let exposition = String::from_utf8(app.get("/metrics", None).await.raw.to_vec()).unwrap();
    app.stop().await;
    let served = served_names(&exposition);
    for runtime in ["strata_tokio_workers", "strata_tokio_global_queue_depth", "strata_tokio_worker_busy_seconds_total"]
    {
        assert!(served.contains(runtime), "{runtime} missing from /metrics");
    }

    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/grafana/strata-dashboard.json")).unwrap())
            .unwrap();
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has its panels' queries: {}", exprs.len());
    let rules = std::fs::read_to_string(format!("{root}/prometheus/strata-rules.yml")).unwrap();
    let mut used = metric_references(&rules);
    assert!(used.len() >= 5, "the rules use metrics: {used:?}");
    for e in &exprs {
        used.extend(metric_references(e));
    }
    let missing: Vec<_> = used.iter().filter(|m| !served.contains(*m)).collect();
    assert!(missing.is_empty(), "used by deploy/ but not served on /metrics: {missing:?}");
}

#[test]
fn metric_references_are_whole_identifiers() {
    let found = metric_references("sum(rate(strata_http_requests_total{x=\"y\"}[1m])) / my_strata_x + strata_up");
    assert_eq!(found.into_iter().collect::<Vec<_>>(), ["strata_http_requests_total", "strata_up"]);
}
