//! The guest as an attacker: from inside, it writes garbage into lithe's CPU
//! hotplug controller, GED and power registers (guest-images/attack.c), then
//! lithe must still serve, agree with the guest, and resize normally.

use std::time::Duration;

use serde_json::{json, Value};
use tests::netns::Netns;
use tests::{Guest, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

/// Accesses per run: each is an emulated exit; a few thousand take seconds.
const ATTACK_OPS: u32 = 4000;

fn running(g: &Guest) -> Vec<u64> {
    let (status, info) = g.api("GET", "vm.info", json!(null));
    assert_eq!(status, 200, "{info}");
    info["vcpus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["state"] == json!("running"))
        .map(|v| v["id"].as_u64().unwrap())
        .collect()
}

fn counter(g: &Guest, device: &str, name: &str) -> u64 {
    let (status, c): (u16, Value) = g.api("GET", "vm.counters", json!(null));
    assert_eq!(status, 200, "{c}");
    c[device][name].as_u64().unwrap_or_else(|| panic!("{device}.{name} in {c}"))
}

#[test]
fn a_guest_writing_garbage_to_the_registers_leaves_lithe_serving_and_in_agreement() {
    // A disk, an rng, a network card and a virtio-fs share too: the attacker
    // sets them up with hostile rings. The TAP lives in a namespace of the
    // test's, down; the share's backend is a real virtiofsd.
    let test = "guest::hostile_guest";
    let Some(ns) = Netns::new("hostile") else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let disk = format!("path={}", image.display());
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let Some(_backend) = tests::virtiofsd::Virtiofsd::start(test, dir.path(), &shared) else { return };
    // Queues of 256 like the others: the attacker's rings fit its one page.
    let fs = format!("tag=hostile,socket={},queue_size=256", dir.path().join("virtiofsd.sock").display());
    let mut g = Guest::launch(Launch {
        cpus: "boot=2,max=4",
        with_kernel: true,
        // Room to grow: the memory hotplug controller is there to attack too.
        memory: Some("size=128M,shared=on,hotplug_size=256M"),
        args: &["--disk", &disk, "--rng", "src=/dev/urandom", "--net", "tap=hostile0", "--fs", &fs],
        netns: Some(&ns.0),
        ..Launch::default()
    });
    g.wait_apic(&[0, 1], BOOT_TIMEOUT);
    let ignored_before = counter(&g, "cpu-hotplug", "ignored");

    // A new seed each run, printed so a failure can be replayed; vCPU 1 is
    // protected from ejects (the guest runs on it), vCPU 0 is not: lithe
    // must refuse that one itself.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("attack seed {seed} (replay: type `attack {seed} {ATTACK_OPS} 1` on the guest console)");
    let from = g.console_lines();
    g.send(&format!("attack {seed} {ATTACK_OPS} 1"));
    let done = g.wait_console_after(from, "LITHE-GUEST attack", HOTPLUG_TIMEOUT);
    assert!(done.contains("attack done"), "the attacker did not run: {done}");

    // lithe is alive, saw the garbage, and ignored it.
    assert!(
        counter(&g, "cpu-hotplug", "ignored") > ignored_before,
        "no access was counted as ignored: the attack did not reach the controller"
    );
    assert!(g.log_contains("never removable"), "the eject of vCPU 0 was seen and refused");
    assert!(counter(&g, "mem-hotplug", "ignored") > 0, "the memory hotplug controller saw the garbage and ignored it");
    // Every virtio device saw the garbage and said what it refused (its
    // start-up and activation lines aside).
    for device in ["virtio-blk0: ", "virtio-rng: ", "virtio-net0: ", "virtio-fs0: "] {
        let refused = g
            .log_lines()
            .iter()
            .filter(|l| {
                l.contains(device)
                    && !l.contains("virtio-mmio at")
                    && !l.contains("activated")
                    && !l.contains(": TAP ")
                    && !l.contains(": tag ")
            })
            .count();
        assert!(refused > 0, "no refusal logged for {device}");
    }
    let (status, _) = g.api("GET", "vmm.ping", json!(null));
    assert_eq!(status, 200);

    // The guest still runs on both vCPUs, and lithe says so.
    let from = g.console_lines();
    g.send("ping");
    g.wait_console_after(from, "LITHE-GUEST pong", HOTPLUG_TIMEOUT);
    assert_eq!(g.last_report().map(|r| r.apic), Some("0,1".to_string()), "the guest's CPUs");
    assert_eq!(running(&g), [0, 1], "vm.info agrees with the guest");

    // A normal resize works, both ways, as the guest reports.
    let r = g.resize(4);
    assert_eq!(r["complete"], json!(true), "{r}");
    g.wait_apic(&[0, 1, 2, 3], HOTPLUG_TIMEOUT);
    let r = g.resize(1);
    assert_eq!(r["complete"], json!(true), "{r}");
    g.wait_apic(&[0], HOTPLUG_TIMEOUT);
    assert_eq!(running(&g), [0]);
    assert!(!g.log_contains("panicked"), "nothing in lithe panicked");

    g.send("poweroff");
    assert_eq!(g.wait_exit(Duration::from_secs(120)).code(), Some(0));
}
