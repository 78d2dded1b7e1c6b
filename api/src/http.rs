//! Just enough HTTP/1.1, strictly framed: read a request (headers with
//! httparse, body by one unambiguous Content-Length, both bounded) from a
//! connection that may carry more after it (pipelining, keep-alive), and
//! write a response.
//!
//! Hand-written on top of httparse rather than a server crate: tiny_http
//! and hyper were weighed. hyper needs an async runtime in a small
//! synchronous VMM; tiny_http owns its threads and sockets, which leaves no
//! place for lithe's seccomp filters, per-request deadlines and connection
//! cap. What is left here is framing, which the unit tests and the fuzz
//! target cover.

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
    /// The client wants the connection kept for more requests (HTTP/1.1
    /// without `Connection: close`).
    pub keep_alive: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("request headers larger than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("request body of {0} bytes is larger than the {MAX_BODY_BYTES} allowed")]
    BodyTooLarge(usize),
    #[error("transfer coding {0:?} is not supported; send Content-Length")]
    TransferCoding(String),
    #[error("connection closed before the request was complete")]
    Incomplete,
    /// Closed between requests: not an error to answer.
    #[error("connection closed")]
    Closed,
    #[error("reading the request: {0}")]
    Io(#[from] io::Error),
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadersTooLarge => 431,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::TransferCoding(_) => 501,
            HttpError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => 408,
            _ => 400,
        }
    }
}

/// Reads one request from `stream`. `buf` holds bytes already read past the
/// previous request and keeps what follows this one. `interim` is called
/// (to write `100 Continue`) when the client waits for it before its body.
pub fn read_request(
    stream: &mut impl Read,
    buf: &mut Vec<u8>,
    interim: &mut dyn FnMut() -> io::Result<()>,
) -> Result<Request, HttpError> {
    let mut chunk = [0u8; 4096];
    let (head_len, method, target, content_length, keep_alive, expect_continue) = loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let mut content_length: Option<usize> = None;
                    let mut keep_alive = req.version == Some(1);
                    let mut expect_continue = false;
                    for h in req.headers.iter() {
                        let value = std::str::from_utf8(h.value).map(str::trim).unwrap_or("");
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let v: usize = value
                                .parse()
                                .map_err(|_| HttpError::Malformed(format!("bad Content-Length {value:?}")))?;
                            if content_length.is_some_and(|c| c != v) {
                                return Err(HttpError::Malformed("conflicting Content-Length headers".into()));
                            }
                            content_length = Some(v);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            return Err(HttpError::TransferCoding(value.into()));
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            let v = value.to_ascii_lowercase();
                            if v.split(',').any(|t| t.trim() == "close") {
                                keep_alive = false;
                            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                                keep_alive = true;
                            }
                        } else if h.name.eq_ignore_ascii_case("expect") {
                            if !value.eq_ignore_ascii_case("100-continue") {
                                return Err(HttpError::Malformed(format!("cannot meet Expect: {value}")));
                            }
                            expect_continue = true;
                        }
                    }
                    let method = req.method.unwrap_or_default().to_string();
                    let target = req.path.unwrap_or_default().to_string();
                    break (len, method, target, content_length.unwrap_or(0), keep_alive, expect_continue);
                }
                Ok(httparse::Status::Partial) => {
                    if buf.len() > MAX_HEADER_BYTES {
                        return Err(HttpError::HeadersTooLarge);
                    }
                }
                Err(e) => return Err(HttpError::Malformed(e.to_string())),
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(if buf.is_empty() { HttpError::Closed } else { HttpError::Incomplete });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if content_length > MAX_BODY_BYTES {
        return Err(HttpError::BodyTooLarge(content_length));
    }
    if expect_continue && content_length > 0 && buf.len() == head_len {
        interim()?;
    }
    while buf.len() < head_len + content_length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(HttpError::Incomplete);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let rest = buf.split_off(head_len + content_length);
    let body = buf.split_off(head_len);
    *buf = rest;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target, None),
    };
    Ok(Request { method, path, query, body, keep_alive })
}

/// Writes a response as Cloud Hypervisor's server does, then signals the
/// end of the connection. The status line has an empty reason phrase
/// (`HTTP/1.1 200 \r\n`, valid HTTP/1.1): ch-remote reads everything after
/// the version up to `\r` as the code. Every body is JSON, with
/// `Content-Type` and `Content-Length`; a 204 has neither. `keep_alive`
/// says whether the server reads another request on this connection.
pub fn write_response(
    stream: &mut impl Write,
    status: u16,
    body: Option<&serde_json::Value>,
    keep_alive: bool,
) -> io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut out = format!("HTTP/1.1 {status} \r\nServer: lithe\r\nConnection: {connection}\r\n");
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
        read_request(&mut &raw[..], &mut Vec::new(), &mut || Ok(()))
    }

    #[test]
    fn parses_method_path_query_and_body() {
        let r =
            parse(b"PUT /api/v1/vm.resize?wait=true HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, "/api/v1/vm.resize");
        assert_eq!(r.query.as_deref(), Some("wait=true"));
        assert_eq!(r.body, b"hello");
        assert!(r.keep_alive);
        let g = parse(b"GET /api/v1/vmm.ping HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert!(g.body.is_empty() && g.query.is_none() && !g.keep_alive);
        assert!(!parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
    }

    #[test]
    fn pipelined_requests_come_out_one_by_one() {
        let raw = b"PUT /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        let mut stream = &raw[..];
        let mut buf = Vec::new();
        let paths: Vec<String> =
            (0..3).map(|_| read_request(&mut stream, &mut buf, &mut || Ok(())).unwrap().path).collect();
        assert_eq!(paths, ["/a", "/b", "/c"]);
        assert!(matches!(read_request(&mut stream, &mut buf, &mut || Ok(())), Err(HttpError::Closed)));
    }

    #[test]
    fn expect_100_continue_gets_an_interim_answer_before_the_body() {
        let raw = b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        let body = b"{}";
        let mut stream = raw.chain(&body[..]);
        let mut asked = 0;
        let r = read_request(&mut stream, &mut Vec::new(), &mut || {
            asked += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((asked, r.body.as_slice()), (1, &b"{}"[..]));
        assert!(matches!(parse(b"PUT / HTTP/1.1\r\nExpect: tea\r\n\r\n"), Err(HttpError::Malformed(_))));
    }

    #[test]
    fn rejects_garbage_oversize_and_ambiguous_framing() {
        assert!(matches!(parse(b"\x00\x01garbage\r\n\r\n"), Err(HttpError::Malformed(_))));
        assert!(matches!(parse(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), Err(HttpError::Malformed(_))));
        let big = format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY_BYTES + 1);
        let e = parse(big.as_bytes()).unwrap_err();
        assert_eq!(e.status(), 413);
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEADER_BYTES + 10));
        assert_eq!(parse(long.as_bytes()).unwrap_err().status(), 431);
        assert!(matches!(parse(b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort"), Err(HttpError::Incomplete)));
        let chunked = parse(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err();
        assert_eq!(chunked.status(), 501);
        let two = parse(b"PUT / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x").unwrap_err();
        assert!(matches!(&two, HttpError::Malformed(m) if m.contains("conflicting")), "{two}");
        assert!(parse(b"PUT / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}").is_ok());
        assert!(matches!(parse(b""), Err(HttpError::Closed)));
    }

    #[test]
    fn writes_json_and_empty_responses() {
        let mut out = Vec::new();
        write_response(&mut out, 200, Some(&serde_json::json!({"a": 1})), false).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 \r\n"), "empty reason phrase: {s}");
        assert!(s.contains("\r\nContent-Type: application/json\r\nContent-Length: 7\r\n"), "{s}");
        assert!(s.contains("Connection: close\r\n") && s.ends_with("\r\n\r\n{\"a\":1}"), "{s}");
        let mut out = Vec::new();
        write_response(&mut out, 204, None, true).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 204 \r\n") && !s.contains("Content-Length"), "{s}");
        assert!(s.contains("Connection: keep-alive"), "{s}");
    }
}
