//! A minimal HTTP/1.1 keep-alive client over one tokio TCP connection.
//!
//! Hand-rolled, as wrk does, rather than hyper: a load generator must cost far less CPU per
//! request than the server it measures (on a 2-core machine they share the cores), and it must
//! see the wire exactly (bytes in and out, when the response head arrived). Requests are
//! pre-serialised bytes; responses are parsed with httparse and their bodies are framed by
//! Content-Length, chunked encoding or connection close, and kept only when a step captures
//! values from them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Where requests go.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    /// The `Host` header: the authority exactly as given.
    pub authority: String,
    /// A path prefix from the URL (`http://h/prefix`), without the trailing slash.
    pub base_path: String,
}

impl Target {
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        let rest = if let Some(rest) = url.strip_prefix("http://") {
            rest
        } else if url.starts_with("https://") {
            bail!("`{url}`: strata bench speaks plain HTTP/1.1 only; benchmark the service behind TLS directly");
        } else {
            bail!("`{url}`: the target must be an http:// URL");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("`{url}` has no host");
        }
        let has_port = match authority.rfind(']') {
            Some(close) => authority[close..].contains(':'),
            None => authority.contains(':'),
        };
        let lookup = if has_port { authority.to_string() } else { format!("{authority}:80") };
        let addr = tokio::net::lookup_host(&lookup)
            .await
            .with_context(|| format!("resolving {lookup}"))?
            .next()
            .with_context(|| format!("{lookup} resolved to no address"))?;
        Ok(Self { url: url.to_string(), addr, authority: authority.to_string(), base_path: path.to_string() })
    }
}

/// Why a request produced no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No response within the timeout (connecting included).
    Timeout,
    /// The TCP connection could not be made.
    Connect,
    /// The connection broke mid-exchange or the response was not valid HTTP/1.1.
    Protocol,
}

/// What the caller wants kept from a response beyond its status and size.
#[derive(Clone, Copy, Debug, Default)]
pub struct Want<'a> {
    pub body: bool,
    /// Lower-case header names to copy into [`Response::headers`].
    pub headers: &'a [String],
    /// The request was HEAD, so the response has no body whatever its headers say.
    pub head_request: bool,
}

/// One response; reused across requests so the steady state allocates nothing.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    /// Bytes on the wire: head and framed body.
    pub bytes_in: u64,
    pub body: Vec<u8>,
    pub headers: HashMap<String, String>,
    /// The raw `Server-Timing` value, empty when absent.
    pub server_timing: String,
    /// When the response head had fully arrived.
    pub head_at: Option<Instant>,
}

enum ExchangeError {
    /// I/O failed or the peer closed; `received` says whether any response byte had arrived
    /// (if not, a reused keep-alive connection was probably closed while idle: safe to retry).
    Io {
        received: bool,
    },
    Malformed,
}

struct Connection {
    stream: TcpStream,
    buf: BytesMut,
    used: bool,
}

/// One connection's worth of client, reconnecting as needed.
pub struct Client {
    addr: SocketAddr,
    timeout: Duration,
    connection: Option<Connection>,
    /// Connections opened, reconnects included.
    pub connects: u64,
}

impl Client {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self { addr, timeout, connection: None, connects: 0 }
    }

    /// Sends `request` (a complete serialised HTTP/1.1 request) and reads the response.
    pub async fn send(&mut self, request: &[u8], want: Want<'_>, out: &mut Response) -> Result<(), Failure> {
        let deadline = Instant::now() + self.timeout;
        for attempt in 0..2 {
            if self.connection.is_none() {
                let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(self.addr)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(_)) => return Err(Failure::Connect),
                    Err(_) => return Err(Failure::Timeout),
                };
                // Requests are small and latency-sensitive; Nagle would only add delay.
                let _ = stream.set_nodelay(true);
                self.connects += 1;
                self.connection = Some(Connection { stream, buf: BytesMut::with_capacity(16 * 1024), used: false });
            }
            let Some(connection) = self.connection.as_mut() else {
                continue;
            };
            let reused = connection.used;
            match tokio::time::timeout_at(deadline, connection.exchange(request, want, out)).await {
                Ok(Ok(close)) => {
                    if close {
                        self.connection = None;
                    } else {
                        connection.used = true;
                    }
                    return Ok(());
                }
                Ok(Err(ExchangeError::Io { received })) => {
                    self.connection = None;
                    if reused && !received && attempt == 0 {
                        continue;
                    }
                    return Err(Failure::Protocol);
                }
                Ok(Err(ExchangeError::Malformed)) => {
                    self.connection = None;
                    return Err(Failure::Protocol);
                }
                Err(_) => {
                    self.connection = None;
                    return Err(Failure::Timeout);
                }
            }
        }
        Err(Failure::Protocol)
    }
}

enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

impl Connection {
    async fn read_more(&mut self, received: &mut bool) -> Result<(), ExchangeError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => Err(ExchangeError::Io { received: *received }),
            Ok(_) => {
                *received = true;
                Ok(())
            }
        }
    }

    /// Returns whether the connection must be closed afterwards.
    async fn exchange(&mut self, request: &[u8], want: Want<'_>, out: &mut Response) -> Result<bool, ExchangeError> {
        out.status = 0;
        out.bytes_in = 0;
        out.body.clear();
        out.headers.clear();
        out.server_timing.clear();
        out.head_at = None;
        // Leftovers can only be junk: responses are read to their end and nothing is pipelined.
        self.buf.clear();
        if self.stream.write_all(request).await.is_err() {
            return Err(ExchangeError::Io { received: false });
        }
        let mut received = false;
        let (framing, mut close) = loop {
            let parsed = if self.buf.is_empty() { None } else { parse_head(&self.buf, want, out)? };
            match parsed {
                Some((head_len, framing, close)) => {
                    self.buf.advance(head_len);
                    out.bytes_in += head_len as u64;
                    if (100..200).contains(&out.status) && out.status != 101 {
                        // An interim response (100 Continue, 103 Early Hints): the real one follows.
                        continue;
                    }
                    out.head_at = Some(Instant::now());
                    break (framing, close);
                }
                None => self.read_more(&mut received).await?,
            }
        };
        match framing {
            Framing::None => {}
            Framing::Length(n) => self.consume(n, want.body, out, &mut received).await?,
            Framing::Chunked => self.read_chunked(want.body, out, &mut received).await?,
            Framing::UntilClose => {
                close = true;
                loop {
                    let n = self.buf.len();
                    if want.body {
                        out.body.extend_from_slice(&self.buf);
                    }
                    out.bytes_in += n as u64;
                    self.buf.clear();
                    if self.read_more(&mut received).await.is_err() {
                        break;
                    }
                }
            }
        }
        Ok(close)
    }

    async fn consume(
        &mut self,
        mut n: usize,
        keep: bool,
        out: &mut Response,
        received: &mut bool,
    ) -> Result<(), ExchangeError> {
        while n > 0 {
            if self.buf.is_empty() {
                self.read_more(received).await?;
            }
            let take = n.min(self.buf.len());
            if keep {
                out.body.extend_from_slice(&self.buf[..take]);
            }
            self.buf.advance(take);
            out.bytes_in += take as u64;
            n -= take;
        }
        Ok(())
    }

    async fn line(&mut self, received: &mut bool, out: &mut Response) -> Result<usize, ExchangeError> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                out.bytes_in += i as u64 + 2;
                return Ok(i);
            }
            if self.buf.len() > 64 * 1024 {
                return Err(ExchangeError::Malformed);
            }
            self.read_more(received).await?;
        }
    }

    async fn read_chunked(&mut self, keep: bool, out: &mut Response, received: &mut bool) -> Result<(), ExchangeError> {
        loop {
            let end = self.line(received, out).await?;
            let size_text = std::str::from_utf8(&self.buf[..end]).map_err(|_| ExchangeError::Malformed)?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| ExchangeError::Malformed)?;
            self.buf.advance(end + 2);
            if size == 0 {
                // Trailer fields, then the empty line that ends the message.
                loop {
                    let end = self.line(received, out).await?;
                    self.buf.advance(end + 2);
                    if end == 0 {
                        return Ok(());
                    }
                }
            }
            self.consume(size, keep, out, received).await?;
            self.consume(2, false, out, received).await?;
        }
    }
}

/// Parses a complete response head, or says it needs more bytes.
fn parse_head(buf: &[u8], want: Want<'_>, out: &mut Response) -> Result<Option<(usize, Framing, bool)>, ExchangeError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ExchangeError::Malformed),
    };
    let status = response.code.unwrap_or(0);
    out.status = status;
    let mut close = response.version == Some(0);
    let mut length = None;
    let mut chunked = false;
    for h in response.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| ExchangeError::Malformed)?;
            length = Some(text.trim().parse::<usize>().map_err(|_| ExchangeError::Malformed)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.windows(7).any(|w| w.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            if h.value.windows(5).any(|w| w.eq_ignore_ascii_case(b"close")) {
                close = true;
            } else if h.value.windows(10).any(|w| w.eq_ignore_ascii_case(b"keep-alive")) {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("server-timing") {
            if let Ok(v) = std::str::from_utf8(h.value) {
                if !out.server_timing.is_empty() {
                    out.server_timing.push_str(", ");
                }
                out.server_timing.push_str(v);
            }
        }
        if !want.headers.is_empty() {
            if let Some(w) = want.headers.iter().find(|w| w.eq_ignore_ascii_case(name)) {
                out.headers.insert(w.clone(), String::from_utf8_lossy(h.value).into_owned());
            }
        }
    }
    let framing = if want.head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Some((head_len, framing, close)))
}

/// Serialises a request. `path` must already include the target's base path.
pub fn write_request(
    out: &mut Vec<u8>,
    method: &str,
    path: &[u8],
    authority: &str,
    headers: &[(String, Vec<u8>)],
    body: Option<&[u8]>,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\nUser-Agent: strata-bench\r\n");
    let mut has_content_type = false;
    for (name, value) in headers {
        has_content_type |= name.eq_ignore_ascii_case("content-type");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(body) = body {
        if !has_content_type {
            out.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> (Response, Option<(usize, bool)>) {
        let mut out = Response::default();
        let wanted = ["etag".to_string()];
        let want = Want { body: true, headers: &wanted, head_request: false };
        let r = match parse_head(raw, want, &mut out) {
            Ok(Some((n, framing, close))) => Some((n, matches!(framing, Framing::Chunked) || close)),
            Ok(None) => None,
            Err(_) => Some((usize::MAX, true)),
        };
        (out, r)
    }

    #[test]
    fn parses_heads_and_picks_framing() {
        let raw = b"HTTP/1.1 201 Created\r\nETag: \"3\"\r\nServer-Timing: app;dur=1.5, db;dur=0.2\r\nContent-Length: 2\r\n\r\n{}";
        let (out, r) = parse(raw);
        assert_eq!(r, Some((raw.len() - 2, false)));
        assert_eq!(out.status, 201);
        assert_eq!(out.headers.get("etag").map(String::as_str), Some("\"3\""));
        assert_eq!(out.server_timing, "app;dur=1.5, db;dur=0.2");
        let (_, partial) = parse(b"HTTP/1.1 200 OK\r\nContent-Le");
        assert_eq!(partial, None);
        let (_, chunked) = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.map(|c| c.1), Some(true));
        let (_, bad) = parse(b"NOT HTTP\r\n\r\n");
        assert_eq!(bad.map(|b| b.0), Some(usize::MAX));
    }

    #[test]
    fn serialises_requests() {
        let mut out = Vec::new();
        write_request(&mut out, "POST", b"/v1/users", "127.0.0.1:80", &[("X-A".into(), b"1".to_vec())], Some(b"{}"));
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "POST /v1/users HTTP/1.1\r\nHost: 127.0.0.1:80\r\nUser-Agent: strata-bench\r\nX-A: 1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }
}
