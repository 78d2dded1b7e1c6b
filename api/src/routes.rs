//! HTTP to actions and back: which action a method and path name (with the
//! body decoded), and which status and body a result becomes.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use vmm::resize::{ResizeError, ResizeRequest, DEFAULT_WAIT};

use vmm::rpc::{ActionError, Command, Query, Refused, TapFds, VmmAction, VmmData};

use crate::config_wire::{self, WireError};
use crate::http::Request;
use crate::types::{ApiResponse, ResizeBody};
use crate::vm_config::VmConfig;

pub const API_PREFIX: &str = "/api/v1/";

/// Every endpoint lithe serves and its method (kept in step with
/// `api/openapi.yaml` by a test).
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "vmm.ping"),
    ("PUT", "vmm.shutdown"),
    ("PUT", "vm.create"),
    ("PUT", "vm.delete"),
    ("PUT", "vm.boot"),
    ("GET", "vm.info"),
    ("GET", "vm.counters"),
    ("PUT", "vm.resize"),
    ("PUT", "vm.shutdown"),
    ("PUT", "vm.reboot"),
    ("PUT", "vm.pause"),
    ("PUT", "vm.resume"),
    ("PUT", "vm.power-button"),
    ("PUT", "vm.add-net"),
];

/// Cloud Hypervisor's endpoints for features lithe does not have, and what
/// is missing. They answer as Cloud Hypervisor does for an endpoint it was
/// built without (`vm.coredump` without `guest_debug`): 404, with the reason.
pub const NOT_BUILT: &[(&str, &str)] = &[
    ("vm.add-device", "VFIO devices"),
    ("vm.add-user-device", "vfio-user devices"),
    ("vm.add-disk", "block devices"),
    ("vm.add-fs", "virtio-fs"),
    ("vm.add-generic-vhost-user", "vhost-user devices"),
    ("vm.add-pmem", "pmem devices"),
    ("vm.add-vdpa", "vDPA devices"),
    ("vm.add-vsock", "vsock"),
    ("vm.remove-device", "hot-pluggable devices other than vCPUs"),
    ("vm.resize-disk", "block devices"),
    ("vm.resize-zone", "memory zones"),
    ("vm.snapshot", "snapshots"),
    ("vm.restore", "snapshots"),
    ("vm.coredump", "guest core dumps"),
    ("vm.nmi", "NMI injection"),
    ("vm.receive-migration", "live migration"),
    ("vm.send-migration", "live migration"),
];

fn bad(message: impl Into<String>) -> ApiResponse {
    ApiResponse::error(400, ["Bad Request".to_string(), message.into()])
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiResponse> {
    if body.is_empty() {
        return Err(bad("this request needs a JSON body"));
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("Failed to deserialize JSON: {e}")))
}

fn no_body(req: &Request) -> Result<(), ApiResponse> {
    let blank = req.body.iter().all(|b| b.is_ascii_whitespace());
    if blank || req.body == b"{}" {
        Ok(())
    } else {
        Err(bad(format!("{} takes no body", req.path)))
    }
}

/// What failed, as the first line of an error reply (Cloud Hypervisor's wording).
pub fn failure(action: &VmmAction) -> &'static str {
    match action {
        VmmAction::Query(Query::Ping) => "The VMM could not be pinged",
        VmmAction::Query(Query::VmInfo) => "The VM info is not available",
        VmmAction::Query(Query::Counters) => "The VM counters are not available",
        VmmAction::Command(c) => match c {
            Command::ShutdownVmm => "The VMM could not shutdown",
            Command::CreateVm(_) => "The VM could not be created",
            Command::DeleteVm => "The VM could not be deleted",
            Command::BootVm => "The VM could not boot",
            Command::Resize(_) => "The VM could not be resized",
            Command::AddNet(..) => "The network device could not be added",
            Command::ShutdownVm => "The VM could not shutdown",
            Command::RebootVm => "The VM could not reboot",
            Command::PauseVm => "The VM could not be paused",
            Command::ResumeVm => "The VM could not resume",
            Command::PowerButton => "The VM could not trigger the power button",
        },
    }
}

/// `wait=true|false` or `wait_ms=N` in the query string.
fn wait_from_query(query: Option<&str>) -> Result<Option<u64>, ApiResponse> {
    let mut wait = None;
    for raw in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let pair = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| bad(format!("query parameter {raw:?} is not UTF-8 once decoded")))?;
        let pair: &str = &pair;
        match pair.split_once('=') {
            Some(("wait", "true")) => wait = Some(DEFAULT_WAIT.as_millis() as u64),
            Some(("wait", "false")) => wait = None,
            Some(("wait_ms", v)) => wait = Some(v.parse().map_err(|_| bad(format!("wait_ms={v:?} is not a number")))?),
            _ => return Err(bad(format!("unknown query parameter {pair:?}"))),
        }
    }
    Ok(wait)
}

fn resize(r: &Request) -> Result<VmmAction, ApiResponse> {
    let mut body: ResizeBody = json(&r.body)?;
    if let Some(w) = wait_from_query(r.query.as_deref())? {
        if body.wait_ms.is_some() {
            return Err(bad("give the wait either in the body or in the query, not both"));
        }
        body.wait_ms = Some(w);
    }
    let refused = |e: ResizeError| ApiResponse::error(400, ["The VM could not be resized".to_string(), e.to_string()]);
    let req = ResizeRequest::new(body.into()).map_err(refused)?;
    Ok(VmmAction::Command(Command::Resize(req)))
}

/// `vm.create`'s body, Cloud Hypervisor's `VmConfig`, as lithe's config,
/// or everything in it lithe cannot honour, named at once (the VMM answers
/// that 400 after its state: a VM that exists is a 409 first).
fn create(r: &Request) -> Result<VmmAction, ApiResponse> {
    let wire: VmConfig = json(&r.body)?;
    let config = config_wire::from_wire(&wire).map_err(|e| match e {
        WireError::Unsupported(fields) => Refused::Unsupported(fields),
        WireError::Invalid(m) => Refused::Invalid(m),
    });
    Ok(VmmAction::Command(Command::CreateVm(Box::new(config))))
}

/// `vm.add-net`: Cloud Hypervisor's `NetConfig`, with the TAP either named
/// (`tap`) or sent as fds alongside the request (Kata's way).
fn add_net(r: &Request, fds: Vec<OwnedFd>) -> Result<VmmAction, ApiResponse> {
    let body: serde_json::Value = json(&r.body)?;
    let mut refused = Vec::new();
    let net = crate::config_wire_devices::net_from_add(&body, !fds.is_empty(), &mut refused)
        .map_err(|e| match e {
            WireError::Unsupported(fields) => Refused::Unsupported(fields),
            WireError::Invalid(m) => Refused::Invalid(m),
        })
        .and_then(|n| if refused.is_empty() { Ok(n) } else { Err(Refused::Unsupported(refused)) });
    Ok(VmmAction::Command(Command::AddNet(Box::new(net), TapFds(Arc::new(fds)))))
}

/// A command that takes no body.
fn command(r: &Request, c: Command) -> Result<VmmAction, ApiResponse> {
    no_body(r).map(|_| VmmAction::Command(c))
}

/// Decodes a request's body (and query) once the endpoint is known.
type Decoder = fn(&Request) -> Result<VmmAction, ApiResponse>;

/// Maps an HTTP request (and the fds that came with it) to a
/// [`VmmAction`], or to the error reply. Only `vm.add-net` takes fds; with
/// any other request they are refused, and closed.
pub fn route(req: &Request, fds: Vec<OwnedFd>) -> Result<VmmAction, ApiResponse> {
    let not_found = |m: String| ApiResponse::error(404, ["Not Found".to_string(), m]);
    let Some(endpoint) = req.path.strip_prefix(API_PREFIX) else {
        return Err(not_found(format!("unknown path {}", req.path)));
    };
    let (expected, build): (&str, Decoder) = match endpoint {
        "vmm.ping" => ("GET", |_| Ok(VmmAction::Query(Query::Ping))),
        "vm.info" => ("GET", |_| Ok(VmmAction::Query(Query::VmInfo))),
        "vm.counters" => ("GET", |_| Ok(VmmAction::Query(Query::Counters))),
        "vmm.shutdown" => ("PUT", |r| command(r, Command::ShutdownVmm)),
        "vm.create" => ("PUT", create),
        "vm.delete" => ("PUT", |r| command(r, Command::DeleteVm)),
        "vm.boot" => ("PUT", |r| command(r, Command::BootVm)),
        "vm.shutdown" => ("PUT", |r| command(r, Command::ShutdownVm)),
        "vm.reboot" => ("PUT", |r| command(r, Command::RebootVm)),
        "vm.pause" => ("PUT", |r| command(r, Command::PauseVm)),
        "vm.resume" => ("PUT", |r| command(r, Command::ResumeVm)),
        "vm.power-button" => ("PUT", |r| command(r, Command::PowerButton)),
        "vm.resize" => ("PUT", resize),
        // Decoded below with the request's fds; this is the same without them.
        "vm.add-net" => ("PUT", |r| add_net(r, Vec::new())),
        _ => {
            return Err(match NOT_BUILT.iter().find(|(e, _)| *e == endpoint) {
                Some((_, missing)) => not_found(format!("lithe has no {missing}: {endpoint} is not available")),
                None => not_found(format!("unknown endpoint {endpoint:?}")),
            })
        }
    };
    if req.method != expected {
        // Cloud Hypervisor answers 400 here; 405 says more, and no client
        // relies on the difference.
        return Err(ApiResponse::error(
            405,
            ["Method Not Allowed".to_string(), format!("{endpoint} takes {expected}, not {}", req.method)],
        ));
    }
    if req.query.is_some() && endpoint != "vm.resize" {
        return Err(bad(format!("{endpoint} takes no query parameters")));
    }
    if endpoint == "vm.add-net" {
        return add_net(req, fds);
    }
    if !fds.is_empty() {
        return Err(bad(format!("{endpoint} takes no file descriptors ({} came with the request)", fds.len())));
    }
    build(req)
}

/// The HTTP status of each error kind: Cloud Hypervisor's OpenAPI document
/// where it gives one (404 not created, 405 wrong state, 429 retry).
pub fn status_of(e: &ActionError) -> u16 {
    match e {
        ActionError::NotCreated => 404,
        ActionError::NotBooted | ActionError::AlreadyPaused | ActionError::NotPaused => 405,
        ActionError::Resize(r) if r.is_state() => 405,
        ActionError::AlreadyCreated | ActionError::AlreadyBooted => 409,
        ActionError::Config { .. } | ActionError::Refused(_) => 400,
        ActionError::Resize(r) if r.is_vmm() => 500,
        ActionError::Resize(_) => 400,
        ActionError::Boot(_) | ActionError::Reboot(_) | ActionError::Pause(_) | ActionError::PowerButton(_) => 500,
        ActionError::Unavailable(_) => 503,
    }
}

/// The reply to `action`'s result.
pub fn respond(action_failure: &str, result: Result<VmmData, ActionError>) -> ApiResponse {
    match result {
        Ok(data) => crate::responses::reply(data),
        Err(e) => ApiResponse::error(status_of(&e), [action_failure.to_string(), e.to_string()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_plain(r: &Request) -> Result<VmmAction, ApiResponse> {
        route(r, Vec::new())
    }

    fn req(method: &str, path: &str, body: &str) -> Request {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path.to_string(), None),
        };
        Request { method: method.into(), path, query, body: body.as_bytes().to_vec(), keep_alive: false }
    }

    fn status(r: Result<VmmAction, ApiResponse>) -> u16 {
        r.map(|_| 0).unwrap_or_else(|e| e.status)
    }

    fn resize_to(n: u32, wait_ms: Option<u64>) -> VmmAction {
        let wait = wait_ms.map(std::time::Duration::from_millis);
        VmmAction::Command(Command::Resize(ResizeRequest { want: Some(vmm::resize::Want::Count(n)), ram: None, wait }))
    }

    #[test]
    fn routes_every_endpoint() {
        assert_eq!(route_plain(&req("GET", "/api/v1/vmm.ping", "")), Ok(VmmAction::Query(Query::Ping)));
        assert_eq!(route_plain(&req("PUT", "/api/v1/vm.pause", "")), Ok(VmmAction::Command(Command::PauseVm)));
        assert_eq!(route_plain(&req("PUT", "/api/v1/vm.resize", r#"{"desired_vcpus":4}"#)), Ok(resize_to(4, None)));
        assert_eq!(
            route_plain(&req("PUT", "/api/v1/vm.resize?wait=true", r#"{"desired_vcpus":2}"#)),
            Ok(resize_to(2, Some(DEFAULT_WAIT.as_millis() as u64)))
        );
        // ch-remote's resize body: the null fields are Cloud Hypervisor's schema.
        assert_eq!(
            route_plain(&req(
                "PUT",
                "/api/v1/vm.resize",
                r#"{"desired_vcpus":3,"desired_ram":null,"desired_balloon":null}"#
            )),
            Ok(resize_to(3, None))
        );
        assert!(matches!(
            route_plain(&req("PUT", "/api/v1/vm.create", r#"{"payload":{"kernel":"/k"}}"#)),
            Ok(VmmAction::Command(Command::CreateVm(_)))
        ));
    }

    /// Every Cloud Hypervisor path is served or answered as documented, and
    /// `api/openapi.yaml` documents exactly what is served.
    #[test]
    fn the_openapi_document_is_cloud_hypervisors_plus_lithes_extensions() {
        let spec = include_str!("../openapi.yaml");
        for (method, endpoint) in ENDPOINTS {
            let body = match *endpoint {
                "vm.resize" => r#"{"desired_vcpus":1}"#,
                "vm.create" => r#"{"payload":{}}"#,
                "vm.add-net" => r#"{"tap":"tap0"}"#,
                _ => "",
            };
            let r = route_plain(&req(method, &format!("{API_PREFIX}{endpoint}"), body));
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
        let documented: Vec<&str> =
            spec.lines().filter(|l| l.starts_with("  /") && l.ends_with(':')).map(|l| &l[3..l.len() - 1]).collect();
        for path in &documented {
            let served = ENDPOINTS.iter().any(|(_, e)| e == path);
            let not_built = NOT_BUILT.iter().any(|(e, _)| e == path);
            assert!(served || not_built, "openapi.yaml documents {path}, which is neither served nor listed");
            if not_built {
                let r = route_plain(&req("PUT", &format!("{API_PREFIX}{path}"), "{}")).unwrap_err();
                assert_eq!(r.status, 404, "{path}");
                assert!(ApiResponse::error_text(r.body.as_ref().unwrap()).contains("lithe has no"), "{path}");
            }
        }
        // Cloud Hypervisor's own document, every path of it: each one is in
        // lithe's document, served or answered as a feature lithe lacks.
        for path in CLOUD_HYPERVISOR_PATHS {
            assert!(documented.contains(path), "Cloud Hypervisor's {path} is missing from openapi.yaml");
        }
        assert_eq!(documented.len(), ENDPOINTS.len() + NOT_BUILT.len());
    }

    /// The paths of Cloud Hypervisor v54's `vmm/src/api/openapi/cloud-hypervisor.yaml`.
    const CLOUD_HYPERVISOR_PATHS: &[&str] = &[
        "vmm.ping",
        "vmm.shutdown",
        "vm.info",
        "vm.counters",
        "vm.create",
        "vm.delete",
        "vm.boot",
        "vm.pause",
        "vm.resume",
        "vm.shutdown",
        "vm.reboot",
        "vm.power-button",
        "vm.resize",
        "vm.resize-disk",
        "vm.resize-zone",
        "vm.add-device",
        "vm.remove-device",
        "vm.add-disk",
        "vm.add-fs",
        "vm.add-generic-vhost-user",
        "vm.add-pmem",
        "vm.add-net",
        "vm.add-vsock",
        "vm.add-vdpa",
        "vm.add-user-device",
        "vm.snapshot",
        "vm.coredump",
        "vm.nmi",
        "vm.restore",
        "vm.receive-migration",
        "vm.send-migration",
    ];

    #[test]
    fn bad_input_gets_the_right_status_and_a_message_array() {
        assert_eq!(status(route_plain(&req("GET", "/nope", ""))), 404);
        assert_eq!(status(route_plain(&req("GET", "/api/v1/vm.nope", ""))), 404);
        assert_eq!(status(route_plain(&req("PUT", "/api/v1/vm.add-disk", "{}"))), 404);
        assert_eq!(status(route_plain(&req("GET", "/api/v1/vm.resize", ""))), 405);
        assert_eq!(status(route_plain(&req("POST", "/api/v1/vm.boot", ""))), 405);
        assert_eq!(status(route_plain(&req("PUT", "/api/v1/vm.resize", ""))), 400);
        assert_eq!(status(route_plain(&req("PUT", "/api/v1/vm.resize", "{"))), 400);
        assert_eq!(status(route_plain(&req("PUT", "/api/v1/vm.resize", r#"{"desired_vcpus":"4"}"#))), 400);
        assert_eq!(status(route_plain(&req("PUT", "/api/v1/vm.resize", r#"{"desired_vcpus":-1}"#))), 400);
        assert_eq!(status(route_plain(&req("PUT", "/api/v1/vm.resize", r#"{"desired_vcpu_ids":[0,-3]}"#))), 400);
        assert_eq!(status(route_plain(&req("PUT", "/api/v1/vm.resize", r#"{"desired_vcpu_ids":3}"#))), 400);
        assert_eq!(
            route_plain(&req("PUT", "/api/v1/vm.resize", r#"{"desired_vcpu_ids":[0,287]}"#)),
            Ok(VmmAction::Command(Command::Resize(ResizeRequest::ids(&[0, 287]).unwrap())))
        );
        assert_eq!(status(route_plain(&req("PUT", "/api/v1/vm.resize", r#"{"desired_vcpus":2,"extra":1}"#))), 400);
        assert_eq!(status(route_plain(&req("PUT", "/api/v1/vm.resize?wait=maybe", r#"{"desired_vcpus":2}"#))), 400);
        // Percent-encoded query parameters are decoded.
        assert_eq!(
            route_plain(&req("PUT", "/api/v1/vm.resize?wait%5Fms=%31%30", r#"{"desired_vcpus":2}"#)),
            Ok(resize_to(2, Some(10)))
        );
        assert_eq!(status(route_plain(&req("PUT", "/api/v1/vm.resize?wait=%FF", r#"{"desired_vcpus":2}"#))), 400);
        assert_eq!(
            status(route_plain(&req("PUT", "/api/v1/vm.resize?wait_ms=1", r#"{"desired_vcpus":2,"wait_ms":1}"#))),
            400
        );
        assert_eq!(
            status(route_plain(&req("PUT", "/api/v1/vm.resize", r#"{"desired_vcpus":2,"wait_ms":99999999999}"#))),
            400
        );
        assert_eq!(status(route_plain(&req("PUT", "/api/v1/vm.boot", "junk"))), 400);
        assert_eq!(status(route_plain(&req("GET", "/api/v1/vm.info?x=1", ""))), 400);
        assert_eq!(status(route_plain(&req("PUT", "/api/v1/vm.create", r#"{"payload":{},"gpu":1}"#))), 400);
        let e = route_plain(&req("PUT", "/api/v1/vm.resize", "{")).unwrap_err();
        let body = e.body.unwrap();
        assert!(body.is_array(), "Cloud Hypervisor's error shape: {body}");
        assert!(ApiResponse::error_text(&body).contains("Failed to deserialize JSON"), "{body}");
    }

    #[test]
    fn results_become_cloud_hypervisors_statuses() {
        let s = |e: ActionError| respond("ctx", Err(e)).status;
        assert_eq!(s(ActionError::NotCreated), 404);
        assert_eq!(s(ActionError::NotBooted), 405);
        assert_eq!(s(ActionError::NotPaused), 405);
        assert_eq!(s(ActionError::Resize(ResizeError::Paused)), 405);
        assert_eq!(s(ActionError::Resize(ResizeError::NoBootVcpu)), 400);
        let failed = ResizeError::VcpuFailed { vcpu: 2, error: "KVM said no".into(), target: 1 };
        assert_eq!(s(ActionError::Resize(failed)), 500);
        assert_eq!(s(ActionError::Unavailable("going away")), 503);
        assert_eq!(respond("ctx", Ok(VmmData::Empty)), ApiResponse::no_content());
        let r = respond(
            "The VM could not be resized",
            Err(ActionError::Resize(ResizeError::CountOutOfRange { desired: 9, max: 4 })),
        );
        let expected = ["The VM could not be resized", "desired_vcpus must be between 1 and 4, got 9"];
        assert_eq!(r.body, Some(serde_json::json!(expected)));
        // A configuration error names the API's field, never a command-line flag.
        let e = ActionError::from(vmm::config::ConfigError::Cpus("boot=5 is larger than max=4".into()));
        assert_eq!(s(e), 400);
        let e = ActionError::from(vmm::config::ConfigError::Cpus("boot=5 is larger than max=4".into()));
        assert_eq!(e.to_string(), "cpus: boot=5 is larger than max=4");
    }
}
