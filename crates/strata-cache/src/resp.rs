//! The slice of RESP2 (the Redis protocol) that the adapter speaks: commands as arrays of
//! bulk strings; replies of every RESP2 type, with lengths bounded so a confused or
//! hostile server cannot make us allocate without limit.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use crate::endpoint::protocol_error;

/// Largest bulk string we accept (values are small; this only guards against garbage).
const MAX_BULK: usize = 16 << 20;
const MAX_ARRAY: usize = 1 << 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

async fn line<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(32);
    let n = r.read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    if !buf.ends_with(b"\r\n") || buf.len() > 64 * 1024 {
        return Err(protocol_error("malformed RESP line"));
    }
    buf.truncate(buf.len() - 2);
    Ok(buf)
}

fn number(bytes: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).ok_or_else(|| protocol_error("bad RESP number"))
}

pub async fn read<R: AsyncBufRead + Unpin + Send>(r: &mut R) -> io::Result<Reply> {
    let head = line(r).await?;
    let (&kind, rest) = head.split_first().ok_or_else(|| protocol_error("empty RESP line"))?;
    match kind {
        b'+' => Ok(Reply::Simple(String::from_utf8_lossy(rest).into_owned())),
        b'-' => Ok(Reply::Error(String::from_utf8_lossy(rest).into_owned())),
        b':' => Ok(Reply::Integer(number(rest)?)),
        b'$' => {
            let len = number(rest)?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let len = usize::try_from(len).map_err(|_| protocol_error("bad length"))?;
            if len > MAX_BULK {
                return Err(protocol_error("bulk string too large"));
            }
            let mut data = vec![0; len + 2];
            r.read_exact(&mut data).await?;
            if !data.ends_with(b"\r\n") {
                return Err(protocol_error("bulk string not terminated"));
            }
            data.truncate(len);
            Ok(Reply::Bulk(Some(data)))
        }
        b'*' => {
            let len = number(rest)?;
            if len < 0 {
                return Ok(Reply::Array(None));
            }
            let len = usize::try_from(len).map_err(|_| protocol_error("bad length"))?;
            if len > MAX_ARRAY {
                return Err(protocol_error("array too large"));
            }
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(Box::pin(read(r)).await?);
            }
            Ok(Reply::Array(Some(items)))
        }
        _ => Err(protocol_error("unknown RESP type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_every_reply_type() {
        let wire = b"+OK\r\n-ERR bad\r\n:42\r\n$3\r\na\r\n\r\n$-1\r\n*2\r\n$1\r\nx\r\n:1\r\n*-1\r\n";
        let mut r = tokio::io::BufReader::new(&wire[..]);
        assert_eq!(read(&mut r).await.unwrap(), Reply::Simple("OK".into()));
        assert_eq!(read(&mut r).await.unwrap(), Reply::Error("ERR bad".into()));
        assert_eq!(read(&mut r).await.unwrap(), Reply::Integer(42));
        assert_eq!(read(&mut r).await.unwrap(), Reply::Bulk(Some(b"a\r\n".to_vec())), "binary-safe");
        assert_eq!(read(&mut r).await.unwrap(), Reply::Bulk(None));
        assert_eq!(
            read(&mut r).await.unwrap(),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec())), Reply::Integer(1)]))
        );
        assert_eq!(read(&mut r).await.unwrap(), Reply::Array(None));
        assert_eq!(read(&mut r).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn refuses_garbage() {
        for wire in [&b"?x\r\n"[..], b"$99999999999\r\n", b":abc\r\n", b"+no-crlf\n", b"$3\r\nabcd"] {
            let mut r = tokio::io::BufReader::new(wire);
            assert!(read(&mut r).await.is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode(&mut out, &[b"GET", b"k"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
