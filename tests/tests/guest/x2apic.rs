//! Past APIC id 254: x2APIC ids, and a targeted resize that puts one vCPU at
//! an APIC id above 255 without the 256 below it.
//!
//! Boot cost: every possible vCPU is an ACPI processor device the guest
//! scans at boot, about 0.45 s each under this machine's emulating KVM
//! (docs/scale.md), and Linux sets up per-CPU areas for every possible CPU.
//! So the VM has few vCPUs at high APIC ids: topology 5:5:5:1 gives each
//! level three id bits for five places, 125 vCPUs with APIC ids up to 292
//! (vCPU 100 is die 4 core 0 thread 0, APIC id 256; vCPU 124 is 292), where
//! a flat max=293 would cost 168 more processor devices. The guest's
//! `possible_cpus=3` keeps its per-CPU areas to three. lithe's side is the
//! same as for a guest that takes them all. (APIC id 255, the first with an
//! x2APIC structure in the MADT, needs at least 258 vCPUs in any topology;
//! the ACPI unit tests cover its table entries.)

use serde_json::json;
use tests::{Guest, Launch, BOOT_TIMEOUT, HOTPLUG_TIMEOUT};

#[test]
fn a_vcpu_at_apic_id_292_comes_online_alone() {
    let mut g = Guest::launch(Launch {
        cpus: "boot=1,max=125,topology=5:5:5:1",
        with_kernel: true,
        extra_cmdline: "possible_cpus=3",
        ..Launch::default()
    });
    g.wait_apic(&[0], BOOT_TIMEOUT);
    assert!(g.log_contains("x2APIC: APIC ids up to 292"), "lithe says it turned x2APIC on");
    // The guest found the firmware's x2APIC mode, which is what lets it take
    // the MADT's Local x2APIC entries.
    g.wait_console("x2apic: enabled by BIOS", HOTPLUG_TIMEOUT);

    // vCPU 124 alone: APIC id 292 needs nine id bits.
    let r = g.resize_ids(&[0, 124]);
    assert_eq!(r["complete"], json!(true), "{r}");
    g.wait_apic(&[0, 292], HOTPLUG_TIMEOUT);
    let (status, info) = g.api("GET", "vm.info", serde_json::Value::Null);
    assert_eq!(status, 200);
    let running: Vec<(u64, u64)> = info["vcpus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["state"] == "running")
        .map(|v| (v["id"].as_u64().unwrap(), v["apic_id"].as_u64().unwrap()))
        .collect();
    assert_eq!(running, vec![(0, 0), (124, 292)], "vm.info agrees with the guest");
    assert_eq!(info["target"]["vcpu_ids"], json!([0, 124]));

    // A device interrupt reaches it: the console's IRQ, steered to the CPU at
    // APIC id 292, must still bring in what is typed. (KVM's in-kernel IOAPIC
    // keeps 8 destination bits and would send it to APIC id 36 (292 & 0xff),
    // whose vCPU is not running; lithe's IOAPIC passes the extended
    // destination on.)
    let report = g.last_report().unwrap();
    let logical: Vec<&str> = report.online.split([',', '-']).collect();
    assert_eq!((logical.as_slice(), report.apic.as_str()), (&["0", "1"][..], "0,292"), "{report:?}");
    let from = g.console_lines();
    g.send("serial-irq 1");
    g.wait_console_after(from, "LITHE-GUEST serial-irq=", HOTPLUG_TIMEOUT);
    // Linux moves an IOAPIC interrupt when it next fires: ping twice.
    for _ in 0..2 {
        let from = g.console_lines();
        g.send("ping");
        g.wait_console_after(from, "LITHE-GUEST pong", HOTPLUG_TIMEOUT);
    }
    let from = g.console_lines();
    g.send("serial-irq-count");
    let line = g.wait_console_after(from, "LITHE-GUEST serial-irq-count", HOTPLUG_TIMEOUT);
    // "LITHE-GUEST serial-irq-count 25: <CPU0> <CPU1> IO-APIC 4-edge ttyS0"
    let words: Vec<&str> = line.split_whitespace().skip_while(|w| *w != "serial-irq-count").collect();
    let counts: Vec<u64> = words.iter().skip(2).map_while(|w| w.parse().ok()).collect();
    assert!(counts.len() == 2 && counts[1] > 0, "CPU 1 (APIC id 292) took console interrupts: {line}");

    // 256: the first id with a ninth bit, next to it.
    let r = g.resize_ids(&[0, 100, 124]);
    assert_eq!(r["complete"], json!(true), "{r}");
    g.wait_apic(&[0, 292, 256], HOTPLUG_TIMEOUT);

    // And out again by name: vCPU 124 leaves, 100 stays.
    let r = g.resize_ids(&[0, 100]);
    assert_eq!(r["complete"], json!(true), "{r}");
    g.wait_apic(&[0, 256], HOTPLUG_TIMEOUT);
    g.send("poweroff");
    assert_eq!(g.wait_exit(std::time::Duration::from_secs(120)).code(), Some(0));
}
