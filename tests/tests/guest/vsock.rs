//! Hybrid vsock in a real guest, both ways, while vCPUs come and go: a host
//! process `CONNECT`s to the guest's echo service on port 1024 (as Kata's
//! shim dials its agent), and the guest connects to CID 2, which lithe
//! carries to the host's `<socket>_<port>`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use tests::{Guest, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

/// `CONNECT port`, then the `OK` line; the stream and a reader on it.
fn connect(socket: &std::path::Path, port: u32) -> (UnixStream, BufReader<UnixStream>) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(HOTPLUG_TIMEOUT)).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut ok = String::new();
    r.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK "), "lithe's answer to CONNECT: {ok:?}");
    (s, r)
}

fn echo(s: &mut UnixStream, r: &mut BufReader<UnixStream>, line: &str) {
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut back = String::new();
    r.read_line(&mut back).unwrap();
    assert_eq!(back, format!("{line}\n"), "the guest's echo");
}

#[test]
fn host_and_guest_talk_over_hybrid_vsock_while_vcpus_change() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("v.sock");
    let vsock = format!("cid=3,socket={}", socket.display());
    let mut g = Guest::launch(Launch {
        cpus: "boot=1,max=3",
        with_kernel: true,
        args: &["--vsock", &vsock],
        ..Launch::default()
    });
    g.wait_cpus("0", "0", BOOT_TIMEOUT);

    let (mut s, mut r) = connect(&socket, 1024);
    echo(&mut s, &mut r, "hello");
    // vCPUs added and removed with the connection open: it carries on.
    let (st, resp) = g.api("PUT", "vm.resize?wait=true", serde_json::json!({ "desired_vcpus": 3 }));
    assert_eq!((st, resp["complete"].as_bool()), (200, Some(true)), "{resp}");
    echo(&mut s, &mut r, "after three vCPUs");
    let big = "x".repeat(200_000);
    echo(&mut s, &mut r, &big);
    let (st, resp) = g.api("PUT", "vm.resize", serde_json::json!({ "desired_vcpus": 1 }));
    assert_eq!(st, 204, "{resp}");
    echo(&mut s, &mut r, "during the removal");
    g.wait_cpus("0", "0", HOTPLUG_TIMEOUT);
    echo(&mut s, &mut r, "after one vCPU");

    // Guest → host: the guest's connect to port 5000 reaches <socket>_5000.
    let listener = UnixListener::bind(format!("{}_5000", socket.display())).unwrap();
    let mark = g.console_lines();
    g.send("vsock-connect 5000 ping");
    let (svc, _) = listener.accept().unwrap();
    svc.set_read_timeout(Some(HOTPLUG_TIMEOUT)).unwrap();
    let mut line = String::new();
    BufReader::new(svc.try_clone().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "ping\n");
    (&svc).write_all(b"pong\n").unwrap();
    g.wait_console_after(mark, "LITHE-GUEST vsock-reply=pong", HOTPLUG_TIMEOUT);

    // The host side goes away: the guest is told; a new connection works.
    drop((s, r));
    let (mut s, mut r) = connect(&socket, 1024);
    echo(&mut s, &mut r, "again");
    let (_, counters) = g.api("GET", "vm.counters", serde_json::Value::Null);
    assert!(counters["vsock"]["connections"].as_u64() >= Some(3), "{counters}");
    let modes = g.thread_seccomp_modes();
    assert!(modes.iter().any(|(n, m)| n == "vsock" && *m == 2), "the vsock thread is filtered: {modes:?}");
}
