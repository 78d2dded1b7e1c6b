//! Faults around a running guest: its console's disk fills up, lithe's stdin
//! goes away, lithe is killed in the middle of a resize. Each boots the real
//! guest and checks what it printed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tests::{lithe_bin, Guest, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

/// A 64 KiB tmpfs, unmounted on drop: a disk that can be filled and freed.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount() -> SmallDisk {
        let dir = std::env::temp_dir().join(format!("lithe-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "lithe-test"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs a small tmpfs to fill (run as root, as the guest tests do): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn wait_file_contains(path: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "{} never showed {needle:?}; it holds:\n{text}", path.display());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `--serial file=` on a disk that fills up during boot: the guest runs on,
/// lithe logs the failure once (not per byte), and once space is freed the
/// guest's console output arrives again.
#[test]
fn a_full_disk_under_the_serial_file_costs_output_not_the_guest() {
    let disk = SmallDisk::mount();
    // Leave one 4 KiB page: the guest's boot log is about twice that.
    let filler = disk.path("filler");
    std::fs::write(&filler, vec![0u8; 60 * 1024]).unwrap();
    let console = disk.path("console.log");
    let serial = format!("file={}", console.display());
    let g = Guest::launch(Launch {
        cpus: "boot=1,max=2",
        with_kernel: true,
        args: &["--serial", &serial],
        ..Launch::default()
    });
    g.wait_log("serial: output failing", BOOT_TIMEOUT);

    // The guest, still booting or booted, takes a vCPU: it is alive.
    std::fs::remove_file(&filler).unwrap();
    let (status, body) = g.api(
        "PUT",
        "vm.resize",
        serde_json::json!({ "desired_vcpus": 2, "wait_ms": (BOOT_TIMEOUT + HOTPLUG_TIMEOUT).as_millis() as u64 }),
    );
    assert_eq!(status, 200, "{body}");
    // What the guest printed once the disk had room again.
    wait_file_contains(&console, "LITHE-GUEST online=0-1 present=0-1", HOTPLUG_TIMEOUT);
    assert!(g.log_contains("serial: output works again"), "recovery is logged");
    assert!(!g.log_contains("guest reset"), "the guest never reset");
    let failures = g.log_lines().iter().filter(|l| l.contains("serial: output failing")).count();
    assert_eq!(failures, 1, "logged once, not per byte");

    let (status, counters) = g.api("GET", "vm.counters", serde_json::Value::Null);
    assert_eq!(status, 200);
    let lost = counters["serial"]["lost_bytes"].as_u64().unwrap_or_else(|| panic!("lost_bytes in {counters}"));
    assert!(lost > 0, "the bytes the full disk refused are counted: {counters}");
    let (status, _) = g.api("PUT", "vmm.shutdown", serde_json::Value::Null);
    assert_eq!(status, 204);
}

/// lithe's stdin closes while the guest runs (`--serial tty`, the default):
/// no busy loop on the dead fd. Then lithe is killed with SIGKILL in the
/// middle of a resize: the socket file stays behind, and a new lithe on the
/// same path replaces it (and says so) and serves.
#[test]
fn closed_stdin_then_kill_9_mid_resize_then_restart_on_the_same_socket() {
    let mut g = Guest::launch(Launch { cpus: "boot=1,max=4", with_kernel: true, ..Launch::default() });
    g.wait_cpus("0", "0", BOOT_TIMEOUT);
    g.close_stdin();
    let (wall, cpu_before) = (Instant::now(), g.main_thread_cpu());
    std::thread::sleep(Duration::from_secs(3));
    let (wall, cpu) = (wall.elapsed(), g.main_thread_cpu() - cpu_before);
    // A loop on a closed fd would use the whole 3 s; the tick timer and the
    // guest's exits cost a few ms.
    assert!(cpu * 5 < wall, "the main thread used {cpu:?} of CPU in {wall:?} with stdin closed");

    // SIGKILL while the guest is being given vCPUs.
    let (status, body) = g.api("PUT", "vm.resize", serde_json::json!({ "desired_vcpus": 4 }));
    assert_eq!(status, 204, "{body}");
    g.wait_log("vCPU 1: Add", HOTPLUG_TIMEOUT);
    let socket = g.socket.clone();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(g.child.id() as i32, libc::SIGKILL) }, 0);
    g.wait_exit(Duration::from_secs(30));
    assert!(socket.exists(), "kill -9 leaves the socket file behind");

    let log = socket.with_file_name("second.log");
    let mut second = std::process::Command::new(lithe_bin())
        .arg("--api-socket")
        .arg(&socket)
        .arg("--log-file")
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let pong = loop {
        match api::client::request(&socket, "GET", "vmm.ping", None, Duration::from_secs(5)) {
            Ok(r) if r.status == 200 => break r.body,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("the second lithe does not serve: {other:?}"),
        }
    };
    assert_eq!(pong["pid"].as_u64(), Some(u64::from(second.id())), "{pong}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("replacing stale API socket"), "--log-file: {text}");
    let _ = api::client::request(&socket, "PUT", "vmm.shutdown", None, Duration::from_secs(10));
    assert_eq!(second.wait().unwrap().code(), Some(0));
    assert!(!socket.exists());
}
