//! The API server on a real Unix socket.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use api::action::VmmPingResponse;
use api::client::request;
use api::server::ServerError;
use api::{ActionError, ApiHandler, ApiServer, VmmAction, VmmData};

struct Echo;

impl ApiHandler for Echo {
    fn handle(&self, action: VmmAction) -> Result<VmmData, ActionError> {
        match action {
            VmmAction::Ping => Ok(VmmData::Pong(VmmPingResponse {
                build_version: "b".into(),
                version: "test".into(),
                pid: 1,
                features: vec![],
            })),
            VmmAction::Resize(r) if r.wait_ms.is_some() => {
                Ok(VmmData::ResizeReport(serde_json::json!({"desired": r.desired_vcpus})))
            }
            VmmAction::PauseVm => Err(ActionError::NotBooted),
            _ => Ok(VmmData::Empty),
        }
    }
}

const T: Duration = Duration::from_secs(10);

#[test]
fn serves_requests_with_mode_0600_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let server = ApiServer::start(&path, Arc::new(Echo)).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let r = request(&path, "GET", "vmm.ping", None, T).unwrap();
    assert_eq!((r.status, r.body["version"].as_str()), (200, Some("test")));
    let r = request(&path, "PUT", "vm.resize", Some(&serde_json::json!({"desired_vcpus": 3})), T).unwrap();
    assert_eq!((r.status, &r.body), (204, &serde_json::Value::Null));
    let r =
        request(&path, "PUT", "vm.resize", Some(&serde_json::json!({"desired_vcpus": 3, "wait_ms": 5})), T).unwrap();
    assert_eq!((r.status, r.body["desired"].as_u64()), (200, Some(3)));
    let r = request(&path, "PUT", "vm.resize", Some(&serde_json::json!({"desired": 3})), T).unwrap();
    assert_eq!(r.status, 400);
    assert!(api::ApiResponse::error_text(&r.body).contains("unknown field"), "{}", r.body);
    let r = request(&path, "PUT", "vm.pause", None, T).unwrap();
    assert_eq!(
        (r.status, r.body.clone()),
        (405, serde_json::json!(["The VM could not be paused", "The VM is not booted"]))
    );
    let r = request(&path, "POST", "vmm.ping", None, T).unwrap();
    assert_eq!(r.status, 405);

    // Many clients at once all get answers.
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let p = path.clone();
            std::thread::spawn(move || request(&p, "GET", "vmm.ping", None, T).map(|r| r.status))
        })
        .collect();
    for h in handles {
        let status = h.join().unwrap().unwrap();
        assert!(status == 200 || status == 429, "{status}");
    }

    drop(server);
    assert!(!path.exists(), "socket file removed on shutdown");
}

#[test]
fn replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap()); // bound, then nobody listens
    let server = ApiServer::start(&stale, Arc::new(Echo)).unwrap();
    assert_eq!(request(&stale, "GET", "vmm.ping", None, T).unwrap().status, 200);

    // A second server on the live socket is refused.
    assert!(matches!(ApiServer::start(&stale, Arc::new(Echo)), Err(ServerError::InUse { .. })));
    drop(server);

    // A server whose socket path was taken over since (its file replaced)
    // leaves the new one alone when it goes.
    let path = dir.path().join("shared.sock");
    let first = ApiServer::start(&path, Arc::new(Echo)).unwrap();
    std::fs::remove_file(&path).unwrap();
    let second = ApiServer::start(&path, Arc::new(Echo)).unwrap();
    drop(first);
    assert!(path.exists(), "the first server removed the second one's socket");
    assert_eq!(request(&path, "GET", "vmm.ping", None, T).unwrap().status, 200);
    drop(second);
    assert!(!path.exists());

    let file = dir.path().join("precious.txt");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(matches!(ApiServer::start(&file, Arc::new(Echo)), Err(ServerError::NotASocket { .. })));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

/// The thread-init hook runs on the server thread before it serves, and
/// its workers run on threads it started (where lithe's seccomp filter,
/// installed by the hook, is inherited). A failing hook means no server.
#[test]
fn thread_init_runs_on_the_server_thread_first_and_its_failure_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let (tx, rx) = std::sync::mpsc::channel();
    let init: api::ThreadInit = Box::new(move || {
        tx.send(std::thread::current().name().map(str::to_string)).unwrap();
        Ok(())
    });
    let server = ApiServer::start_with(&path, Arc::new(Echo), Some(init)).unwrap();
    assert_eq!(rx.try_recv().unwrap().as_deref(), Some("api"), "init ran before start returned, on the api thread");
    assert_eq!(request(&path, "GET", "vmm.ping", None, T).unwrap().status, 200);
    drop(server);

    let failing: api::ThreadInit = Box::new(|| Err("no seccomp here".into()));
    match ApiServer::start_with(&path, Arc::new(Echo), Some(failing)) {
        Err(ServerError::ThreadInit(e)) => assert_eq!(e, "no seccomp here"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a server whose thread init failed must not start"),
    }
    assert!(!path.exists(), "the socket of a server that did not start is removed");
}
