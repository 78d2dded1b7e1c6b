//! Boot from the CLI and stop from inside the guest.

use tests::{Guest, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

#[test]
fn boots_with_two_of_four_vcpus_and_powers_off_cleanly() {
    let mut g = Guest::launch(Launch { cpus: "boot=2,max=4", with_kernel: true, ..Launch::default() });
    g.wait_cpus("0-1", "0-1", BOOT_TIMEOUT);
    g.wait_vcpu_threads(&[0, 1], std::time::Duration::from_secs(5));
    // The guest sees all four possible CPUs, two of them hot-pluggable.
    g.wait_console("Allowing 4 CPUs, 2 hotplug CPUs", BOOT_TIMEOUT);
    // Every thread of the process runs under a seccomp filter, whatever its
    // name: the main thread, vCPUs, API, and KVM's own worker
    // (`kvm-nx-lpage-re`, a task of the process since Linux 6.13, which
    // inherits the filter of the thread that made the VM).
    let modes = g.thread_seccomp_modes();
    for (name, mode) in &modes {
        assert_eq!(*mode, 2, "thread {name}: seccomp mode {mode}; all: {modes:?}");
    }
    assert_eq!(modes.iter().filter(|(n, _)| n == "lithe").count(), 1, "the main thread: {modes:?}");
    assert_eq!(modes.iter().filter(|(n, _)| n.starts_with("vcpu")).count(), 2, "{modes:?}");
    assert_eq!(modes.iter().filter(|(n, _)| n == "api").count(), 1, "{modes:?}");
    // A connection gets a thread of its own, filtered like the server's.
    let conn = std::os::unix::net::UnixStream::connect(&g.socket).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let conn_modes = loop {
        let m: Vec<u32> =
            g.thread_seccomp_modes().into_iter().filter(|(n, _)| n == "api-conn").map(|(_, m)| m).collect();
        if !m.is_empty() || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(conn_modes, [2], "one connection thread, filtered");
    drop(conn);
    g.send("poweroff");
    let status = g.wait_exit(std::time::Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "lithe must exit 0 when the guest powers off");
    assert!(g.log_contains("guest powered off"));
    assert!(!g.socket.exists(), "the API socket is removed on exit");
}

/// The same kernel as a bzImage (linux-loader's bzImage path, the kernel's
/// own decompressor), given a vCPU while it is still booting: the guest
/// comes up with it online, without a crash or a reset, then powers off.
/// (A hot-added vCPU once had its TSC written to 0, which crashed a guest
/// still booting; and a CPU added before init listened stayed offline.)
#[test]
fn boots_a_bzimage_given_a_vcpu_while_it_boots() {
    let mut g = Guest::launch(Launch { cpus: "boot=1,max=2", with_kernel: true, bzimage: true, ..Launch::default() });
    let (status, body) = g.api("PUT", "vm.resize", serde_json::json!({ "desired_vcpus": 2 }));
    assert_eq!(status, 204, "{body}");
    g.wait_cpus("0-1", "0-1", BOOT_TIMEOUT + HOTPLUG_TIMEOUT);
    assert!(!g.log_contains("guest reset"), "the guest did not reset");
    assert_eq!(g.console_since(0).iter().filter(|l| l.contains("Linux version")).count(), 1, "booted once");
    g.send("poweroff");
    assert_eq!(g.wait_exit(std::time::Duration::from_secs(120)).code(), Some(0));
}
