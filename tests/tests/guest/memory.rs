//! Memory hotplug in a real guest: `desired_ram` grows a 256 MiB guest
//! through ACPI (lithe's memory hotplug controller, a PNP0C80 device per
//! slot, the GED's memory event) and shrinks it back (the guest offlines the
//! movable blocks, migrating what was there, and calls `_EJ0`). The proof is
//! the guest's: its `MemTotal`, a program that fills more memory than the
//! guest booted with and reads every page back, and one that holds a
//! pattern across the removal; a guest that refuses the eject keeps the
//! memory, and lithe says so. Then memory and vCPUs at once, and a reboot
//! that keeps the size.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::{Guest, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

const MIB: u64 = 1 << 20;

/// The guest's `MemTotal` in MiB, as it prints it now.
fn mem_total_mib(g: &mut Guest) -> u64 {
    let from = g.console_lines();
    g.send("meminfo");
    let line = g.wait_console_after(from, "LITHE-GUEST meminfo total_kb=", HOTPLUG_TIMEOUT);
    let kb: u64 = line.split("total_kb=").nth(1).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap();
    kb / 1024
}

/// Waits until the guest's `MemTotal` is at least `mib` MiB.
fn wait_mem_total(g: &mut Guest, mib: u64) -> u64 {
    let deadline = Instant::now() + HOTPLUG_TIMEOUT;
    loop {
        let now = mem_total_mib(g);
        if now >= mib {
            return now;
        }
        assert!(Instant::now() < deadline, "MemTotal stayed at {now} MiB, waiting for {mib}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn memory_size(g: &Guest) -> u64 {
    let (s, info) = g.api("GET", "vm.info", Value::Null);
    assert_eq!(s, 200, "{info}");
    info["config"]["memory"]["size"].as_u64().unwrap()
}

fn wait_memory_size(g: &Guest, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while memory_size(g) != bytes {
        assert!(Instant::now() < deadline, "vm.info's memory.size stayed at {}", memory_size(g));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn desired_ram_grows_the_guest_and_its_memtotal_says_so() {
    let mut g = Guest::launch(Launch {
        // Removing memory migrates its pages, which runs emulated here: the
        // guest gets ten minutes to eject before lithe rolls the removal back.
        cpus: "boot=1,max=2,eject_timeout_ms=600000",
        with_kernel: true,
        memory: Some("size=256M,hotplug_size=1G"),
        ..Launch::default()
    });
    g.wait_cpus("0", "0", BOOT_TIMEOUT);
    let booted = mem_total_mib(&mut g);
    assert!(booted < 256, "{booted} MiB at boot");

    // What cannot be had is a 400 naming desired_ram and why.
    for (ram, why) in [(300 * MIB, "128 MiB"), (2048 * MIB, "hotplug_size"), (128 * MIB, "booted with")] {
        let (s, err) = g.api("PUT", "vm.resize", json!({ "desired_ram": ram }));
        assert_eq!(s, 400, "{ram}: {err}");
        assert!(err.to_string().contains("desired_ram") && err.to_string().contains(why), "{ram}: {err}");
    }
    assert_eq!(memory_size(&g), 256 * MIB, "nothing changed");

    // Grow by 512 MiB: the guest adds and onlines it; memory.size follows its
    // _OST. The request waits for that, and says which slot it was.
    let (s, r) = g.api("PUT", "vm.resize?wait=true", json!({ "desired_ram": 768 * MIB }));
    assert_eq!(s, 200, "{r}");
    assert_eq!((r["complete"].clone(), r["memory"]["complete"].clone()), (json!(true), json!(true)), "{r}");
    assert_eq!(r["memory"]["slots"][0]["state"], json!("plugged"), "{r}");
    assert_eq!(memory_size(&g), 768 * MIB, "counted once the wait is over");
    wait_mem_total(&mut g, booted + 500);
    let (_, c) = g.api("GET", "vm.counters", Value::Null);
    assert!(c["mem-hotplug"]["osts"].as_u64() >= Some(1), "the guest reported with _OST: {c}");
    assert_eq!(c["mem-hotplug"]["plugged_bytes"], json!(512 * MIB), "{c}");
    let (_, info) = g.api("GET", "vm.info", Value::Null);
    assert_eq!(info["memory_slots"][0]["state"], json!("plugged"), "{info}");
    assert_eq!(info["config"]["memory"]["hotplug_size"], json!(512 * MIB), "room left: {info}");
    // More than the guest had free before, filled and read back (every page
    // fault runs emulated here: minutes, not seconds).
    g.send("mem-touch 300");
    g.wait_console("LITHE-GUEST mem-touch mb=300 ok", Duration::from_secs(600));

    // A guest that refuses the eject keeps the memory, and lithe says so.
    g.send("refuse-mem-eject");
    g.wait_console("LITHE-GUEST refuse-mem-eject=on", HOTPLUG_TIMEOUT);
    let (s, r) = g.api("PUT", "vm.resize", json!({ "desired_ram": 256 * MIB }));
    assert_eq!(s, 204, "{r}");
    let deadline = Instant::now() + HOTPLUG_TIMEOUT;
    loop {
        let (_, info) = g.api("GET", "vm.info", Value::Null);
        let slot = &info["memory_slots"][0];
        if slot["reason"] == json!("eject_refused") {
            assert_eq!(slot["state"], json!("plugged"), "{info}");
            assert_eq!(info["config"]["memory"]["size"], json!(768 * MIB), "the guest still has it: {info}");
            break;
        }
        assert!(Instant::now() < deadline, "no refusal seen: {info}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(mem_total_mib(&mut g) >= booted + 500, "the guest kept its memory");
    g.send("allow-mem-eject");
    g.wait_console("LITHE-GUEST refuse-mem-eject=off", HOTPLUG_TIMEOUT);

    // Memory goes back in whole slots: 512 MiB is not one of the sizes.
    let (s, err) = g.api("PUT", "vm.resize", json!({ "desired_ram": 512 * MIB }));
    assert_eq!(s, 400, "{err}");
    assert!(err.to_string().contains("whole slots"), "{err}");

    // Shrink back to 256 MiB while a process holds a pattern in memory: the
    // guest migrates it out of the slot, ejects the slot, and the pattern is intact.
    g.send("mem-hold 32");
    g.wait_console("LITHE-GUEST mem-hold mb=32 holding", Duration::from_secs(300));
    let (s, r) = g.api("PUT", "vm.resize", json!({ "desired_ram": 256 * MIB }));
    assert_eq!(s, 204, "{r}");
    wait_memory_size(&g, 256 * MIB);
    let after = mem_total_mib(&mut g);
    assert!(after <= booted + 8, "MemTotal {after} MiB after the removal, {booted} at boot");
    g.send("mem-check");
    g.wait_console("LITHE-GUEST mem-hold mb=32 ok", HOTPLUG_TIMEOUT);
    let (_, info) = g.api("GET", "vm.info", Value::Null);
    assert_eq!(info["config"]["memory"]["hotplug_size"], json!(1024 * MIB), "the room is back: {info}");
    assert!(
        info["memory_slots"].as_array().is_none_or(|v| v.iter().all(|s| s["state"] == "free" && s["reason"] == "none")),
        "{info}"
    );

    // Memory and vCPUs in one request.
    let (s, r) = g.api("PUT", "vm.resize", json!({ "desired_ram": 1024 * MIB, "desired_vcpus": 2 }));
    assert_eq!(s, 204, "{r}");
    g.wait_cpus("0-1", "0-1", HOTPLUG_TIMEOUT);
    wait_mem_total(&mut g, booted + 750);
    wait_memory_size(&g, 1024 * MIB);

    // A reboot boots what the guest had.
    let mark = g.console_lines();
    g.send("reboot");
    g.wait_log("guest requested reset through the i8042", Duration::from_secs(120));
    g.wait_console_after(mark, "LITHE-GUEST ready", BOOT_TIMEOUT);
    let rebooted = mem_total_mib(&mut g);
    assert!(rebooted > 900, "MemTotal after the reboot: {rebooted} MiB");
    let (_, info) = g.api("GET", "vm.info", Value::Null);
    assert_eq!(info["config"]["memory"]["size"], json!(1024 * MIB), "{info}");
    assert_eq!(info["config"]["memory"]["hotplug_size"], json!(256 * MIB), "the ceiling stays: {info}");
    g.send("poweroff");
    assert_eq!(g.wait_exit(Duration::from_secs(120)).code(), Some(0));
}
