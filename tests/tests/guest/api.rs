//! The REST API against a running VM: launch over the API only, and bad
//! input that must get a 4xx with a JSON error while the guest carries on.

use std::time::Duration;

use serde_json::json;
use tests::{Guest, GuestImage, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

#[test]
fn create_and_boot_over_the_api_then_resize_then_guest_reset_reboots_with_the_count() {
    let mut g = Guest::launch(Launch { cpus: "", with_kernel: false, ..Launch::default() });
    // Before vm.create, as Cloud Hypervisor answers: 404, the VM is not created.
    let (s, info) = g.api("GET", "vm.info", json!(null));
    assert_eq!((s, &info), (404, &json!(["The VM info is not available", "The VM is not created"])));
    let (s, r) = g.api("PUT", "vm.boot", json!(null));
    assert_eq!(s, 404, "boot before create: {r}");
    let (s, r) = g.api("PUT", "vm.resize", json!({"desired_vcpus": 2}));
    assert_eq!(s, 404, "resize before create: {r}");

    let image = GuestImage::locate();
    let config = json!({
        // reboot=acpi: this guest resets through the FADT's reset register (the others use the i8042).
        "payload": { "kernel": image.kernel, "initramfs": image.initramfs, "cmdline": image.cmdline.replace("reboot=k", "reboot=acpi") },
        "cpus": { "boot_vcpus": 1, "max_vcpus": 2 },
        "memory": { "size": 256u64 << 20 },
        "serial": { "mode": "Tty" },
    });
    let (s, r) = g.api("PUT", "vm.create", config);
    assert_eq!(s, 204, "{r}");
    let (s, info) = g.api("GET", "vm.info", json!(null));
    assert_eq!((s, info["state"].as_str(), &info["config"]["cpus"]["boot_vcpus"]), (200, Some("Created"), &json!(1)));
    let (s, r) = g.api("PUT", "vm.boot", json!(null));
    assert_eq!(s, 204, "{r}");
    g.wait_cpus("0", "0", BOOT_TIMEOUT);
    let r = g.resize(2);
    assert_eq!(r["added"], json!([1]));
    g.wait_cpus("0-1", "0-1", HOTPLUG_TIMEOUT);
    g.wait_vcpu_threads(&[0, 1], Duration::from_secs(5));
    let (s, info) = g.api("GET", "vm.info", json!(null));
    assert_eq!((s, info["state"].as_str()), (200, Some("Running")));

    // The guest resets through the ACPI reset register: lithe boots the VM
    // again, with the two vCPUs it had, then shuts down over the API.
    let mark = g.console_lines();
    g.send("reboot");
    g.wait_log("guest requested reset through the ACPI reset register", Duration::from_secs(120));
    g.wait_log("guest reset; booting the VM again", Duration::from_secs(30));
    g.wait_console_after(mark, "LITHE-GUEST ready", BOOT_TIMEOUT);
    g.wait_cpus("0-1", "0-1", BOOT_TIMEOUT);
    g.wait_apic(&[0, 1], Duration::from_secs(5));
    let (s, _) = g.api("PUT", "vmm.shutdown", json!(null));
    assert_eq!(s, 204);
    assert_eq!(g.wait_exit(Duration::from_secs(60)).code(), Some(0));
}

#[test]
fn bad_input_gets_4xx_and_the_vm_carries_on() {
    let g = Guest::launch(Launch { cpus: "boot=1,max=2", with_kernel: true, ..Launch::default() });
    g.wait_cpus("0", "0", BOOT_TIMEOUT);
    let cases: &[(&str, &str, &str, u16)] = &[
        ("PUT", "vm.resize", "{not json", 400),
        ("PUT", "vm.resize", "", 400),
        ("PUT", "vm.resize", r#"{"desired_vcpus":2,"bogus":true}"#, 400),
        ("PUT", "vm.resize", r#"{"desired_vcpus":"two"}"#, 400),
        ("PUT", "vm.resize", r#"{"desired_vcpus":0}"#, 400),
        ("PUT", "vm.resize", r#"{"desired_vcpus":3}"#, 400),
        ("PUT", "vm.resize", r#"{"desired_vcpus":4294967295}"#, 400),
        ("GET", "vm.resize", "", 405),
        ("DELETE", "vm.info", "", 405),
        ("GET", "vm.nonsense", "", 404),
        ("PUT", "vm.create", r#"{"payload":{}}"#, 409),
        ("PUT", "vm.boot", "", 409),
        ("PUT", "vm.resume", "", 405),
        ("PUT", "vm.add-disk", r#"{"path":"/tmp/x"}"#, 404),
        ("PUT", "vm.resize", r#"{"desired_vcpus":2,"desired_ram":1073741824}"#, 400),
    ];
    for (method, endpoint, body, want) in cases {
        let (status, reply) = g.api_raw(method, endpoint, body);
        assert_eq!(status, *want, "{method} {endpoint} {body:?} -> {reply}");
        // Cloud Hypervisor's error shape: an array of messages, outermost first.
        let messages = reply.as_array().map(|a| a.iter().filter_map(|m| m.as_str()).count()).unwrap_or(0);
        assert!(messages >= 2, "{method} {endpoint}: not an array of messages: {reply}");
    }
    // Cloud Hypervisor's VmResize has no required field: an empty one changes nothing.
    assert_eq!(g.api_raw("PUT", "vm.resize", "{}").0, 204);

    // Oversized body.
    let big = format!(r#"{{"desired_vcpus":2,"pad":"{}"}}"#, "x".repeat(100_000));
    let (status, reply) = g.api_raw("PUT", "vm.resize", &big);
    assert_eq!(status, 413, "{reply}");
    // Unknown top-level path.
    let (status, _) = g.api_raw("GET", "../../etc/passwd", "");
    assert_eq!(status, 404);

    // Pause blocks resizes with 405 and resume lifts it.
    let (s, _) = g.api("PUT", "vm.pause", json!(null));
    assert_eq!(s, 204);
    let (s, r) = g.api("PUT", "vm.resize", json!({"desired_vcpus": 2}));
    assert_eq!(s, 405, "{r}");
    let (s, _) = g.api("PUT", "vm.resume", json!(null));
    assert_eq!(s, 204);

    // Nothing was lost: the guest still answers and a resize still works.
    let (s, ping) = g.api("GET", "vmm.ping", json!(null));
    assert_eq!((s, ping["version"].is_string()), (200, true));
    let r = g.resize(2);
    assert_eq!(r["added"], json!([1]));
    g.wait_cpus("0-1", "0-1", HOTPLUG_TIMEOUT);
}
