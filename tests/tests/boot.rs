//! Boot from the CLI and stop from inside the guest.

use tests::{Guest, Launch, BOOT_TIMEOUT};

#[test]
fn boots_with_two_of_four_vcpus_and_powers_off_cleanly() {
    let mut g = Guest::launch(Launch { cpus: "boot=2,max=4", with_kernel: true });
    g.wait_cpus("0-1", "0-1", BOOT_TIMEOUT);
    g.wait_vcpu_threads(&[0, 1], std::time::Duration::from_secs(5));
    // The guest sees all four possible CPUs, two of them hot-pluggable.
    g.wait_console("Allowing 4 CPUs, 2 hotplug CPUs", BOOT_TIMEOUT);
    g.send("poweroff");
    let status = g.wait_exit(std::time::Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "lithe must exit 0 when the guest powers off");
    assert!(g.log_contains("guest powered off"));
    assert!(!g.socket.exists(), "the API socket is removed on exit");
}
