//! Just enough HTTP/1.1: read one request (headers with httparse, body by
//! Content-Length, both bounded) and write one response, then close.

use std::io::{self, Read, Write};

/// Limits that keep a misbehaving client from holding memory.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("request headers larger than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("request body of {0} bytes is larger than the {MAX_BODY_BYTES} allowed")]
    BodyTooLarge(usize),
    #[error("connection closed before the request was complete")]
    Incomplete,
    #[error("reading the request: {0}")]
    Io(#[from] io::Error),
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadersTooLarge => 431,
            HttpError::BodyTooLarge(_) => 413,
            _ => 400,
        }
    }
}

/// Reads one request from `stream`.
pub fn read_request(stream: &mut impl Read) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (head_len, method, target, content_length) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(HttpError::Incomplete);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let mut content_length = 0usize;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        let v = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
                        content_length = v.ok_or_else(|| HttpError::Malformed("bad Content-Length".into()))?;
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(HttpError::Malformed(
                            "chunked bodies are not supported; send Content-Length".into(),
                        ));
                    }
                }
                let method = req.method.unwrap_or_default().to_string();
                let target = req.path.unwrap_or_default().to_string();
                break (len, method, target, content_length);
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEADER_BYTES {
                    return Err(HttpError::HeadersTooLarge);
                }
            }
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        }
    };
    if content_length > MAX_BODY_BYTES {
        return Err(HttpError::BodyTooLarge(content_length));
    }
    let mut body = buf.split_off(head_len);
    if body.len() > content_length {
        body.truncate(content_length);
    }
    while body.len() < content_length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(HttpError::Incomplete);
        }
        let take = n.min(content_length - body.len());
        body.extend_from_slice(&chunk[..take]);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target, None),
    };
    Ok(Request { method, path, query, body })
}

/// Writes a response as Cloud Hypervisor's server does, then signals the
/// end of the connection. The status line has an empty reason phrase
/// (`HTTP/1.1 200 \r\n`, valid HTTP/1.1): ch-remote reads everything after
/// the version up to `\r` as the code. Every body is JSON, with
/// `Content-Type` and `Content-Length`; a 204 has neither.
pub fn write_response(stream: &mut impl Write, status: u16, body: Option<&serde_json::Value>) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {status} \r\nServer: lithe\r\nConnection: close\r\n");
    let body = match body {
        Some(b) if status != 204 => b.to_string(),
        _ => String::new(),
    };
    if status != 204 {
        out.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, HttpError> {
        read_request(&mut &raw[..])
    }

    #[test]
    fn parses_method_path_query_and_body() {
        let r =
            parse(b"PUT /api/v1/vm.resize?wait=true HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, "/api/v1/vm.resize");
        assert_eq!(r.query.as_deref(), Some("wait=true"));
        assert_eq!(r.body, b"hello");
        let g = parse(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n").unwrap();
        assert!(g.body.is_empty() && g.query.is_none());
    }

    #[test]
    fn rejects_garbage_and_oversize() {
        assert!(matches!(parse(b"\x00\x01garbage\r\n\r\n"), Err(HttpError::Malformed(_))));
        assert!(matches!(parse(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), Err(HttpError::Malformed(_))));
        let big = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY_BYTES + 1);
        let e = parse(big.as_bytes()).unwrap_err();
        assert_eq!(e.status(), 413);
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEADER_BYTES + 10));
        assert_eq!(parse(long.as_bytes()).unwrap_err().status(), 431);
        assert!(matches!(parse(b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort"), Err(HttpError::Incomplete)));
        assert!(matches!(parse(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Err(HttpError::Malformed(_))));
    }

    #[test]
    fn writes_json_and_empty_responses() {
        let mut out = Vec::new();
        write_response(&mut out, 200, Some(&serde_json::json!({"a": 1}))).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 \r\n"), "empty reason phrase: {s}");
        assert!(s.contains("\r\nContent-Type: application/json\r\nContent-Length: 7\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\n{\"a\":1}"));
        let mut out = Vec::new();
        write_response(&mut out, 204, None).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 204 \r\n") && !s.contains("Content-Length"), "{s}");
    }
}
