//! A client for the API socket, used by `lithe remote` and the tests.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("talking to the VMM: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response from the VMM: {0}")]
    Malformed(String),
    #[error("{endpoint}: HTTP {status}: {message}")]
    Refused { endpoint: String, status: u16, message: String },
}

/// A response: status and parsed JSON body (Null when empty).
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: serde_json::Value,
}

/// Sends one request and reads the whole response.
pub fn request(
    socket: &Path,
    method: &str,
    endpoint: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let mut s = UnixStream::connect(socket)
        .map_err(|source| ClientError::Connect { path: socket.display().to_string(), source })?;
    s.set_read_timeout(Some(timeout))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // A server that turns the connection away (429) may answer and close
    // before it reads the request: the write can then fail, and the read
    // end in a reset after the answer. Whatever answer arrived counts.
    let wrote = s.write_all(req.as_bytes());
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    match (parse_response(&raw), wrote, read) {
        (Ok(r), _, _) => Ok(r),
        (Err(_), Err(e), _) | (Err(_), Ok(()), Err(e)) => Err(e.into()),
        (Err(e), Ok(()), Ok(_)) => Err(e),
    }
}

/// One call as `lithe remote` makes it: the reply's body on success (`None`
/// for an empty one), the VMM's messages as the error otherwise.
pub fn call(
    socket: &Path,
    method: &str,
    endpoint: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Option<serde_json::Value>, ClientError> {
    let r = request(socket, method, endpoint, body, timeout)?;
    if (200..300).contains(&r.status) {
        Ok((!r.body.is_null()).then_some(r.body))
    } else {
        Err(ClientError::Refused {
            endpoint: endpoint.into(),
            status: r.status,
            message: crate::types::ApiResponse::error_text(&r.body),
        })
    }
}

fn parse_response(raw: &[u8]) -> Result<Response, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(ClientError::Malformed("truncated headers".into())),
        Err(e) => return Err(ClientError::Malformed(e.to_string())),
    };
    let status = resp.code.ok_or_else(|| ClientError::Malformed("no status".into()))?;
    let body = &raw[head..];
    let body = if body.iter().all(|b| b.is_ascii_whitespace()) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(body).map_err(|e| ClientError::Malformed(format!("body is not JSON: {e}")))?
    };
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"a\":1}").unwrap();
        assert_eq!((r.status, r.body["a"].as_i64()), (200, Some(1)));
        let r = parse_response(b"HTTP/1.1 204 \r\n\r\n").unwrap();
        assert_eq!((r.status, r.body), (204, serde_json::Value::Null));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nnot json").is_err());
        assert!(parse_response(b"garbage").is_err());
    }
}
