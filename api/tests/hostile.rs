//! Clients that misbehave, on a real socket: they hold only their own
//! connection. Latencies are printed, not asserted (the speed goal is
//! measured by a scripted run, not a timed test); what is asserted is that
//! every well-behaved request is answered, correctly, while they are open.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::client::request;
use api::{ActionError, ApiHandler, ApiServer, VmmAction, VmmData};
use vmm::rpc::{Command, Query};

mod common;

struct Handler;

impl ApiHandler for Handler {
    fn handle(&self, action: VmmAction) -> Result<VmmData, ActionError> {
        match action {
            VmmAction::Command(Command::PowerButton) => panic!("a handler bug"),
            VmmAction::Query(Query::Ping) => Ok(common::pong("v", 1)),
            VmmAction::Command(Command::Resize(r)) => Ok(common::report(r.want.map_or(0, |w| w.count()))),
            _ => Ok(VmmData::Empty),
        }
    }
}

const T: Duration = Duration::from_secs(30);

#[test]
fn sixty_four_hostile_connections_do_not_stop_anyone_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let _server = ApiServer::start(&path, Arc::new(Handler)).unwrap();

    let mut hostile = Vec::new();
    for i in 0..64 {
        let mut s = UnixStream::connect(&path).unwrap();
        match i % 4 {
            0 => {}                                                             // idle
            1 => s.write_all(b"GET /api/v1/vm.info HTT").unwrap(),              // a partial request line
            2 => s.write_all(b"\x16\x03\x01 not http at all, no end").unwrap(), // garbage, no terminator
            _ => {
                // Pipelines requests and never reads the replies.
                for _ in 0..200 {
                    s.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n").unwrap();
                }
            }
        }
        hostile.push(s);
    }
    // Tricklers: one byte every 50 ms, for as long as the test runs.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let (stop, p) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let mut s = UnixStream::connect(&p).unwrap();
            for b in b"PUT /api/v1/vm.resize HTTP/1.1\r\nContent-Length: 100\r\n\r\n".iter().cycle() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let r = request(&path, "GET", "vm.info", None, T).unwrap();
        worst = worst.max(t.elapsed());
        assert_eq!(r.status, 204);
    }
    let r =
        request(&path, "PUT", "vm.resize", Some(&serde_json::json!({"desired_vcpus": 2, "wait_ms": 0})), T).unwrap();
    assert_eq!((r.status, r.body["desired_vcpus"].as_u64()), (200, Some(2)));
    eprintln!("vm.info with 65 hostile connections open: worst of 20 took {worst:?}");

    // The garbage and the partial request line are answered 400 / 408 in
    // time, not held forever.
    let mut partial = hostile.remove(1);
    partial.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reply = String::new();
    let _ = partial.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 408 "), "a request that never completes times out: {reply:?}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickler.join().unwrap();
}

#[test]
fn pipelined_requests_are_all_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let _server = ApiServer::start(&path, Arc::new(Handler)).unwrap();
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(
        b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n\
          PUT /api/v1/vm.resize HTTP/1.1\r\nContent-Length: 34\r\n\r\n{\"desired_vcpus\":3,\"wait_ms\":0}   \
          PUT /api/v1/vm.pause HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let statuses: Vec<&str> = all.match_indices("HTTP/1.1 ").map(|(i, _)| &all[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "200", "204"], "{all}");
    assert!(all.contains("\"desired\":3"), "{all}");
}

#[test]
fn a_handler_panic_is_a_500_and_the_server_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let _server = ApiServer::start(&path, Arc::new(Handler)).unwrap();
    for _ in 0..3 {
        let r = request(&path, "PUT", "vm.power-button", None, T).unwrap();
        assert_eq!(r.status, 500);
        assert!(api::ApiResponse::error_text(&r.body).contains("handler panicked"), "{}", r.body);
        assert_eq!(request(&path, "GET", "vmm.ping", None, T).unwrap().status, 200);
    }
}

#[test]
fn expect_100_continue_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let _server = ApiServer::start(&path, Arc::new(Handler)).unwrap();
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(
        b"PUT /api/v1/vm.resize HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: 31\r\n\r\n",
    )
    .unwrap();
    let mut interim = [0u8; 17];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 \r\n\r\n");
    s.write_all(br#"{"desired_vcpus":1,"wait_ms":0}"#).unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 200 ") && rest.contains("\"desired\":1"), "{rest}");
}
