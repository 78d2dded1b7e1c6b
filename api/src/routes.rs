//! Which request a method and path name, with its body decoded.

use crate::http::Request;
use crate::types::{ApiResponse, ResizeRequest, DEFAULT_RESIZE_WAIT_MS, MAX_RESIZE_WAIT_MS};

pub const API_PREFIX: &str = "/api/v1/";

/// Every endpoint and its method (kept in step with `api/openapi.yaml` by a test).
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "vmm.ping"),
    ("PUT", "vmm.shutdown"),
    ("PUT", "vm.create"),
    ("PUT", "vm.boot"),
    ("GET", "vm.info"),
    ("PUT", "vm.resize"),
    ("PUT", "vm.shutdown"),
    ("PUT", "vm.reboot"),
    ("PUT", "vm.pause"),
    ("PUT", "vm.resume"),
];

/// A decoded API request.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    VmmPing,
    VmmShutdown,
    /// The VM config as JSON; the VMM decodes and validates it.
    VmCreate(serde_json::Value),
    VmBoot,
    VmInfo,
    VmResize(ResizeRequest),
    VmShutdown,
    VmReboot,
    VmPause,
    VmResume,
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiResponse> {
    if body.is_empty() {
        return Err(ApiResponse::error(400, "this request needs a JSON body"));
    }
    serde_json::from_slice(body).map_err(|e| ApiResponse::error(400, format!("invalid JSON body: {e}")))
}

fn no_body(req: &Request) -> Result<(), ApiResponse> {
    let trimmed = req.body.iter().all(|b| b.is_ascii_whitespace());
    if trimmed || req.body == b"{}" {
        Ok(())
    } else {
        Err(ApiResponse::error(400, format!("{} takes no body", req.path)))
    }
}

/// `wait=true|false` or `wait_ms=N` in the query string.
fn wait_from_query(query: Option<&str>) -> Result<Option<u64>, ApiResponse> {
    let mut wait = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("wait", "true")) => wait = Some(DEFAULT_RESIZE_WAIT_MS),
            Some(("wait", "false")) => wait = None,
            Some(("wait_ms", v)) => {
                wait = Some(v.parse().map_err(|_| ApiResponse::error(400, format!("wait_ms={v:?} is not a number")))?)
            }
            _ => return Err(ApiResponse::error(400, format!("unknown query parameter {pair:?}"))),
        }
    }
    Ok(wait)
}

/// Decodes a request's body (and query) once the endpoint is known.
type Decoder = fn(&Request) -> Result<ApiRequest, ApiResponse>;

/// Maps an HTTP request to an [`ApiRequest`], or to the error reply.
pub fn route(req: &Request) -> Result<ApiRequest, ApiResponse> {
    let Some(endpoint) = req.path.strip_prefix(API_PREFIX) else {
        return Err(ApiResponse::error(404, format!("unknown path {}", req.path)));
    };
    let (expected, build): (&str, Decoder) = match endpoint {
        "vmm.ping" => ("GET", |_| Ok(ApiRequest::VmmPing)),
        "vm.info" => ("GET", |_| Ok(ApiRequest::VmInfo)),
        "vmm.shutdown" => ("PUT", |r| no_body(r).map(|_| ApiRequest::VmmShutdown)),
        "vm.create" => ("PUT", |r| json(&r.body).map(ApiRequest::VmCreate)),
        "vm.boot" => ("PUT", |r| no_body(r).map(|_| ApiRequest::VmBoot)),
        "vm.shutdown" => ("PUT", |r| no_body(r).map(|_| ApiRequest::VmShutdown)),
        "vm.reboot" => ("PUT", |r| no_body(r).map(|_| ApiRequest::VmReboot)),
        "vm.pause" => ("PUT", |r| no_body(r).map(|_| ApiRequest::VmPause)),
        "vm.resume" => ("PUT", |r| no_body(r).map(|_| ApiRequest::VmResume)),
        "vm.resize" => ("PUT", |r| {
            let mut resize: ResizeRequest = json(&r.body)?;
            if let Some(w) = wait_from_query(r.query.as_deref())? {
                if resize.wait_ms.is_some() {
                    return Err(ApiResponse::error(400, "give the wait either in the body or in the query, not both"));
                }
                resize.wait_ms = Some(w);
            }
            if resize.wait_ms.is_some_and(|w| w > MAX_RESIZE_WAIT_MS) {
                return Err(ApiResponse::error(400, format!("wait_ms may be at most {MAX_RESIZE_WAIT_MS}")));
            }
            Ok(ApiRequest::VmResize(resize))
        }),
        _ => return Err(ApiResponse::error(404, format!("unknown endpoint {endpoint:?}"))),
    };
    if req.method != expected {
        return Err(ApiResponse::error(405, format!("{endpoint} takes {expected}, not {}", req.method)));
    }
    if req.query.is_some() && endpoint != "vm.resize" {
        return Err(ApiResponse::error(400, format!("{endpoint} takes no query parameters")));
    }
    build(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path.to_string(), None),
        };
        Request { method: method.into(), path, query, body: body.as_bytes().to_vec() }
    }

    fn status(r: Result<ApiRequest, ApiResponse>) -> u16 {
        r.map(|_| 0).unwrap_or_else(|e| e.status)
    }

    #[test]
    fn routes_every_endpoint() {
        assert_eq!(route(&req("GET", "/api/v1/vmm.ping", "")), Ok(ApiRequest::VmmPing));
        assert_eq!(route(&req("PUT", "/api/v1/vm.pause", "")), Ok(ApiRequest::VmPause));
        assert_eq!(
            route(&req("PUT", "/api/v1/vm.resize", r#"{"desired_vcpus":4}"#)),
            Ok(ApiRequest::VmResize(ResizeRequest { desired_vcpus: 4, wait_ms: None }))
        );
        assert_eq!(
            route(&req("PUT", "/api/v1/vm.resize?wait=true", r#"{"desired_vcpus":2}"#)),
            Ok(ApiRequest::VmResize(ResizeRequest { desired_vcpus: 2, wait_ms: Some(DEFAULT_RESIZE_WAIT_MS) }))
        );
        assert!(matches!(route(&req("PUT", "/api/v1/vm.create", r#"{"x":1}"#)), Ok(ApiRequest::VmCreate(_))));
    }

    #[test]
    fn every_endpoint_routes_and_is_in_the_openapi_document() {
        let spec = include_str!("../openapi.yaml");
        for (method, endpoint) in ENDPOINTS {
            let body = if *endpoint == "vm.resize" {
                r#"{"desired_vcpus":1}"#
            } else if *endpoint == "vm.create" {
                "{}"
            } else {
                ""
            };
            let r = route(&req(method, &format!("{API_PREFIX}{endpoint}"), body));
            assert!(r.is_ok(), "{method} {endpoint}: {r:?}");
            let block = spec
                .split(&format!("  /{endpoint}:\n"))
                .nth(1)
                .unwrap_or_else(|| panic!("{endpoint} not in openapi.yaml"));
            let next_path = block.find("\n  /").unwrap_or(block.len());
            assert!(
                block[..next_path].contains(&format!("    {}:", method.to_lowercase())),
                "{endpoint}: method {method} not documented"
            );
        }
        let documented = spec.lines().filter(|l| l.starts_with("  /") && l.ends_with(':')).count();
        assert_eq!(documented, ENDPOINTS.len(), "openapi.yaml documents paths the router does not serve");
    }

    #[test]
    fn bad_input_gets_the_right_status() {
        assert_eq!(status(route(&req("GET", "/nope", ""))), 404);
        assert_eq!(status(route(&req("GET", "/api/v1/vm.nope", ""))), 404);
        assert_eq!(status(route(&req("GET", "/api/v1/vm.resize", ""))), 405);
        assert_eq!(status(route(&req("POST", "/api/v1/vm.boot", ""))), 405);
        assert_eq!(status(route(&req("PUT", "/api/v1/vm.resize", ""))), 400);
        assert_eq!(status(route(&req("PUT", "/api/v1/vm.resize", "{"))), 400);
        assert_eq!(status(route(&req("PUT", "/api/v1/vm.resize", r#"{"desired_vcpus":"4"}"#))), 400);
        assert_eq!(status(route(&req("PUT", "/api/v1/vm.resize", r#"{"desired_vcpus":-1}"#))), 400);
        assert_eq!(status(route(&req("PUT", "/api/v1/vm.resize", r#"{"desired_vcpus":2,"extra":1}"#))), 400);
        assert_eq!(status(route(&req("PUT", "/api/v1/vm.resize", r#"{}"#))), 400);
        assert_eq!(status(route(&req("PUT", "/api/v1/vm.resize?wait=maybe", r#"{"desired_vcpus":2}"#))), 400);
        assert_eq!(
            status(route(&req("PUT", "/api/v1/vm.resize?wait_ms=1", r#"{"desired_vcpus":2,"wait_ms":1}"#))),
            400
        );
        assert_eq!(
            status(route(&req("PUT", "/api/v1/vm.resize", r#"{"desired_vcpus":2,"wait_ms":99999999999}"#))),
            400
        );
        assert_eq!(status(route(&req("PUT", "/api/v1/vm.boot", "junk"))), 400);
        assert_eq!(status(route(&req("GET", "/api/v1/vm.info?x=1", ""))), 400);
        let e = route(&req("PUT", "/api/v1/vm.resize", "{")).unwrap_err();
        assert!(e.body.unwrap()["error"].as_str().unwrap().contains("invalid JSON"));
    }
}
