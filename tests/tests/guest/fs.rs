//! virtio-fs in a real guest with a real backend: an unmodified virtiofsd
//! shares a directory this test made; the guest mounts it by its tag, reads
//! a host file (checked by hash), writes one the host then reads, keeps
//! doing so while its vCPUs change, and gets EIO (not a hang) once the
//! backend is killed, while lithe and the rest of the guest go on.

use serde_json::json;

use tests::virtiofsd::{fnv1a, Virtiofsd};
use tests::{Guest, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

const TAG: &str = "share0";
const MOUNT: &str = "/tmp/share";

/// The guest's `fs-read` line for a file with these contents.
fn read_line(name: &str, data: &[u8]) -> String {
    let first: String = data.iter().take_while(|&&b| b != b'\n').take(64).map(|&b| b as char).collect();
    format!("LITHE-GUEST fs-read {MOUNT}/{name} bytes={} fnv={} first={first}", data.len(), fnv1a(data))
}

#[test]
fn a_host_directory_is_shared_through_virtiofsd_and_its_death_is_eio() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    // 192 KiB: several FUSE reads, more than one page of the guest's cache.
    let mut data = b"hello from the host\n".to_vec();
    data.extend((0..192 << 10).map(|i| (i % 251) as u8));
    std::fs::write(shared.join("hello.bin"), &data).unwrap();
    let Some(mut backend) = Virtiofsd::start("guest::fs", dir.path(), &shared) else { return };

    let fs = format!("tag={TAG},socket={}", backend.socket.display());
    let mut g = Guest::launch(Launch {
        cpus: "boot=1,max=2",
        with_kernel: true,
        memory: Some("size=256M,shared=on"),
        args: &["--fs", &fs],
        ..Launch::default()
    });
    g.wait_cpus("0", "0", BOOT_TIMEOUT);
    let (s, info) = g.api("GET", "vm.info", json!(null));
    assert_eq!(s, 200);
    assert_eq!(info["config"]["fs"][0]["tag"], json!(TAG), "{info}");
    assert_eq!(info["config"]["memory"]["shared"], json!(true), "{info}");

    g.send(&format!("fs-mount {TAG} {MOUNT}"));
    g.wait_console(&format!("LITHE-GUEST fs-mount {TAG} {MOUNT} ok"), HOTPLUG_TIMEOUT);
    g.send(&format!("fs-read {MOUNT}/hello.bin"));
    g.wait_console(&read_line("hello.bin", &data), HOTPLUG_TIMEOUT);

    // The guest writes and flushes; the host reads what it wrote.
    g.send(&format!("fs-write {MOUNT}/from-guest.txt written-by-the-guest"));
    g.wait_console(&format!("LITHE-GUEST fs-write {MOUNT}/from-guest.txt ok"), HOTPLUG_TIMEOUT);
    assert_eq!(std::fs::read_to_string(shared.join("from-guest.txt")).unwrap(), "written-by-the-guest\n");

    // A second vCPU arrives and leaves; the share serves throughout.
    std::fs::write(shared.join("during.bin"), &data[..4096]).unwrap();
    let (s, r) = g.api("PUT", "vm.resize", json!({ "desired_vcpus": 2 }));
    assert_eq!(s, 204, "{r}");
    g.send(&format!("fs-read {MOUNT}/during.bin"));
    g.wait_console(&read_line("during.bin", &data[..4096]), HOTPLUG_TIMEOUT);
    g.wait_cpus("0-1", "0-1", HOTPLUG_TIMEOUT);
    assert_eq!(g.resize(1)["complete"], json!(true));
    g.wait_cpus("0", "0", HOTPLUG_TIMEOUT);
    std::fs::write(shared.join("after.txt"), b"after the resize\n").unwrap();
    g.send(&format!("fs-read {MOUNT}/after.txt"));
    g.wait_console(&read_line("after.txt", b"after the resize\n"), HOTPLUG_TIMEOUT);
    let (_, c) = g.api("GET", "vm.counters", json!(null));
    assert_eq!(c["virtio-fs0"]["backend_serving"], json!(1), "{c}");
    // virtiofsd raises the guest's interrupt itself: lithe relays nothing.
    assert_eq!(c["virtio-fs0"]["interrupt_direct"], json!(1), "{c}");
    assert_eq!(c["virtio-fs0"]["used_signals"], json!(0), "{c}");

    // The backend dies: lithe says which, and the guest's calls fail.
    backend.kill();
    g.wait_log("virtio-fs0: vhost-user backend", HOTPLUG_TIMEOUT);
    assert!(g.log_contains("the backend closed its socket"), "{:?}", g.log_lines());
    g.send(&format!("fs-read {MOUNT}/after.txt"));
    g.wait_console(&format!("LITHE-GUEST fs-read {MOUNT}/after.txt errno=5"), HOTPLUG_TIMEOUT);
    g.send(&format!("fs-write {MOUNT}/late.txt too-late"));
    g.wait_console(&format!("LITHE-GUEST fs-write {MOUNT}/late.txt errno=5"), HOTPLUG_TIMEOUT);
    assert!(!shared.join("late.txt").exists());
    // Everything else goes on: the console, the API, a resize.
    g.send("ping");
    g.wait_console("LITHE-GUEST pong", HOTPLUG_TIMEOUT);
    let (_, c) = g.api("GET", "vm.counters", json!(null));
    assert_eq!(
        (c["virtio-fs0"]["backend_failed"].clone(), c["virtio-fs0"]["backend_serving"].clone()),
        (json!(1), json!(0)),
        "{c}"
    );
    assert!(c["virtio-fs0"]["failed_requests"].as_u64().unwrap() >= 2, "{c}");
    assert_eq!(g.resize(2)["complete"], json!(true));
    g.wait_cpus("0-1", "0-1", HOTPLUG_TIMEOUT);
    let (s, _) = g.api("PUT", "vmm.shutdown", json!(null));
    assert_eq!(s, 204);
    assert_eq!(g.wait_exit(std::time::Duration::from_secs(60)).code(), Some(0));
}
