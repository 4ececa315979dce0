//! The target's own view: `/metrics` (Prometheus text) scraped before and after the run, and
//! the difference turned into per-route request counts and latencies and per-operation
//! database times, to set beside what the client measured.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::client::{Client, Response, Target, Want, write_request};

/// A sample's metric name, sorted labels and value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// One scrape: series key (`name{sorted labels}`) → (name, labels, value).
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub series: BTreeMap<String, Sample>,
}

/// Parses the Prometheus text exposition format (comments and timestamps ignored).
pub fn parse_prometheus(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((name, labels, value)) = parse_line(line) {
            let mut labels = labels;
            labels.sort();
            let key = format!("{name}{labels:?}");
            scrape.series.insert(key, (name, labels, value));
        }
    }
    scrape
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if rest.starts_with('{') {
        let mut chars = rest.char_indices().skip(1).peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    // A quoted value with \" \\ \n escapes.
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &rest[end? + 1..];
    }
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some((name, labels, value))
}

/// Per-route figures the server itself recorded during the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ServerRoute {
    pub route: String,
    pub method: String,
    pub status: String,
    pub requests: f64,
    pub mean_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ServerDbOp {
    pub op: String,
    pub queries: f64,
    pub mean_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ServerMetrics {
    /// Whether both scrapes succeeded; if not, `error` says why and the lists are empty.
    pub available: bool,
    pub error: Option<String>,
    pub routes: Vec<ServerRoute>,
    pub db: Vec<ServerDbOp>,
}

const HTTP_HISTOGRAM: &str = "strata_http_request_duration_seconds";
const HTTP_COUNTER: &str = "strata_http_requests_total";
const DB_HISTOGRAM: &str = "strata_db_query_duration_seconds";

/// Groups of one histogram's series by their labels other than `le`.
#[derive(Default)]
struct HistogramDelta {
    count: f64,
    sum: f64,
    buckets: Vec<(f64, f64)>,
}

fn histogram_deltas(before: &Scrape, after: &Scrape, family: &str) -> BTreeMap<Vec<(String, String)>, HistogramDelta> {
    let mut out: BTreeMap<Vec<(String, String)>, HistogramDelta> = BTreeMap::new();
    for (key, (name, labels, value)) in &after.series {
        let Some(suffix) = name.strip_prefix(family) else {
            continue;
        };
        let delta = value - before.series.get(key).map_or(0.0, |s| s.2);
        let group: Vec<(String, String)> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
        let entry = out.entry(group).or_default();
        match suffix {
            "_count" => entry.count = delta,
            "_sum" => entry.sum = delta,
            "_bucket" => {
                let le = labels.iter().find(|(k, _)| k == "le").map(|(_, v)| v.as_str()).unwrap_or("+Inf");
                let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
                entry.buckets.push((bound, delta));
            }
            _ => {}
        }
    }
    out
}

/// `histogram_quantile`: linear interpolation inside the bucket holding the rank.
pub fn bucket_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut buckets = buckets.to_vec();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for &(bound, cumulative) in &buckets {
        if cumulative >= rank {
            if bound.is_infinite() {
                return Some(previous.0);
            }
            let in_bucket = cumulative - previous.1;
            let fraction = if in_bucket > 0.0 { (rank - previous.1) / in_bucket } else { 1.0 };
            return Some(previous.0 + (bound - previous.0) * fraction);
        }
        previous = (bound, cumulative);
    }
    Some(previous.0)
}

fn label(labels: &[(String, String)], key: &str) -> String {
    labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).unwrap_or_default()
}

fn ms(seconds: Option<f64>) -> Option<f64> {
    seconds.map(|s| (s * 1e6).round() / 1e3)
}

/// What changed on the server between two scrapes.
pub fn diff(before: &Scrape, after: &Scrape) -> ServerMetrics {
    let mut routes = Vec::new();
    for (labels, h) in histogram_deltas(before, after, HTTP_HISTOGRAM) {
        // The generator's own scrape is not part of the load.
        if h.count <= 0.0 || label(&labels, "route") == "/metrics" {
            continue;
        }
        routes.push(ServerRoute {
            route: label(&labels, "route"),
            method: label(&labels, "method"),
            status: label(&labels, "status"),
            requests: h.count,
            mean_ms: ms(Some(h.sum / h.count)),
            p50_ms: ms(bucket_quantile(0.5, &h.buckets)),
            p99_ms: ms(bucket_quantile(0.99, &h.buckets)),
        });
    }
    if routes.is_empty() {
        // A server that only counts requests still tells us how many it saw.
        for (key, (name, labels, value)) in &after.series {
            if name == HTTP_COUNTER {
                let delta = value - before.series.get(key).map_or(0.0, |s| s.2);
                if delta > 0.0 {
                    routes.push(ServerRoute {
                        route: label(labels, "route"),
                        method: label(labels, "method"),
                        status: label(labels, "status"),
                        requests: delta,
                        ..ServerRoute::default()
                    });
                }
            }
        }
    }
    let mut db = Vec::new();
    for (labels, h) in histogram_deltas(before, after, DB_HISTOGRAM) {
        if h.count <= 0.0 {
            continue;
        }
        db.push(ServerDbOp {
            op: label(&labels, "op"),
            queries: h.count,
            mean_ms: ms(Some(h.sum / h.count)),
            p99_ms: ms(bucket_quantile(0.99, &h.buckets)),
        });
    }
    routes.sort_by(|a, b| b.requests.total_cmp(&a.requests));
    db.sort_by(|a, b| b.queries.total_cmp(&a.queries));
    ServerMetrics { available: true, error: None, routes, db }
}

/// GETs `/metrics` from the target.
pub async fn scrape(target: &Target, timeout: Duration) -> Result<Scrape, String> {
    let mut client = Client::new(target.addr, timeout);
    let mut request = Vec::new();
    let path = format!("{}/metrics", target.base_path);
    write_request(&mut request, "GET", path.as_bytes(), &target.authority, &[], None);
    let mut response = Response::default();
    client
        .send(&request, Want { body: true, ..Want::default() }, &mut response)
        .await
        .map_err(|f| format!("GET {path}: {f:?}"))?;
    if response.status != 200 {
        return Err(format!("GET {path} answered {}", response.status));
    }
    Ok(parse_prometheus(&String::from_utf8_lossy(&response.body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"
# HELP strata_http_request_duration_seconds Request latency.
# TYPE strata_http_request_duration_seconds histogram
strata_http_request_duration_seconds_bucket{route="/healthz",method="GET",status="200",le="0.001"} 10
strata_http_request_duration_seconds_bucket{route="/healthz",method="GET",status="200",le="0.01"} 10
strata_http_request_duration_seconds_bucket{route="/healthz",method="GET",status="200",le="+Inf"} 10
strata_http_request_duration_seconds_sum{route="/healthz",method="GET",status="200"} 0.005
strata_http_request_duration_seconds_count{route="/healthz",method="GET",status="200"} 10
"#;

    const AFTER: &str = r#"
strata_http_request_duration_seconds_bucket{route="/healthz",method="GET",status="200",le="0.001"} 60
strata_http_request_duration_seconds_bucket{route="/healthz",method="GET",status="200",le="0.01"} 110
strata_http_request_duration_seconds_bucket{route="/healthz",method="GET",status="200",le="+Inf"} 110
strata_http_request_duration_seconds_sum{route="/healthz",method="GET",status="200"} 0.305
strata_http_request_duration_seconds_count{route="/healthz",method="GET",status="200"} 110
strata_db_query_duration_seconds_sum{op="user_by_id"} 0.2
strata_db_query_duration_seconds_count{op="user_by_id"} 100
strata_http_requests_total{route="/odd \"q\", x",method="GET",status="200"} 5 1700000000
"#;

    #[test]
    fn parses_labels_with_escapes_and_timestamps() {
        let s = parse_prometheus(AFTER);
        let odd = s.series.values().find(|(n, _, _)| n == "strata_http_requests_total").expect("parsed");
        assert_eq!(label(&odd.1, "route"), "/odd \"q\", x");
        assert_eq!(odd.2, 5.0);
    }

    #[test]
    fn diff_gives_per_route_counts_means_and_quantiles() {
        let m = diff(&parse_prometheus(BEFORE), &parse_prometheus(AFTER));
        assert_eq!(m.routes.len(), 1);
        let r = &m.routes[0];
        assert_eq!((r.route.as_str(), r.requests), ("/healthz", 100.0));
        assert_eq!(r.mean_ms, Some(3.0));
        // 50 of the 100 new requests are ≤1 ms, the other 50 in (1 ms, 10 ms].
        assert_eq!(r.p50_ms, Some(1.0));
        assert_eq!(r.p99_ms, Some(9.82));
        assert_eq!(
            m.db,
            vec![ServerDbOp { op: "user_by_id".into(), queries: 100.0, mean_ms: Some(2.0), p99_ms: None }]
        );
    }

    #[test]
    fn quantile_in_the_infinite_bucket_is_the_last_finite_bound() {
        assert_eq!(bucket_quantile(0.99, &[(0.1, 1.0), (f64::INFINITY, 100.0)]), Some(0.1));
        assert_eq!(bucket_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
    }
}
