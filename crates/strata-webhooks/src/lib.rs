//! The HTTP sender for outgoing webhooks, behind strata-core's [`WebhookSender`] port.
//!
//! One request, one connection, one deadline (`request.timeout`, resolve to last byte read):
//! resolve the host; apply the [`NetworkPolicy`] to every address it resolves to; connect to
//! those addresses in order (pinned: the name is never looked up again, so a second answer
//! from DNS cannot swap in another target); TLS with rustls (ring) for `https`; one
//! HTTP/1.1 `POST` with hyper; read the status and headers, drain a little of the body, and
//! close. Redirects are never followed: a 3xx is an answer like any other status.

use std::error::Error as _;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use strata_core::webhooks::{NetworkPolicy, SendOutcome, WebhookRequest, WebhookSender};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// The TLS stack, for callers that build their own [`rustls::RootCertStore`].
pub use rustls;

/// Most body bytes read after the head. The body is not needed, but reading a little lets a
/// small answer finish cleanly instead of the receiver seeing a reset mid-write.
const DRAIN_MAX: usize = 64 * 1024;

const USER_AGENT: &str = concat!("strata-webhooks/", env!("CARGO_PKG_VERSION"));

/// Sends webhooks over HTTP/1.1, plain or TLS; see the module docs.
pub struct HttpSender {
    policy: NetworkPolicy,
    tls: TlsConnector,
}

impl fmt::Debug for HttpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSender").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl HttpSender {
    /// Trusts the system's root certificates. `Err` when they cannot be read at all; finding
    /// none is only a warning (plain `http` endpoints still work).
    pub fn new(policy: NetworkPolicy) -> Result<HttpSender, String> {
        let certs =
            rustls_native_certs::load_native_certs().map_err(|e| format!("cannot load the system TLS roots: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(certs);
        if ignored > 0 {
            tracing::warn!(ignored, "skipped unparsable system TLS root certificates");
        }
        if added == 0 {
            tracing::warn!("no system TLS root certificates found: https webhooks will fail their handshake");
        }
        HttpSender::with_roots(policy, roots)
    }

    /// Trusts exactly `roots`.
    pub fn with_roots(policy: NetworkPolicy, roots: rustls::RootCertStore) -> Result<HttpSender, String> {
        // An explicit provider, not the process default: if another crate in the build enables
        // aws-lc-rs too, rustls could no longer pick one by itself.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot configure TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpSender { policy, tls: TlsConnector::from(Arc::new(config)) })
    }

    /// Everything up to the response head. The connection driver's guard comes back with the
    /// body so that draining it still has a connection.
    async fn exchange(&self, request: &WebhookRequest) -> Result<(http::Response<Incoming>, Driver), String> {
        let url = &request.url;
        // Before any network work: a request we cannot even write is no reason to connect.
        let req = build(request)?;
        let addrs = resolve(url.host(), url.port()).await?;
        vet(&self.policy, &addrs)?;
        let tcp = connect(&addrs).await?;
        if !url.https() {
            return http1(tcp, req).await;
        }
        let tls_failed = |e: &dyn fmt::Display| format!("TLS handshake with {} failed: {e}", url.host());
        // An IP literal becomes an IP-address server name (no SNI is sent for it).
        let name = ServerName::try_from(url.host().to_owned()).map_err(|e| tls_failed(&e))?;
        let tls = self.tls.connect(name, tcp).await.map_err(|e| tls_failed(&e))?;
        http1(tls, req).await
    }
}

#[async_trait]
impl WebhookSender for HttpSender {
    async fn send(&self, request: &WebhookRequest) -> SendOutcome {
        // One deadline for all of it, the drain included (sleep saturates a huge timeout).
        let sleep = tokio::time::sleep(request.timeout);
        tokio::pin!(sleep);
        let exchanged = tokio::select! {
            biased;
            r = self.exchange(request) => r,
            () = &mut sleep => {
                return SendOutcome::Failed(format!("timed out after {} ms", request.timeout.as_millis()));
            }
        };
        match exchanged {
            Ok((response, _driver)) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                // The answer is in: running out of time while draining changes nothing.
                tokio::select! {
                    biased;
                    () = drain(response.into_body()) => {}
                    () = &mut sleep => {}
                }
                // `_driver` drops on return and aborts the connection task.
                SendOutcome::Answered { status, retry_after }
            }
            Err(why) => SendOutcome::Failed(why),
        }
    }
}

/// The `POST`, with our headers around the caller's.
fn build(request: &WebhookRequest) -> Result<http::Request<Full<Bytes>>, String> {
    let url = &request.url;
    let target = url.path_and_query();
    let uri: http::Uri = target.parse().map_err(|e| format!("invalid request target {target}: {e}"))?;
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        let invalid = || format!("invalid header {name}");
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
        // Framing and routing are the sender's: a caller's Host, Content-Length or
        // Transfer-Encoding could contradict the URL or the body.
        if [header::HOST, header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION].contains(&name) {
            return Err(format!("invalid header {name}: set by the sender"));
        }
        let value = HeaderValue::from_str(value).map_err(|_| invalid())?;
        headers.append(name, value);
    }
    let host = HeaderValue::from_str(&url.authority()).map_err(|_| "invalid header host".to_owned())?;
    headers.insert(header::HOST, host);
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if !headers.contains_key(header::USER_AGENT) {
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(request.body.len()));
    let mut req = http::Request::new(Full::new(Bytes::from(request.body.clone())));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((host, port)).await.map_err(|e| format!("could not resolve {host}: {e}"))?.collect();
    if addrs.is_empty() {
        return Err(format!("could not resolve {host}: no addresses"));
    }
    Ok(addrs)
}

/// Every address must pass: a name that resolves to a public and a private address must not
/// be a way to reach the private one.
fn vet(policy: &NetworkPolicy, addrs: &[SocketAddr]) -> Result<(), String> {
    addrs.iter().try_for_each(|a| policy.check(a.ip())).map_err(|why| format!("refused by the network policy: {why}"))
}

/// The first address that accepts, in resolution order; the last failure otherwise.
async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut failure = "no address to connect to".to_owned();
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                // One small write of head and body; Nagle would only delay it.
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Err(e) => failure = format!("connect to {addr} failed: {e}"),
        }
    }
    Err(failure)
}

/// Aborts the connection task when dropped: on return, on timeout (the future is dropped),
/// and so also when a receiver keeps streaming a body we stopped reading.
struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn http1<IO>(io: IO, req: http::Request<Full<Bytes>>) -> Result<(http::Response<Incoming>, Driver), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(http_error)?;
    // The connection's own errors reach us through send_request.
    let driver = Driver(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender.send_request(req).await.map_err(http_error)?;
    Ok((response, driver))
}

async fn drain(mut body: Incoming) {
    let mut read = 0;
    while read < DRAIN_MAX {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(_)) | None => break,
        }
    }
}

fn http_error(e: hyper::Error) -> String {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() || closed_io(&e) {
        return "connection closed before the response".to_owned();
    }
    // hyper's Display names only the kind ("connection error"); the cause is in the sources.
    let mut message = format!("HTTP error: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    message
}

/// A reset or an end of stream (TLS reports a close without close_notify as one) anywhere in
/// the error's sources.
fn closed_io(e: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), BrokenPipe | ConnectionAborted | ConnectionReset | UnexpectedEof) {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// `Retry-After`: delta-seconds or an HTTP-date (a past one is "now"); `None` if neither.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        // Wed, 21 Oct 2015 07:28:00 GMT
        let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let parse = |v| parse_retry_after(v, then);
        assert_eq!(parse("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse("Wed, 21 Oct 2015 07:30:00 GMT"), Some(Duration::from_secs(120)));
        assert_eq!(parse("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse("Tue, 20 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        for bad in ["", "-1", "+5", "1.5", "soon", "99999999999999999999999", "Wed, 32 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn one_refused_address_refuses_the_name() {
        let policy = NetworkPolicy::default();
        let public: SocketAddr = "93.184.216.34:443".parse().unwrap();
        let private: SocketAddr = "10.0.0.1:443".parse().unwrap();
        assert!(vet(&policy, &[public]).is_ok());
        let refused = vet(&policy, &[public, private]).unwrap_err();
        assert!(refused.starts_with("refused by the network policy: 10.0.0.1"), "{refused}");
    }

    #[test]
    fn headers_are_checked_and_defaulted() {
        let url = strata_core::webhooks::WebhookUrl::parse("http://example.com:8080/in?a=1").unwrap();
        let request = |headers: Vec<(&str, &str)>| WebhookRequest {
            url: url.clone(),
            headers: headers.into_iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect(),
            body: b"{}".to_vec(),
            timeout: Duration::from_secs(1),
        };
        let req = build(&request(vec![("webhook-id", "m1")])).unwrap();
        let h = req.headers();
        assert_eq!(req.uri(), "/in?a=1");
        assert_eq!(h["host"], "example.com:8080");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["content-length"], "2");
        assert_eq!(h["user-agent"], USER_AGENT);
        assert_eq!(h["webhook-id"], "m1");
        let req = build(&request(vec![("Content-Type", "application/cloudevents+json"), ("user-agent", "x")])).unwrap();
        let types: Vec<_> = req.headers().get_all("content-type").iter().collect();
        assert_eq!(types, ["application/cloudevents+json"]);
        assert_eq!(req.headers()["user-agent"], "x");
        for bad in [("bad name", "v"), ("x-ok", "line\nbreak"), ("host", "evil.example"), ("content-length", "1")] {
            let e = build(&request(vec![bad])).unwrap_err();
            assert!(e.starts_with(&format!("invalid header {}", bad.0)), "{e}");
        }
    }
}
