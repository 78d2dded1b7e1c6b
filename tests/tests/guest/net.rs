//! virtio-net on a TAP in a real guest, with its vCPUs changing under a TCP
//! stream. Everything lives in a network namespace this test makes and
//! removes: lithe runs in it and creates the TAP there, the test gives the
//! TAP its address and talks to the guest's TCP echo service (port 7) from
//! a thread that joined the namespace. No other address is reached, and the
//! traffic is bounded (1 MiB, each read bounded in time). At the end the
//! TAP is deleted under the running guest.

use std::io::{Read, Write};
use std::time::Duration;

use tests::netns::Netns;
use tests::{Guest, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

const HOST: &str = "10.77.0.1/24";
const GUEST: &str = "10.77.0.2";
const MAC: &str = "02:4c:00:00:00:07";
const STREAM_BYTES: usize = 1 << 20;

#[test]
fn tcp_over_virtio_net_keeps_flowing_while_vcpus_change() {
    let Some(ns) = Netns::new("net") else { return };
    let net = format!("tap=ltap0,mac={MAC}");
    let mut g = Guest::launch(Launch {
        cpus: "boot=1,max=3",
        with_kernel: true,
        args: &["--net", &net],
        netns: Some(&ns.0),
        ..Launch::default()
    });
    g.wait_log("virtio-net0: TAP ltap0", BOOT_TIMEOUT);
    ns.ip(&["addr", "add", HOST, "dev", "ltap0"]);
    ns.ip(&["link", "set", "ltap0", "up"]);
    g.wait_cpus("0", "0", BOOT_TIMEOUT);
    g.send(&format!("net-up {GUEST}/24"));
    g.wait_console(&format!("LITHE-GUEST net-up eth0 addr={GUEST}/24 mac={MAC}"), HOTPLUG_TIMEOUT);

    let s = ns.connect(format!("{GUEST}:7").parse().unwrap(), HOTPLUG_TIMEOUT);
    s.set_read_timeout(Some(HOTPLUG_TIMEOUT)).unwrap();
    // A writer streams a pattern; the test reads the echo back and checks
    // every byte, while it adds two vCPUs and removes them again.
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let data: Vec<u8> = (0..STREAM_BYTES).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(16 << 10) {
            w.write_all(chunk).unwrap();
        }
    });
    let mut r = s;
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 << 10];
    let mut resized = 0;
    while got < STREAM_BYTES {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "the guest closed the connection after {got} bytes");
        for (i, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, ((got + i) % 251) as u8, "byte {} of the echo", got + i);
        }
        got += n;
        if resized == 0 && got >= STREAM_BYTES / 4 {
            let (st, resp) = g.api("PUT", "vm.resize", serde_json::json!({ "desired_vcpus": 3 }));
            assert_eq!(st, 204, "{resp}");
            resized = 1;
        } else if resized == 1 && got >= STREAM_BYTES / 2 {
            g.wait_cpus("0-2", "0-2", HOTPLUG_TIMEOUT);
            let (st, resp) = g.api("PUT", "vm.resize", serde_json::json!({ "desired_vcpus": 1 }));
            assert_eq!(st, 204, "{resp}");
            resized = 2;
        }
    }
    writer.join().unwrap();
    g.wait_cpus("0", "0", HOTPLUG_TIMEOUT);
    assert_eq!(resized, 2, "both resizes happened mid-stream");

    // A new connection after the resizes, and the device's counters.
    let mut s = ns.connect(format!("{GUEST}:7").parse().unwrap(), HOTPLUG_TIMEOUT);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"after the resizes\n").unwrap();
    let mut back = [0u8; 18];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"after the resizes\n");
    let (_, counters) = g.api("GET", "vm.counters", serde_json::Value::Null);
    let c = &counters["virtio-net0"];
    assert!(c["rx_bytes"].as_u64() >= Some(STREAM_BYTES as u64), "{counters}");
    assert!(c["tx_bytes"].as_u64() >= Some(STREAM_BYTES as u64), "{counters}");
    assert!(c["rx_frames"].as_u64() > Some(0) && c["tx_frames"].as_u64() > Some(0), "{counters}");
    let (_, info) = g.api("GET", "vm.info", serde_json::Value::Null);
    assert_eq!(info["config"]["net"][0]["mac"], MAC, "{info}");
    assert_eq!(info["config"]["net"][0]["tap"], "ltap0", "{info}");
    let modes = g.thread_seccomp_modes();
    assert!(modes.iter().any(|(n, m)| n == "virtio-net0" && *m == 2), "the net thread is filtered: {modes:?}");

    // The TAP goes away under the running guest: lithe says so once, stops
    // receiving, and everything else goes on.
    ns.ip(&["link", "del", "ltap0"]);
    g.wait_log("virtio-net0: reading TAP ltap0", HOTPLUG_TIMEOUT);
    g.send("ping");
    g.wait_console("LITHE-GUEST pong", HOTPLUG_TIMEOUT);
    let (s, counters) = g.api("GET", "vm.counters", serde_json::Value::Null);
    assert_eq!(s, 200);
    assert!(counters["virtio-net0"]["errors"].as_u64() >= Some(1), "{counters}");
    assert_eq!(g.resize(2)["complete"], serde_json::json!(true));
    let said = g.log_lines().iter().filter(|l| l.contains("reading TAP ltap0")).count();
    assert_eq!(said, 1, "logged once: {:?}", g.log_lines());
}
