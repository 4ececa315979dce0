//! HttpSender against raw loopback receivers (plain TCP and tokio-rustls), each bounded.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use strata_core::webhooks::{NetworkPolicy, SendOutcome, WebhookRequest, WebhookSender, WebhookUrl};
use strata_webhooks::HttpSender;
use strata_webhooks::rustls::{self, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Upper bound on every receiver and every send: a hang fails the test instead of the run.
const BOUND: Duration = Duration::from_secs(10);

fn loopback() -> NetworkPolicy {
    NetworkPolicy { allowed: vec!["127.0.0.0/8".parse().unwrap()] }
}

fn request(url: &str, headers: &[(&str, &str)], body: &[u8], timeout: Duration) -> WebhookRequest {
    WebhookRequest {
        url: WebhookUrl::parse(url).unwrap(),
        headers: headers.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(),
        body: body.to_vec(),
        timeout,
    }
}

async fn send(sender: &HttpSender, request: &WebhookRequest) -> SendOutcome {
    timeout(BOUND, sender.send(request)).await.expect("send did not finish")
}

fn failed(outcome: &SendOutcome, needle: &str) -> bool {
    matches!(outcome, SendOutcome::Failed(why) if why.contains(needle))
}

/// What a receiver read: the head as text, the body as bytes.
struct Received {
    head: String,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Vec<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }
}

/// One request: the head up to the blank line, then `content-length` body bytes.
async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Received {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "eof inside the request head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let mut received = Received { head, body: buf[end..].to_vec() };
    let len: usize = received.header("content-length").first().map_or(0, |v| v.parse().unwrap());
    let mut rest = vec![0u8; len - received.body.len()];
    s.read_exact(&mut rest).await.unwrap();
    received.body.extend(rest);
    received
}

/// Whatever comes until the peer closes (or resets, or TLS ends without close_notify).
async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out
}

/// A loopback listener running `script`, which must finish within [`BOUND`].
async fn serve<F, Fut, T>(script: F) -> (SocketAddr, JoinHandle<T>)
where
    F: FnOnce(TcpListener) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, tokio::spawn(async move { timeout(BOUND, script(listener)).await.expect("receiver did not finish") }))
}

/// One connection: read a request, write `response`, keep reading until the sender closes.
/// Returns the request, what came after it on the connection, and the listener.
async fn answer_once(response: impl Into<String>) -> (SocketAddr, JoinHandle<(Received, Vec<u8>, TcpListener)>) {
    let response = response.into();
    serve(move |listener| async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let received = read_request(&mut s).await;
        s.write_all(response.as_bytes()).await.unwrap();
        let after = read_until_closed(&mut s).await;
        (received, after, listener)
    })
    .await
}

/// Proves no other connection reached `listener` before this point: connections are
/// accepted in the order they were made, so the next one accepted must be this sentinel.
async fn assert_next_is_sentinel(listener: &TcpListener) {
    let mut probe = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    probe.write_all(b"sentinel").await.unwrap();
    drop(probe);
    let (mut s, _) = timeout(BOUND, listener.accept()).await.unwrap().unwrap();
    assert_eq!(timeout(BOUND, read_until_closed(&mut s)).await.unwrap(), b"sentinel");
}

#[tokio::test]
async fn posts_the_request_and_reports_the_status() {
    let (addr, receiver) = answer_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let sender = HttpSender::new(loopback()).unwrap();
    let body = b"{\"id\":1}\n\x00\xff";
    let url = format!("http://127.0.0.1:{}/in?x=1&y=2", addr.port());
    let req = request(&url, &[("webhook-id", "msg_1"), ("ce-type", "user.created")], body, BOUND);
    assert_eq!(send(&sender, &req).await, SendOutcome::Answered { status: 200, retry_after: None });

    let (got, after, _) = receiver.await.unwrap();
    assert!(got.head.starts_with("POST /in?x=1&y=2 HTTP/1.1\r\n"), "{}", got.head);
    assert_eq!(got.header("host"), [format!("127.0.0.1:{}", addr.port())]);
    assert_eq!(got.header("webhook-id"), ["msg_1"]);
    assert_eq!(got.header("ce-type"), ["user.created"]);
    assert_eq!(got.header("content-type"), ["application/json"]);
    assert_eq!(got.header("content-length"), [body.len().to_string()]);
    let agent = got.header("user-agent");
    assert!(agent.len() == 1 && agent[0].starts_with("strata-webhooks/"), "{agent:?}");
    assert_eq!(got.body, body);
    assert!(after.is_empty(), "one request only");
}

#[tokio::test]
async fn retry_after_seconds_and_past_dates() {
    let sender = HttpSender::with_roots(loopback(), RootCertStore::empty()).unwrap();
    for (value, expected) in [("120", Duration::from_secs(120)), ("Wed, 21 Oct 2015 07:28:00 GMT", Duration::ZERO)] {
        let response = format!("HTTP/1.1 503 Service Unavailable\r\nretry-after: {value}\r\ncontent-length: 0\r\n\r\n");
        let (addr, receiver) = answer_once(response).await;
        let req = request(&format!("http://127.0.0.1:{}/", addr.port()), &[], b"{}", BOUND);
        let outcome = send(&sender, &req).await;
        assert_eq!(outcome, SendOutcome::Answered { status: 503, retry_after: Some(expected) }, "{value}");
        receiver.await.unwrap();
    }
}

#[tokio::test]
async fn a_silent_receiver_times_out() {
    let (addr, receiver) = serve(|listener| async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_request(&mut s).await;
        read_until_closed(&mut s).await // never answers; ends when the sender gives up
    })
    .await;
    let sender = HttpSender::with_roots(loopback(), RootCertStore::empty()).unwrap();
    let req = request(&format!("http://127.0.0.1:{}/", addr.port()), &[], b"{}", Duration::from_millis(300));
    let outcome = send(&sender, &req).await;
    assert_eq!(outcome, SendOutcome::Failed("timed out after 300 ms".into()));
    receiver.await.unwrap();
}

#[tokio::test]
async fn a_receiver_that_hangs_up_is_a_closed_connection() {
    let (addr, receiver) = serve(|listener| async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_request(&mut s).await;
        drop(s);
    })
    .await;
    let sender = HttpSender::with_roots(loopback(), RootCertStore::empty()).unwrap();
    let req = request(&format!("http://127.0.0.1:{}/", addr.port()), &[], b"{}", BOUND);
    let outcome = send(&sender, &req).await;
    assert_eq!(outcome, SendOutcome::Failed("connection closed before the response".into()));
    receiver.await.unwrap();
}

#[tokio::test]
async fn a_refused_connection_names_the_address() {
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port(); // closed again
    let sender = HttpSender::with_roots(loopback(), RootCertStore::empty()).unwrap();
    let outcome = send(&sender, &request(&format!("http://127.0.0.1:{port}/"), &[], b"{}", BOUND)).await;
    assert!(failed(&outcome, &format!("connect to 127.0.0.1:{port} failed: ")), "{outcome:?}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (addr, receiver) = answer_once("HTTP/1.1 302 Found\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n").await;
    let sender = HttpSender::with_roots(loopback(), RootCertStore::empty()).unwrap();
    let req = request(&format!("http://127.0.0.1:{}/hook", addr.port()), &[], b"{}", BOUND);
    assert_eq!(send(&sender, &req).await, SendOutcome::Answered { status: 302, retry_after: None });
    let (got, after, listener) = receiver.await.unwrap();
    assert!(got.head.starts_with("POST /hook "));
    assert!(after.is_empty(), "no second request on the connection");
    assert_next_is_sentinel(&listener).await; // and none on a new one
}

#[tokio::test]
async fn the_strict_policy_refuses_loopback_before_connecting() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sender = HttpSender::with_roots(NetworkPolicy::default(), RootCertStore::empty()).unwrap();
    for host in ["127.0.0.1", "localhost"] {
        let req = request(&format!("http://{host}:{port}/"), &[], b"{}", BOUND);
        let outcome = send(&sender, &req).await;
        assert!(failed(&outcome, "refused by the network policy: "), "{host}: {outcome:?}");
    }
    assert_next_is_sentinel(&listener).await;
}

#[tokio::test]
async fn an_endless_body_does_not_hold_the_sender() {
    let (addr, receiver) = serve(|listener| async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_request(&mut s).await;
        // No content-length: the body runs until the connection closes, which we never do.
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n").await.unwrap();
        let chunk = vec![b'x'; 16 * 1024];
        while s.write_all(&chunk).await.is_ok() {}
    })
    .await;
    let sender = HttpSender::with_roots(loopback(), RootCertStore::empty()).unwrap();
    // A request timeout far past BOUND: only the drain limit can end this send in time.
    let req = request(&format!("http://127.0.0.1:{}/", addr.port()), &[], b"{}", 6 * BOUND);
    assert_eq!(send(&sender, &req).await, SendOutcome::Answered { status: 200, retry_after: None });
    receiver.await.unwrap();
}

#[tokio::test]
async fn a_stalled_body_still_counts_as_answered() {
    let (addr, receiver) = serve(|listener| async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 100\r\n\r\npartial")
            .await
            .unwrap();
        read_until_closed(&mut s).await
    })
    .await;
    let sender = HttpSender::with_roots(loopback(), RootCertStore::empty()).unwrap();
    let req = request(&format!("http://127.0.0.1:{}/", addr.port()), &[], b"{}", Duration::from_millis(300));
    let outcome = send(&sender, &req).await;
    assert_eq!(outcome, SendOutcome::Answered { status: 429, retry_after: Some(Duration::from_secs(7)) });
    receiver.await.unwrap();
}

/// A self-signed certificate for localhost and 127.0.0.1, and a TLS receiver serving it
/// that answers 200 once. The receiver yields the request, or `None` if the handshake failed.
async fn tls_receiver() -> (SocketAddr, CertificateDer<'static>, JoinHandle<Option<Received>>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (addr, receiver) = serve(move |listener| async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut s = acceptor.accept(tcp).await.ok()?;
        let received = read_request(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        s.flush().await.unwrap();
        read_until_closed(&mut s).await;
        Some(received)
    })
    .await;
    (addr, cert, receiver)
}

#[tokio::test]
async fn https_to_a_trusted_certificate() {
    let (addr, cert, receiver) = tls_receiver().await;
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let sender = HttpSender::with_roots(loopback(), roots).unwrap();
    let req = request(&format!("https://127.0.0.1:{}/secure", addr.port()), &[], b"{}", BOUND);
    assert_eq!(send(&sender, &req).await, SendOutcome::Answered { status: 200, retry_after: None });
    let got = receiver.await.unwrap().expect("the handshake succeeded");
    assert!(got.head.starts_with("POST /secure HTTP/1.1\r\n"), "{}", got.head);
    assert_eq!(got.header("host"), [format!("127.0.0.1:{}", addr.port())]);
}

#[tokio::test]
async fn https_to_an_untrusted_certificate_fails_the_handshake() {
    let (addr, _, receiver) = tls_receiver().await;
    let sender = HttpSender::with_roots(loopback(), RootCertStore::empty()).unwrap();
    let req = request(&format!("https://127.0.0.1:{}/", addr.port()), &[], b"{}", BOUND);
    let outcome = send(&sender, &req).await;
    assert!(failed(&outcome, "TLS handshake with 127.0.0.1 failed"), "{outcome:?}");
    assert!(receiver.await.unwrap().is_none(), "nothing was sent over an unverified connection");
}
