//! The API server on a real Unix socket.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

use api::client::request;
use api::server::{ServerError, MAX_CONNECTIONS};
use api::{ActionError, ApiHandler, ApiServer, VmmAction, VmmData};
use vmm::rpc::{Command, Query};

mod common;

struct Echo;

impl ApiHandler for Echo {
    fn handle(&self, action: VmmAction) -> Result<VmmData, ActionError> {
        match action {
            VmmAction::Query(Query::Ping) => Ok(common::pong("test", 1)),
            VmmAction::Command(Command::Resize(r)) if r.wait.is_some() => {
                Ok(common::report(r.want.map_or(0, |w| w.count())))
            }
            VmmAction::Command(Command::PauseVm) => Err(ActionError::NotBooted),
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
    assert_eq!((r.status, r.body["desired_vcpus"].as_u64()), (200, Some(3)));
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

    // Many clients at once, fewer than the limit: every one is served.
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let p = path.clone();
            std::thread::spawn(move || request(&p, "GET", "vmm.ping", None, T).map(|r| r.status))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), 200);
    }

    drop(server);
    assert!(!path.exists(), "socket file removed on shutdown");
}

/// Send a ping on `s`, keep the connection open, and read the answer's status.
fn ping_on(s: &mut std::os::unix::net::UnixStream) -> u16 {
    use std::io::{BufRead, BufReader, Read, Write};
    s.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The limit itself: with every connection slot held (each one proven
/// served, so counted, before the next opens), one more is answered 429
/// and closed; once a holder leaves, a new client is served again.
#[test]
fn one_connection_past_the_limit_is_answered_429() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let _server = ApiServer::start(&path, Arc::new(Echo)).unwrap();
    let mut held: Vec<_> = (0..MAX_CONNECTIONS)
        .map(|i| {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            assert_eq!(ping_on(&mut s), 200, "connection {i} of {MAX_CONNECTIONS}");
            s
        })
        .collect();
    let r = request(&path, "GET", "vmm.ping", None, T).unwrap();
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(api::ApiResponse::error_text(&r.body).contains("retry"), "{}", r.body);
    drop(held.pop());
    // The freed slot is counted down when its thread sees the close: retry on
    // 429, as Kata's driver does, within a generous bound.
    let deadline = std::time::Instant::now() + T;
    loop {
        let status = request(&path, "GET", "vmm.ping", None, T).unwrap().status;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(std::time::Instant::now() < deadline, "the freed slot was never given back");
        std::thread::sleep(Duration::from_millis(10));
    }
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

/// Records what `vm.add-net` brought.
struct Recorder(std::sync::Mutex<Vec<(Result<vmm::config::NetConfig, vmm::rpc::Refused>, usize)>>);

impl ApiHandler for Recorder {
    fn handle(&self, action: VmmAction) -> Result<VmmData, ActionError> {
        if let VmmAction::Command(Command::AddNet(net, fds)) = action {
            self.0.lock().unwrap().push((*net, fds.0.len()));
        }
        Ok(VmmData::Empty)
    }
}

/// One request, its bytes in one `sendmsg` with `fds` attached; the status.
fn send_with_fds(path: &std::path::Path, head_and_body: &str, fds: &[i32]) -> u16 {
    use std::io::Read;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.send_with_fds(&[head_and_body.as_bytes()], fds).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn put(endpoint: &str, body: &str) -> String {
    format!("PUT /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

/// Whether the write end of the pipe whose read end is `fd` is closed
/// everywhere (the read end reports a hang-up within 5 s).
fn hung_up(fd: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, 5000) };
    n == 1 && p.revents & libc::POLLHUP != 0
}

#[test]
fn add_net_takes_the_tap_fds_sent_with_it_and_any_other_request_closes_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let rec = Arc::new(Recorder(Default::default()));
    let _server = ApiServer::start(&path, rec.clone()).unwrap();
    let pipe = || {
        let mut p = [0i32; 2];
        // SAFETY: pipe2 writes two fds into `p`.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        p
    };

    // Kata's body (no tap: the fd is the TAP), one fd: handed to the VMM.
    let [r, w] = pipe();
    let body = r#"{"mac":"02:42:ac:11:00:02","num_queues":2,"queue_size":256,"offload_tso":true,"offload_ufo":true,"offload_csum":true}"#;
    assert_eq!(send_with_fds(&path, &put("vm.add-net", body), &[w]), 204);
    {
        let got = rec.0.lock().unwrap();
        let (net, n) = &got[0];
        assert_eq!(*n, 1, "the fd reached the VMM");
        assert_eq!(net.as_ref().unwrap().mac, "02:42:ac:11:00:02");
    }
    // SAFETY: closing our own copies.
    unsafe { libc::close(w) };
    assert!(hung_up(r), "the VMM's copy closed when it let go of the action");
    // SAFETY: as above.
    unsafe { libc::close(r) };

    // Neither a tap nor fds: refused, named.
    assert_eq!(send_with_fds(&path, &put("vm.add-net", r#"{"mac":"02:00:00:00:00:01"}"#), &[]), 204);
    assert!(rec.0.lock().unwrap()[1].0.is_err(), "the VMM is told the body is no configuration");

    // Fds with an endpoint that takes none: 400, and the server's copies closed.
    let [r, w] = pipe();
    assert_eq!(send_with_fds(&path, &put("vm.pause", ""), &[w]), 400);
    // SAFETY: closing our own copy.
    unsafe { libc::close(w) };
    assert!(hung_up(r), "the refused fd was closed");
    // SAFETY: as above.
    unsafe { libc::close(r) };

    // More fds than a request may carry: refused, all closed.
    let [r, w] = pipe();
    let many = vec![w; api::server::MAX_FDS + 1];
    assert_eq!(send_with_fds(&path, &put("vm.add-net", r#"{"tap":"t"}"#), &many), 400);
    // SAFETY: closing our own copy.
    unsafe { libc::close(w) };
    assert!(hung_up(r), "every copy of the fd was closed");
    // SAFETY: as above.
    unsafe { libc::close(r) };
}
